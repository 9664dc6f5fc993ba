"""The shape vocabulary of nx: dimension names, tensor aliases and the ``typecheck`` switch.

Dimension legend (the names used in every jaxtyping annotation of the three packages):

    batch       independent sequences or images
    seq         tokens of one sequence (text and image tokens together)
    tokens      a flat set of token rows (``batch * seq`` after selection)
    dim         model width (hidden size)
    heads       attention query heads;  kv_heads: key/value heads (GQA)
    head_dim    width of one attention head
    axes        coordinates per rotary position (1 for 1D RoPE, 3 for multiscale 3D RoPE)
    vocab       output classes of a head (unified text + visual codes + specials)
    scale       steps of a scale schedule (coarse to fine)
    h, w        a token grid (rows, columns) of one scale
    height, width   image pixels
    channels    image or latent channels
    code_dim    width of one codebook vector
    latent_dim  width of one continuous image token (NextStep-1: 64)

Checking: ``typecheck`` wraps a function with jaxtyping + beartype when the environment variable
``NX_TYPECHECK`` is ``1``/``true``/``on`` at import time, and returns the function untouched when it is
unset, ``0``, ``false`` or ``off`` (zero cost). Any other value is an error. The test suite turns it
on. A checked function runs unchecked while ``torch.compile`` traces it. When a check fails and the
function validates its arguments itself, its own (clearer) ``ValueError``/``TypeError`` is raised,
chained to the shape error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch
from jaxtyping import Bool, Float, Int, Shaped, TypeCheckError, jaxtyped
from torch import Tensor

__all__ = [
    "Bool",
    "Float",
    "Int",
    "Shaped",
    "Tensor",
    "Scalar",
    "Logits",
    "Hidden",
    "TokenIds",
    "Images",
    "typecheck",
    "typecheck_enabled",
]

Scalar = Float[Tensor, ""]
Logits = Float[Tensor, "*batch vocab"]
Hidden = Float[Tensor, "tokens dim"]
TokenIds = Int[Tensor, " *batch"]
Images = Float[Tensor, "batch channels height width"]

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
