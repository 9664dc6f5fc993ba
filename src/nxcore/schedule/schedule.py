"""``Schedule``: the reference ``ScaleSchedule``, an explicit tuple of (h, w) steps.

    Schedule(((1, 1), (2, 2), (4, 4)))          # or Schedule(steps=[(1, 1), (2, 2), (4, 4)])

Frozen and hashable, so it can sit inside frozen layouts. Build the published ones with
``nextflow_schedule``, ``var_schedule`` or ``infinity_schedule``, any other with
``derived_schedule``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import attrs

from nxcore.schedule.protocol import ScaleSchedule

__all__ = ["Schedule"]

Steps = tuple[tuple[int, int], ...]


def _side(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{where} must be an int, got {value!r} ({type(value).__name__}); "
            "grid sizes count tokens, so pass whole numbers"
        )
    if value < 1:
        raise ValueError(
            f"{where} must be >= 1, got {value!r}; every step needs at least one token"
        )
    return int(value)


def _to_steps(value: Any) -> Steps:
    """Convert any iterable of (h, w) pairs to a tuple of int pairs, checking types on the way."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"steps must be a sequence of (h, w) pairs, got {type(value).__name__} {value!r}; "
            "e.g. Schedule(((1, 1), (2, 2), (4, 4)))"
        )
    steps = []
    for i, step in enumerate(value):
        if isinstance(step, str | bytes) or not isinstance(step, Iterable):
            raise TypeError(f"steps[{i}] must be an (h, w) pair, got {step!r}")
        pair = tuple(step)
        if len(pair) != 2:
            raise ValueError(
                f"steps[{i}] must be an (h, w) pair, got {step!r} with {len(pair)} entries"
            )
        steps.append((_side(pair[0], f"steps[{i}][0] (h)"), _side(pair[1], f"steps[{i}][1] (w)")))
    return tuple(steps)


def _check_steps(instance: Schedule, attribute: attrs.Attribute, steps: Steps) -> None:
    if not steps:
        raise ValueError("steps must hold at least one (h, w) step, got an empty sequence")
    for k in range(1, len(steps)):
        (h0, w0), (h1, w1) = steps[k - 1], steps[k]
        if h1 < h0 or w1 < w0:
            raise ValueError(
                f"steps[{k}] = {steps[k]} is smaller than steps[{k - 1}] = {steps[k - 1]}; "
                "steps must never shrink (h and w may only stay or grow from step to step)"
            )


@attrs.frozen(repr=False)
class Schedule(ScaleSchedule):
    """A scale schedule given by its steps, coarse to fine."""

    steps: Steps = attrs.field(converter=_to_steps, validator=_check_steps)

    def truncate(self, num_steps: int) -> Schedule:
        """The first ``num_steps`` steps (1 <= num_steps <= ``self.num_steps``)."""
        k = len(self.steps)
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
            raise TypeError(
                f"num_steps must be an int in [1, {k}], got {num_steps!r} "
                f"({type(num_steps).__name__})"
            )
        if not 1 <= num_steps <= k:
            raise ValueError(
                f"num_steps must be in [1, {k}] for this {k}-step schedule, got {num_steps}; "
                "a schedule cannot be empty or longer than it is"
            )
        return Schedule(self.steps[: int(num_steps)])

    def __repr__(self) -> str:
        sides = " ".join(f"{h}x{w}" for h, w in self.steps)
        n = self.total_tokens
        return f"Schedule({sides}; {n} token{'' if n == 1 else 's'})"

    @classmethod
    def examples(cls) -> list[Schedule]:
        return [
            cls(((1, 1),)),
            cls(((1, 1), (2, 2), (3, 3), (4, 4))),
            cls(((1, 1), (1, 2), (2, 3), (2, 4), (3, 6))),
            cls(((2, 1), (2, 1), (4, 3))),
        ]
