"""Argument checks shared by the ``nxcore.nn`` blocks; messages name the argument, the value and the
fix."""

from __future__ import annotations

from torch import Tensor

from nxcore.checks import check_tensor

__all__ = ["check_dim", "check_eps", "check_flag", "check_width"]


def check_dim(name: str, value: object, *, at_least: int = 1) -> int:
    """A Python int (not a bool) >= ``at_least``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < at_least:
        raise ValueError(f"{name} must be an int >= {at_least}, got {value}")
    return value


def check_eps(name: str, value: object) -> float:
    """A float in [0, 1) (a normalisation epsilon)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), e.g. 1e-6, got {value!r}")
    return float(value)


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_width(owner: object, name: str, x: object, dim: int) -> Tensor:
    """``x`` is a floating-point tensor whose last dimension is ``dim``."""
    x = check_tensor(name, x, kind="float")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but {type(owner).__name__} has width {dim}; the last "
            f"dimension of {name} must be {dim} (build the module with the model's width)"
        )
    return x
