"""``derived_schedule``: any final grid, any step count."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxcore.schedule import derived_schedule, var_schedule

sides = st.integers(1, 200)


def test_small_square_example():
    # A 64x64 image on an 8x8 latent grid in 5 steps.
    assert derived_schedule((8, 8), 5).steps == ((1, 1), (2, 2), (3, 3), (5, 5), (8, 8))


def test_reproduces_var_256_and_stays_close_to_var_512_and_1024():
    assert derived_schedule((16, 16), 10) == var_schedule(256)
    for resolution, slack in ((512, 2), (1024, 1)):
        preset = var_schedule(resolution)
        ours = derived_schedule(preset.grid, preset.num_steps)
        for (a, _), (b, _) in zip(ours.steps, preset.steps, strict=True):
            assert abs(a - b) <= slack, (resolution, ours, preset)


def test_non_square_keeps_the_ratio_and_orientation():
    schedule = derived_schedule((3, 12), 6)
    assert schedule.steps == ((1, 1), (1, 2), (1, 3), (1, 5), (2, 8), (3, 12))
    assert derived_schedule((12, 3), 6).steps == tuple((w, h) for h, w in schedule.steps)


def test_single_step_is_the_grid():
    assert derived_schedule((5, 7), 1).steps == ((5, 7),)


def test_more_steps_than_the_long_side_repeats_instead_of_shrinking():
    schedule = derived_schedule((4, 4), 6)
    assert schedule.num_steps == 6 and schedule.grid == (4, 4)
    assert schedule.steps[0] == (1, 1)
    assert derived_schedule((1, 1), 3).steps == ((1, 1),) * 3


@given(sides, sides, st.integers(1, 40))
def test_invariants_for_any_grid_and_step_count(h, w, num_steps):
    schedule = derived_schedule((h, w), num_steps)  # Schedule() checks ints >= 1, never shrinking
    steps = schedule.steps
    assert len(steps) == num_steps
    assert schedule.grid == (h, w)
    if num_steps >= 2:
        assert steps[0] == (1, 1)
    long, short = max(h, w), min(h, w)
    for sh, sw in steps:
        lo, sh_ = (sh, sw) if h >= w else (sw, sh)
        assert sh_ <= lo  # orientation follows the final grid
        # The short side is long * short / long rounded half up (or clamped to 1).
        assert abs(2 * sh_ * long - 2 * lo * short) <= long or sh_ == 1
    if num_steps <= long:
        counts = schedule.token_counts
        assert all(a < b for a, b in zip(counts, counts[1:], strict=False))


@given(sides, sides, st.integers(2, 40))
def test_growth_is_roughly_geometric(h, w, num_steps):
    # Each step of the long side is at most the geometric step from the previous side, plus
    # rounding, or the minimum +1 growth; so no step jumps ahead of the geometric path.
    long = max(h, w)
    steps = derived_schedule((h, w), num_steps).steps
    longs = [max(step) for step in steps]
    for k in range(1, num_steps):
        prev, steps_left = longs[k - 1], num_steps - k
        geometric = prev * (long / prev) ** (1 / steps_left)
        assert longs[k] <= max(math.floor(geometric + 0.5), prev + 1)


@given(sides, sides, st.integers(1, 40))
def test_transposed_grid_gives_the_transposed_schedule(h, w, num_steps):
    a = derived_schedule((h, w), num_steps).steps
    b = derived_schedule((w, h), num_steps).steps
    assert b == tuple((y, x) for x, y in a)


@pytest.mark.parametrize(
    ("grid", "num_steps", "error", "match"),
    [
        ((8,), 3, TypeError, r"grid must be an \(h, w\) pair, got \(8,\)"),
        (8, 3, TypeError, r"grid must be an \(h, w\) pair, got 8"),
        ("88", 3, TypeError, r"grid must be an \(h, w\) pair, got '88'"),
        ((8, 0), 3, ValueError, r"grid w must be >= 1, got 0 in grid=\(8, 0\)"),
        ((8.0, 8), 3, TypeError, r"grid h must be an int, got 8.0 in grid=\(8.0, 8\)"),
        ((True, 8), 3, TypeError, r"grid h must be an int, got True"),
        ((8, 8), 0, ValueError, r"num_steps must be >= 1, got 0"),
        ((8, 8), 2.5, TypeError, r"num_steps must be an int >= 1, got 2.5"),
        ((8, 8), True, TypeError, r"num_steps must be an int >= 1, got True"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(grid, num_steps, error, match):
    with pytest.raises(error, match=match):
        derived_schedule(grid, num_steps)
