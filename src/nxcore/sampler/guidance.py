"""Classifier-free guidance: weight schedules and the mixing of guided and unguided predictions.

A schedule is any callable ``(step, num_steps) -> float`` returning the weight ``w`` used as

    guided = uncond + w * (cond - uncond)        (w = 1: the conditional, w = 0: the unconditional)

``step`` / ``num_steps`` is where the sampler call sits in the generation: the scale index of
next-scale prediction, or the token index of NextStep-1. The samplers accept these classes, a plain
number (read as ``ConstantGuidance(number)``), or any user callable with that signature.

- ``ConstantGuidance(scale)``: ``w = scale`` everywhere (NextStep-1 ``cfg_schedule="constant"``).
- ``VARLinearRamp(scale)``: VAR's per-scale ramp ``logits = (1 + t) * cond - t * uncond`` with
  ``t = scale * step / (num_steps - 1)``, i.e. ``w = 1 + t``; the first scale is unguided (and so is
  a one-step generation).
- ``LinearDecay(scale)``: NextStep-1 GH-v1 ``cfg_schedule="linear"`` ("follow Muse"),
  ``w_k = 1 + (scale - 1) * (N - k) / N``: ``scale`` at the first token, decaying towards 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from nxcore.config import finite_number
from nxcore.sampler._checks import check_step
from nxcore.typing import Float, typecheck

__all__ = [
    "ConstantGuidance",
    "GuidanceSchedule",
    "LinearDecay",
    "VARLinearRamp",
    "as_guidance",
    "guidance_weight",
    "mix_guidance",
    "mix_image_guidance",
]


@runtime_checkable
class GuidanceSchedule(Protocol):
    """``(step, num_steps) -> w``. Reference: ``ConstantGuidance``, ``VARLinearRamp``,
    ``LinearDecay``; any callable of that signature is accepted by the samplers."""

    def __call__(self, step: int, num_steps: int) -> float: ...


@attrs.frozen
class ConstantGuidance(GuidanceSchedule):
    """``w = scale`` at every step."""

    scale: float = attrs.field(validator=finite_number())

    @classmethod
    def examples(cls) -> list[ConstantGuidance]:
        return [cls(1.0), cls(7.5), cls(0.0)]

    def __call__(self, step: int, num_steps: int) -> float:
        check_step(step, num_steps)
        return float(self.scale)


@attrs.frozen
class VARLinearRamp(GuidanceSchedule):
    """VAR: ``w = 1 + scale * step / (num_steps - 1)`` (``w = 1`` when ``num_steps == 1``)."""

    scale: float = attrs.field(validator=finite_number())

    @classmethod
    def examples(cls) -> list[VARLinearRamp]:
        return [cls(1.5), cls(4.0)]

    def __call__(self, step: int, num_steps: int) -> float:
        check_step(step, num_steps)
        if num_steps == 1:
            return 1.0
        return 1.0 + float(self.scale) * step / (num_steps - 1)


@attrs.frozen
class LinearDecay(GuidanceSchedule):
    """NextStep-1 GH-v1 linear schedule: ``w = 1 + (scale - 1) * (num_steps - step) / num_steps``.

    (GH-v2 defines an *increasing* "linear" schedule instead; that is a different callable.)
    """

    scale: float = attrs.field(validator=finite_number())

    @classmethod
    def examples(cls) -> list[LinearDecay]:
        return [cls(7.5), cls(1.0)]

    def __call__(self, step: int, num_steps: int) -> float:
        check_step(step, num_steps)
        return 1.0 + (float(self.scale) - 1.0) * (num_steps - step) / num_steps


def as_guidance(value: Any) -> Callable[[int, int], float]:
    """attrs converter: a plain number becomes ``ConstantGuidance(number)``; callables pass."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ConstantGuidance(float(value))
    return value


def guidance_weight(schedule: Callable[[int, int], float], step: int, num_steps: int) -> float:
    """Evaluate ``schedule(step, num_steps)`` and check it returned a finite number."""
    check_step(step, num_steps)
    raw = schedule(step, num_steps)
    try:
        w = float(raw)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"guidance schedule {schedule!r} returned {raw!r} for step={step}, "
            f"num_steps={num_steps}; it must return a number"
        ) from err
    if not math.isfinite(w):
        raise ValueError(
            f"guidance schedule {schedule!r} returned {w!r} for step={step}, "
            f"num_steps={num_steps}; it must return a finite number"
        )
    return w


@typecheck
def mix_guidance(
    cond: Float[Tensor, " *shape"], uncond: Float[Tensor, " *shape"], w: float
) -> Float[Tensor, " *shape"]:
    """``uncond + w * (cond - uncond)`` in float32, computed as ``cond + (w - 1) * (cond - uncond)``.

    That form makes two identities exact in floating point: ``w = 1`` returns ``cond`` (the
    unconditional branch is then ignored altogether), and ``uncond == cond`` returns ``cond`` for
    every ``w``. An entry that is ``-inf`` (a masked logit) in either branch is ``-inf`` in the
    result: guidance extrapolates between finite scores only.
    """
    if cond.shape != uncond.shape:
        raise ValueError(
            f"uncond has shape {tuple(uncond.shape)} but cond has {tuple(cond.shape)}; the "
            "unconditional prediction must have the conditional's shape"
        )
    c = cond.float()
    if w == 1:
        return c.clone()
    u = uncond.float()
    out = c + (w - 1.0) * (c - u)
    masked = torch.isneginf(c) | torch.isneginf(u)
    return out.masked_fill(masked, float("-inf"))


@typecheck
def mix_image_guidance(
    cond: Float[Tensor, " *shape"],
    with_image: Float[Tensor, " *shape"],
    without_image: Float[Tensor, " *shape"],
    w: float,
    w_image: float,
) -> Float[Tensor, " *shape"]:
    """3-way (editing) CFG in float32: ``u2 + w_image * (u1 - u2) + w * (c - u1)``.

    ``cond`` (c) sees the instruction and the input image; ``with_image`` (u1) sees the image and a
    negative prompt; ``without_image`` (u2) sees the negative prompt only (NextStep-1
    ``get_velocity_from_cfg``). Computed as ``c + (w - 1)(c - u1) + (w_image - 1)(u1 - u2)`` so that
    identical branches, or ``w = w_image = 1``, return ``cond`` exactly.
    """
    for name, other in (("with_image", with_image), ("without_image", without_image)):
        if other.shape != cond.shape:
            raise ValueError(
                f"{name} has shape {tuple(other.shape)} but cond has {tuple(cond.shape)}; every "
                "guidance branch must have the conditional's shape"
            )
    c, u1, u2 = cond.float(), with_image.float(), without_image.float()
    return c + (w - 1.0) * (c - u1) + (w_image - 1.0) * (u1 - u2)
