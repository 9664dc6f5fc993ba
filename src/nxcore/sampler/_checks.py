"""Input validation shared by the samplers: attrs validators and per-call argument checks.

Every message names the argument, the value received and what to pass instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from torch import Tensor


def _where(instance: Any, attribute: attrs.Attribute) -> str:
    return f"{type(instance).__qualname__}.{attribute.name}"


def is_callable(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a callable (a guidance schedule)."""
    if not callable(value):
        raise TypeError(
            f"{_where(instance, attribute)} = {value!r} is not callable; pass a schedule "
            "(step, num_steps) -> float such as ConstantGuidance(3.0), or a number"
        )


def check_step(step: Any, num_steps: Any) -> None:
    """``num_steps`` >= 1 and ``0 <= step < num_steps``, both Python ints."""
    for name, value in (("step", step), ("num_steps", num_steps)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if num_steps < 1:
        raise ValueError(
            f"num_steps = {num_steps} must be >= 1; pass the number of scales (next-scale) or "
            "image tokens (NextStep-1) of the generation"
        )
    if not 0 <= step < num_steps:
        raise ValueError(
            f"step = {step} must lie in [0, num_steps) = [0, {num_steps}); pass the index of the "
            "current scale or token"
        )


def check_uncond_sequence(uncond: Any, *, most: int, what: str) -> list[Any]:
    """``uncond`` is a sequence (tuple/list) of at most ``most`` items; returns it as a list."""
    if isinstance(uncond, Tensor) or not isinstance(uncond, Sequence) or isinstance(uncond, str):
        raise TypeError(
            f"uncond must be a sequence of {what} (a tuple or list), got "
            f"{type(uncond).__name__}; wrap a single one as (uncond,)"
        )
    if len(uncond) > most:
        raise ValueError(
            f"uncond holds {len(uncond)} {what}, but this sampler supports at most {most}; "
            "pass () for no guidance, one for 2-way CFG"
            + (", or two for 3-way (image + text) CFG" if most >= 2 else "")
        )
    return list(uncond)
