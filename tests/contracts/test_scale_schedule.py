"""Conformance: every ``ScaleSchedule`` implementation passes ``check_scale_schedule``; the check
itself rejects deliberately broken implementations."""

import attrs
import pytest
from hypothesis import given

from nxcore.schedule import (
    ScaleSchedule,
    Schedule,
    derived_schedule,
    infinity_schedule,
    nextflow_schedule,
    var_schedule,
)
from nxcore.testing import strategies as nxst
from nxcore.testing.check_schedule import check_scale_schedule
from nxcore.testing.discovery import conformance_cases, implementations


@pytest.mark.parametrize("schedule", conformance_cases(ScaleSchedule))
def test_every_implementation_conforms(schedule):
    check_scale_schedule(schedule)


def test_reference_implementation_is_discovered():
    assert Schedule in implementations(ScaleSchedule)


@pytest.mark.parametrize(
    "schedule",
    [
        nextflow_schedule(0.25),
        nextflow_schedule("16:15", level=256),
        var_schedule(1024),
        infinity_schedule(7),
        derived_schedule((3, 12), 6),
    ],
    ids=repr,
)
def test_published_schedules_conform(schedule):
    check_scale_schedule(schedule)


@given(nxst.schedules())
def test_strategy_schedules_conform(schedule):
    check_scale_schedule(schedule)


# --- the check can fail -------------------------------------------------------------------------

STEPS = ((1, 1), (2, 2), (3, 4))


@attrs.frozen
class _Broken(ScaleSchedule):
    """A schedule with one promise broken, chosen by overriding one member."""

    steps: tuple = STEPS

    def truncate(self, num_steps):
        if not 1 <= num_steps <= len(self.steps):
            raise ValueError(f"num_steps out of range: {num_steps}")
        return type(self)(self.steps[:num_steps])


class _WrongOffsets(_Broken):
    @property
    def offsets(self):
        return (0, 1, 4, 16)


class _WrongTotal(_Broken):
    @property
    def total_tokens(self):
        return 20


class _WrongGrid(_Broken):
    @property
    def grid(self):
        return self.steps[0]


class _WrongCounts(_Broken):
    @property
    def token_counts(self):
        return tuple(h + w for h, w in self.steps)


class _SuffixTruncate(_Broken):
    def truncate(self, num_steps):
        if not 1 <= num_steps <= len(self.steps):
            raise ValueError("out of range")
        return _Broken(self.steps[len(self.steps) - num_steps :])


class _SlicingTruncate(_Broken):
    """Relies on slicing, which forgives num_steps > K."""

    def truncate(self, num_steps):
        if num_steps < 1:
            raise ValueError("out of range")
        return _Broken(self.steps[:num_steps])


class _IndexErrorTruncate(_Broken):
    def truncate(self, num_steps):
        if not 1 <= num_steps <= len(self.steps):
            raise IndexError("out of range")
        return _Broken(self.steps[:num_steps])


class _PlainTupleTruncate(_Broken):
    def truncate(self, num_steps):
        if not 1 <= num_steps <= len(self.steps):
            raise ValueError("out of range")
        return self.steps[:num_steps]


BROKEN = {
    "offsets": (_WrongOffsets(), r"offsets is \(0, 1, 4, 16\) but .* give \(0, 1, 5, 17\)"),
    "total_tokens": (_WrongTotal(), r"total_tokens is 20 but the steps .* give 17"),
    "grid": (_WrongGrid(), r"grid is \(1, 1\) but the steps .* give \(3, 4\)"),
    "token_counts": (_WrongCounts(), r"token_counts is \(2, 4, 7\) but .* give \(1, 4, 12\)"),
    "truncate-suffix": (
        _SuffixTruncate(), r"truncate\(1\)\.steps is \(\(3, 4\),\), expected the first 1 steps"
    ),
    "truncate-past-end": (
        _SlicingTruncate(), r"truncate\(4\) returned .*; it must raise ValueError \(valid: 1..3\)"
    ),
    "truncate-indexerror": (
        _IndexErrorTruncate(), r"truncate\(0\) raised IndexError, expected ValueError"
    ),
    "truncate-tuple": (_PlainTupleTruncate(), r"truncate\(1\) returned tuple, not a ScaleSchedule"),
    "shrinks": (
        _Broken(((1, 1), (3, 3), (2, 4))), r"steps\[2\] = \(2, 4\) shrinks from steps\[1\] ="
    ),
    "empty": (_Broken(()), r"steps must be a non-empty tuple of \(h, w\) pairs, got \(\)"),
    "list-steps": (_Broken([(1, 1)]), r"must be a non-empty tuple of \(h, w\) pairs, got \[\(1, 1"),
    "float-side": (_Broken(((1, 1), (2.0, 2))), r"steps\[1\] = \(2.0, 2\) must be a tuple of two"),
    "zero-side": (_Broken(((0, 1),)), r"steps\[0\] = \(0, 1\) must be a tuple of two ints >= 1"),
    "triple": (_Broken(((1, 1, 1),)), r"steps\[0\] = \(1, 1, 1\) must be a tuple of two ints"),
    "bool-side": (_Broken(((True, 1),)), r"steps\[0\] = \(True, 1\) must be a tuple of two ints"),
}


@pytest.mark.parametrize(("schedule", "match"), BROKEN.values(), ids=BROKEN.keys())
def test_check_rejects_broken_implementations(schedule, match):
    with pytest.raises(AssertionError, match=match):
        check_scale_schedule(schedule)


def test_check_accepts_the_unbroken_base():
    check_scale_schedule(_Broken())


@pytest.mark.parametrize("thing", [None, ((1, 1), (2, 2)), "schedule"])
def test_check_rejects_non_schedules(thing):
    with pytest.raises(AssertionError, match=r"is not a ScaleSchedule: it needs steps, truncate"):
        check_scale_schedule(thing)


class _Unrelated:
    """Structurally a schedule, nominally not, with a member that raises when read."""

    steps = ((1, 1),)
    num_steps = 1
    token_counts = (1,)
    offsets = (0, 1)
    total_tokens = 1

    @property
    def grid(self):
        raise IndexError("no grid")

    def truncate(self, num_steps):
        return self


def test_check_reports_members_that_raise():
    match = r"reading its ScaleSchedule members raised IndexError: no grid"
    with pytest.raises(AssertionError, match=match):
        check_scale_schedule(_Unrelated())
