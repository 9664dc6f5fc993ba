"""``python -m nxkernels.info``: every op, every backend, and whether it can run here (or why not).

Importing this module registers every op (it imports each op package) but imports neither triton
nor xformers: availability is checked by looking for the packages, not by loading them.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

import nxkernels
from nxkernels.dispatch import cuda_reasons, registered_ops

__all__ = ["backend_table", "format_table", "load_ops", "main"]


def load_ops() -> None:
    """Import every op subpackage of nxkernels, so each registers its dispatch entry."""
    for module in pkgutil.iter_modules(nxkernels.__path__):
        if module.ispkg:
            importlib.import_module(f"nxkernels.{module.name}")


_DEVICES = ("cpu", "cuda")
_PINNED_ONLY: dict[str, set[tuple[str, str]]] = {}


def _device_types() -> list[str]:
    return ["cpu"] + ([] if cuda_reasons() else ["cuda"])


def backend_table() -> dict[str, dict[str, dict[str, list[str]]]]:
    """``{op: {backend: {device_type: reasons}}}`` for cpu and cuda; empty reasons = available.

    Ops whose package registers no dispatch entry (reference-only) appear with a lone
    ``reference`` backend.
    """
    load_ops()
    ops = {n: op for n, op in registered_ops().items() if op.module.startswith("nxkernels.")}
    table: dict[str, dict[str, dict[str, list[str]]]] = {}
    packages = {m.name for m in pkgutil.iter_modules(nxkernels.__path__) if m.ispkg}
    packages -= {op.module.split(".")[1] for op in ops.values() if op.module.startswith("nxkernels.")}
    for name in sorted(packages | set(ops)):
        if name in ops:
            table[name] = {
                backend.name: {
                    dev: backend.availability_reasons(dev) for dev in _DEVICES if dev in backend.devices
                }
                for backend in ops[name].backends
            }
            pinned_only = {
                (backend.name, dev) for backend in ops[name].backends for dev in backend.devices
                if backend.auto_devices is not None and dev not in backend.auto_devices
            }
            _PINNED_ONLY[name] = pinned_only
        else:
            table[name] = {"reference": {"cpu": [], "cuda": cuda_reasons()}}
    return table


def available_backends(table=None) -> dict[str, list[str]]:
    """``{op: [backend names that can run on some device here, in priority order]}``."""
    table = backend_table() if table is None else table
    return {
        op: [name for name, per_dev in backends.items() if any(not r for r in per_dev.values())]
        for op, backends in table.items()
    }


def format_table(table=None) -> str:
    table = backend_table() if table is None else table
    lines = [f"torch {torch.__version__}; devices here: {', '.join(_device_types())}"]
    for op, backends in table.items():
        lines.append(f"{op}:")
        for name, per_dev in backends.items():
            for dev, reasons in per_dev.items():
                status = "available" if not reasons else "unavailable: " + "; ".join(reasons)
                if not reasons and (name, dev) in _PINNED_ONLY.get(op, ()):
                    status += " when asked for by name (auto does not pick it here)"
                lines.append(f"    {name:<10} {dev:<5} {status}")
    return "\n".join(lines)


def main() -> None:
    print(format_table())


if __name__ == "__main__":
    main()
