"""``Schedule``: construction, validation messages, truncation, hashing, repr."""

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxcore.layout import DiscreteImage, SequenceLayout
from nxcore.schedule import ScaleSchedule, Schedule
from nxcore.testing import strategies as nxst


def test_positional_and_keyword_construction_agree():
    a = Schedule(((1, 1), (2, 2), (4, 4)))
    b = Schedule(steps=[[1, 1], [2, 2], [4, 4]])
    assert a == b
    assert a.steps == ((1, 1), (2, 2), (4, 4))
    assert all(type(side) is int for step in b.steps for side in step)


def test_accepts_numpy_ints_as_plain_ints():
    np = pytest.importorskip("numpy")
    s = Schedule([(np.int64(1), np.int32(2))])
    assert s.steps == ((1, 2),)
    assert type(s.steps[0][0]) is int


def test_derived_quantities_come_from_the_protocol():
    s = Schedule(((1, 1), (2, 3), (4, 6)))
    assert isinstance(s, ScaleSchedule)
    assert s.num_steps == 3
    assert s.grid == (4, 6)
    assert s.token_counts == (1, 6, 24)
    assert s.offsets == (0, 1, 7, 31)
    assert s.total_tokens == 31


def test_equal_neighbouring_steps_are_allowed():
    assert Schedule(((2, 2), (2, 2), (2, 3))).num_steps == 3


@pytest.mark.parametrize(
    ("steps", "error", "match"),
    [
        ((), ValueError, r"at least one \(h, w\) step, got an empty sequence"),
        (5, TypeError, r"steps must be a sequence of \(h, w\) pairs, got int 5"),
        ("11", TypeError, r"steps must be a sequence of \(h, w\) pairs, got str"),
        ([(1, 1), 3], TypeError, r"steps\[1\] must be an \(h, w\) pair, got 3"),
        ([(1, 2, 3)], ValueError, r"steps\[0\] must be an \(h, w\) pair, got \(1, 2, 3\) with 3"),
        ([(1, 1), (0, 2)], ValueError, r"steps\[1\]\[0\] \(h\) must be >= 1, got 0"),
        ([(1, -1)], ValueError, r"steps\[0\]\[1\] \(w\) must be >= 1, got -1"),
        ([(1.0, 1)], TypeError, r"steps\[0\]\[0\] \(h\) must be an int, got 1.0 \(float\)"),
        ([(1, True)], TypeError, r"steps\[0\]\[1\] \(w\) must be an int, got True \(bool\)"),
    ],
)
def test_bad_steps_are_rejected_with_the_argument_and_value(steps, error, match):
    with pytest.raises(error, match=match):
        Schedule(steps)


def test_shrinking_names_both_steps_and_the_rule():
    steps = ((1, 1), (2, 2), (5, 5), (4, 4))
    with pytest.raises(
        ValueError,
        match=r"steps\[3\] = \(4, 4\) is smaller than steps\[2\] = \(5, 5\); steps must never",
    ):
        Schedule(steps)


def test_shrinking_in_one_side_only_is_rejected():
    match = r"steps\[1\] = \(3, 1\) is smaller than steps\[0\] = \(1, 2\)"
    with pytest.raises(ValueError, match=match):
        Schedule(((1, 2), (3, 1)))


def test_evolve_runs_validation_again():
    s = Schedule(((1, 1), (2, 2)))
    with pytest.raises(ValueError, match="never shrink"):
        attrs.evolve(s, steps=((2, 2), (1, 1)))


def test_frozen():
    s = Schedule(((1, 1),))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.steps = ((2, 2),)


def test_truncate_is_the_prefix_and_a_schedule():
    s = Schedule(((1, 1), (2, 2), (3, 4), (6, 8)))
    cut = s.truncate(2)
    assert isinstance(cut, Schedule)
    assert cut.steps == ((1, 1), (2, 2))
    assert s.truncate(4) == s


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_truncate_out_of_range_names_the_valid_range(bad):
    s = Schedule(((1, 1), (2, 2), (3, 4), (6, 8)))
    with pytest.raises(ValueError, match=rf"num_steps must be in \[1, 4\] .* got {bad}"):
        s.truncate(bad)


@pytest.mark.parametrize("bad", [2.0, "2", True])
def test_truncate_wants_an_int(bad):
    with pytest.raises(TypeError, match=r"num_steps must be an int in \[1, 2\], got"):
        Schedule(((1, 1), (2, 2))).truncate(bad)


def test_hashable_and_usable_inside_frozen_layouts():
    a = Schedule(((1, 1), (2, 2)))
    b = Schedule([[1, 1], [2, 2]])
    assert hash(a) == hash(b)
    assert len({a, b, a.truncate(1)}) == 2
    layout = SequenceLayout.of(DiscreteImage(a))
    assert hash(layout) == hash(SequenceLayout.of(DiscreteImage(b)))
    assert layout.length == 5


def test_repr_is_compact():
    assert repr(Schedule(((1, 1), (2, 3), (4, 6)))) == "Schedule(1x1 2x3 4x6; 31 tokens)"
    assert repr(Schedule(((1, 1),))) == "Schedule(1x1; 1 token)"


def test_examples_are_valid_schedules():
    items = Schedule.examples()
    assert len(items) >= 3
    assert all(isinstance(s, Schedule) for s in items)
    assert any(s.grid[0] != s.grid[1] for s in items)


@given(nxst.schedules(max_steps=8, max_side=20))
def test_strategy_schedules_are_valid(schedule):
    steps = schedule.steps
    assert 1 <= len(steps) <= 8
    assert all(1 <= h <= 20 and 1 <= w <= 20 for h, w in steps)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(steps, steps[1:], strict=False))
    assert Schedule(steps) == schedule


@given(nxst.schedules(), st.data())
def test_truncate_then_truncate_is_truncate(schedule, data):
    k = data.draw(st.integers(1, schedule.num_steps))
    j = data.draw(st.integers(1, k))
    assert schedule.truncate(k).truncate(j) == schedule.truncate(j)
    assert schedule.truncate(k).offsets == schedule.offsets[: k + 1]
