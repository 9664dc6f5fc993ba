"""Validation of user input with messages that name the argument, the value and the fix.

These run whether or not ``NX_TYPECHECK`` is on: they guard public entry points against the
mistakes that otherwise surface as an obscure error deep inside a matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_KINDS = {
    "float": (torch.is_floating_point, "a floating-point dtype (float32, bfloat16, ...)"),
    "int": (lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
            "an integer dtype (int64, int32, ...)"),
    "bool": (lambda t: t.dtype == torch.bool, "dtype torch.bool"),
}


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | tuple[int, ...] | None = None,
    kind: str | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Raise a clear ``TypeError``/``ValueError`` unless ``value`` is a tensor of the given form."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape "
                f"{tuple(value.shape)} ({value.ndim} dimensions); reshape it before the call"
            )
    if kind is not None:
        test, wanted = _KINDS[kind]
        if not test(value):
            raise TypeError(f"{name} must have {wanted}, got {value.dtype}; convert it with .to()")
    if device is not None and value.device != torch.device(device):
        raise ValueError(
            f"{name} is on {value.device} but must be on {torch.device(device)}; move it with "
            f".to({str(torch.device(device))!r})"
        )
    return value


def check_same_device(**tensors: Tensor) -> None:
    """All named tensors share one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must share one device, got {listing}; move them with .to()")


def check_finite(name: str, value: Tensor) -> Tensor:
    """No NaN (and no +inf) in ``value``; -inf is allowed (masked logits)."""
    if torch.isnan(value).any():
        raise ValueError(f"{name} contains NaN; check the model output before sampling")
    if torch.isposinf(value).any():
        raise ValueError(f"{name} contains +inf; check the model output before sampling")
    return value


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0)."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value
