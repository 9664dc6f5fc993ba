"""``check_scale_schedule``: does an object keep every promise of the ``ScaleSchedule`` contract?

Call it on your own implementation in a test::

    from nxcore.testing.check_schedule import check_scale_schedule

    def test_my_schedule():
        check_scale_schedule(MySchedule(...))

It raises ``AssertionError`` naming the broken promise, or returns ``None``.
"""

from __future__ import annotations

import itertools
from typing import Any, NoReturn

from nxcore.schedule.protocol import ScaleSchedule

__all__ = ["check_scale_schedule"]


def _fail(schedule: Any, message: str) -> NoReturn:
    raise AssertionError(f"{type(schedule).__qualname__} {schedule!r}: {message}")


def _check_steps(schedule: Any, steps: Any) -> None:
    if not isinstance(steps, tuple) or not steps:
        _fail(schedule, f"steps must be a non-empty tuple of (h, w) pairs, got {steps!r}")
    for k, step in enumerate(steps):
        ok = (
            isinstance(step, tuple)
            and len(step) == 2
            and all(type(side) is int and side >= 1 for side in step)
        )
        if not ok:
            _fail(schedule, f"steps[{k}] = {step!r} must be a tuple of two ints >= 1")
    for k in range(1, len(steps)):
        (h0, w0), (h1, w1) = steps[k - 1], steps[k]
        if h1 < h0 or w1 < w0:
            _fail(schedule, f"steps[{k}] = {steps[k]} shrinks from steps[{k - 1}] = {steps[k - 1]}")


def _check_derived(schedule: Any, steps: tuple[tuple[int, int], ...]) -> None:
    counts = tuple(h * w for h, w in steps)
    expected = {
        "num_steps": len(steps),
        "grid": steps[-1],
        "token_counts": counts,
        "offsets": (0, *itertools.accumulate(counts)),
        "total_tokens": sum(counts),
    }
    for name, want in expected.items():
        got = getattr(schedule, name)
        if got != want:
            _fail(schedule, f"{name} is {got!r} but the steps {steps} give {want!r}")


def _check_truncate(schedule: Any, steps: tuple[tuple[int, int], ...]) -> None:
    num_steps = len(steps)
    for k in range(1, num_steps + 1):
        cut = schedule.truncate(k)
        if not isinstance(cut, ScaleSchedule):
            _fail(schedule, f"truncate({k}) returned {type(cut).__name__}, not a ScaleSchedule")
        if cut.steps != steps[:k]:
            _fail(schedule, f"truncate({k}).steps is {cut.steps!r}, expected the first {k} steps "
                            f"{steps[:k]!r}")
        _check_derived(cut, steps[:k])
    for bad in (0, num_steps + 1):
        try:
            cut = schedule.truncate(bad)
        except ValueError:
            continue
        except Exception as err:
            _fail(schedule, f"truncate({bad}) raised {type(err).__name__}, expected ValueError")
        _fail(schedule, f"truncate({bad}) returned {cut!r}; it must raise ValueError "
                        f"(valid: 1..{num_steps})")


def _is_scale_schedule(schedule: Any) -> bool:
    if ScaleSchedule in type(schedule).__mro__:
        return True
    try:  # structural check: evaluates every protocol member, which may raise on a broken one
        return isinstance(schedule, ScaleSchedule)
    except Exception as err:
        _fail(schedule, f"reading its ScaleSchedule members raised {type(err).__name__}: {err}")


def check_scale_schedule(schedule: Any) -> None:
    """Assert that ``schedule`` implements ``ScaleSchedule`` consistently.

    Checks: it is a ``ScaleSchedule``; ``steps`` is a non-empty tuple of (int, int) pairs >= 1 that
    never shrinks; ``grid``, ``num_steps``, ``token_counts``, ``offsets`` and ``total_tokens``
    agree with ``steps``; ``truncate(k)`` is the k-step prefix for every k in 1..K; and
    ``truncate(0)`` and ``truncate(K + 1)`` raise ``ValueError``.
    """
    if not _is_scale_schedule(schedule):
        raise AssertionError(
            f"{type(schedule).__qualname__} is not a ScaleSchedule: it needs steps, truncate, "
            "num_steps, grid, token_counts, offsets and total_tokens (subclass "
            "nxcore.schedule.ScaleSchedule to inherit the derived ones)"
        )
    steps = schedule.steps
    _check_steps(schedule, steps)
    _check_derived(schedule, steps)
    _check_truncate(schedule, steps)
