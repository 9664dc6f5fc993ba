"""Published square schedules: VAR's patch presets and Infinity's 1:1 template.

VAR (``utils/arg_util.py``) names its schedules by image side; the VAE stride is 16, so the last
step of the ``resolution`` preset is ``resolution // 16`` tokens per side. Infinity
(``infinity/utils/dynamic_resolution.py``) keeps one 13-step template per aspect ratio and takes a
prefix of it for lower pixel budgets. Only Infinity's 1:1 template is known to us; its other
aspect-ratio templates are not reproduced here.
"""

from __future__ import annotations

from nxcore.schedule.schedule import Schedule

__all__ = ["INFINITY_SQUARE_SIDES", "VAR_PATCH_NUMS", "infinity_schedule", "var_schedule"]

VAR_PATCH_NUMS: dict[int, tuple[int, ...]] = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
"""Image side -> side of every step (square grids)."""

INFINITY_SQUARE_SIDES: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
"""Infinity's 1:1 template, 13 steps ending on a 64x64 grid (a 1024x1024 image)."""


def var_schedule(resolution: int = 256) -> Schedule:
    """VAR's square schedule for ``resolution`` x ``resolution`` images (256, 512 or 1024)."""
    if type(resolution) is not int or resolution not in VAR_PATCH_NUMS:
        raise ValueError(
            f"resolution must be one of {sorted(VAR_PATCH_NUMS)} (VAR's presets), got "
            f"{resolution!r}; for another size use derived_schedule(grid, num_steps)"
        )
    return Schedule(tuple((side, side) for side in VAR_PATCH_NUMS[resolution]))


def infinity_schedule(num_steps: int = 13) -> Schedule:
    """The first ``num_steps`` steps of Infinity's 1:1 template.

    Infinity's pixel budgets are prefixes of the template: 7 steps = 256x256 (16x16 grid,
    '0.06M'), 10 steps = 512x512 (32x32, '0.25M'), 12 steps = '0.60M' (48x48), 13 steps =
    1024x1024 (64x64, '1M'). Only the 1:1 template is known to us, so this is square only.
    """
    k = len(INFINITY_SQUARE_SIDES)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= k:
        raise ValueError(
            f"num_steps must be an int in [1, {k}] (7 = 256px, 10 = 512px, 13 = 1024px), got "
            f"{num_steps!r}"
        )
    return Schedule(tuple((side, side) for side in INFINITY_SQUARE_SIDES[:num_steps]))
