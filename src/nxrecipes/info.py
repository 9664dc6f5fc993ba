"""``nx info``: versions, devices and kernel backends, without importing optional extras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pkgutil
import platform

import torch

import nxkernels

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
        "kernels": {op: ["reference"] for op in kernel_ops()},
    }


def format_report(info: dict[str, object]) -> str:
    lines = [f"python      {info['python']} on {info['platform']}"]
    lines += [f"{k:<12}{v}" for k, v in info["versions"].items()]  # type: ignore[union-attr]
    lines += [f"{k:<12}{v} (optional)" for k, v in info["optional"].items()]  # type: ignore[union-attr]
    lines.append(f"devices     {', '.join(info['devices'])}; {info['threads']} CPU threads")  # type: ignore[arg-type]
    for op, backends in info["kernels"].items():  # type: ignore[union-attr]
        lines.append(f"kernel      {op}: {', '.join(backends)}")
    return "\n".join(lines)
