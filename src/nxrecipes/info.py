"""``nx info``: versions, devices and kernel backends, without importing optional extras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pkgutil
import platform

import torch

import nxkernels
from nxkernels.info import backend_table

OPTIONAL = ("triton", "xformers")
PACKAGES = ("nx", "torch", "numpy", "pillow", "safetensors", "tokenizers", "jaxtyping", "beartype")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def kernel_ops() -> list[str]:
    """The ops of nxkernels (one subpackage each)."""
    return sorted(m.name for m in pkgutil.iter_modules(nxkernels.__path__) if m.ispkg)


def _kernels() -> dict[str, dict[str, dict[str, str]]]:
    """``{op: {backend: {device: "available" or the reasons}}}``, from ``nxkernels.info``."""
    return {
        op: {
            name: {dev: "; ".join(reasons) or "available" for dev, reasons in per_dev.items()}
            for name, per_dev in backends.items()
        }
        for op, backends in backend_table().items()
    }


def report() -> dict[str, object]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    extras = {name: ("available" if importlib.util.find_spec(name) else "not installed") for name in OPTIONAL}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "optional": extras,
        "devices": devices,
        "threads": torch.get_num_threads(),
        "kernels": _kernels(),
    }


def format_report(info: dict[str, object]) -> str:
    lines = [f"python      {info['python']} on {info['platform']}"]
    lines += [f"{k:<12}{v}" for k, v in info["versions"].items()]  # type: ignore[union-attr]
    lines += [f"{k:<12}{v} (optional)" for k, v in info["optional"].items()]  # type: ignore[union-attr]
    lines.append(f"devices     {', '.join(info['devices'])}; {info['threads']} CPU threads")  # type: ignore[arg-type]
    for op, backends in info["kernels"].items():  # type: ignore[union-attr]
        usable = [f"{name} ({dev})" for name, per_dev in backends.items()
                  for dev, status in per_dev.items() if status == "available"]
        lines.append(f"kernel      {op}: {', '.join(usable) or 'none available'}")
        lines += [f"              {name} ({dev}) unavailable: {status}" for name, per_dev in backends.items()
                  for dev, status in per_dev.items() if status != "available"]
    return "\n".join(lines)
