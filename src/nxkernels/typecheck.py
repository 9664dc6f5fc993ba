"""The ``typecheck`` switch, kept at the bottom of the import graph so that nxkernels' ops can use
it too; ``nxcore.typing`` re-exports it with the dimension legend (read the rules there)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch
from jaxtyping import TypeCheckError, jaxtyped

__all__ = ["typecheck", "typecheck_enabled"]

_F = TypeVar("_F", bound=Callable)
_ON = {"1", "true", "on", "yes"}
_OFF = {"", "0", "false", "off", "no"}


def typecheck_enabled(environ: dict[str, str] | None = None) -> bool:
    """Parse ``NX_TYPECHECK`` strictly: an unknown spelling is an error, never a silent default."""
    value = (os.environ if environ is None else environ).get("NX_TYPECHECK", "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"NX_TYPECHECK={value!r} is not understood; use one of {sorted(_ON)} to turn shape "
        f"checking on or one of {sorted(_OFF - {''})} (or leave it unset) to turn it off"
    )


def typecheck(fn: _F) -> _F:
    """Check jaxtyping annotations of ``fn`` at call time when ``NX_TYPECHECK`` is on."""
    if not typecheck_enabled():
        return fn
    from beartype import beartype

    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        try:
            return checked(*args, **kwargs)
        except TypeCheckError as shape_error:
            # Prefer the function's own validation message (it names the fix) when it has one.
            own_error = _own_validation_error(fn, args, kwargs)
            if own_error is None:
                raise
            raise own_error from shape_error

    return wrapper  # type: ignore[return-value]


def _own_validation_error(fn: Callable, args: tuple, kwargs: dict) -> Exception | None:
    try:
        fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        return err
    except Exception:
        return None
    return None
