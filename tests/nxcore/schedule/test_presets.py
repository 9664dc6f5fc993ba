"""VAR's patch presets and Infinity's 1:1 template."""

import pytest

from nxcore.schedule import Schedule, infinity_schedule, var_schedule


@pytest.mark.parametrize(
    ("resolution", "sides", "total"),
    [
        (256, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 680),
        (512, (1, 2, 3, 4, 6, 9, 13, 18, 24, 32), 2240),
        (1024, (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64), 9451),
    ],
)
def test_var_presets(resolution, sides, total):
    schedule = var_schedule(resolution)
    assert isinstance(schedule, Schedule)
    assert schedule.steps == tuple((s, s) for s in sides)
    assert schedule.total_tokens == total  # VAR's L for the preset
    assert schedule.grid == (resolution // 16, resolution // 16)  # VAE stride 16


def test_var_default_is_256():
    assert var_schedule() == var_schedule(256)


@pytest.mark.parametrize("bad", [384, 0, True, "256"])
def test_var_unknown_resolution_lists_the_presets(bad):
    with pytest.raises(ValueError, match=r"resolution must be one of \[256, 512, 1024\] .*got"):
        var_schedule(bad)


def test_infinity_template_and_total():
    schedule = infinity_schedule()
    sides = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
    assert schedule.steps == tuple((s, s) for s in sides)
    assert schedule.total_tokens == 10521  # Infinity's 1M budget, 1:1


@pytest.mark.parametrize(("num_steps", "side"), [(7, 16), (10, 32), (12, 48), (13, 64)])
def test_infinity_prefixes_are_the_pixel_budgets(num_steps, side):
    schedule = infinity_schedule(num_steps)
    assert schedule.grid == (side, side)  # 7 -> 256px, 10 -> 512px, 13 -> 1024px at stride 16
    assert schedule == infinity_schedule().truncate(num_steps)


@pytest.mark.parametrize("bad", [0, 14, 7.0, True])
def test_infinity_bad_num_steps_names_the_range(bad):
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 13\] .*got"):
        infinity_schedule(bad)
