"""NextFlow's predefined scale schedules (paper Appendix A.1, Table 14) and aspect-ratio bucketing.

Every row of the table has 18 steps and ends on a grid of about 4096 tokens (a 1024-level image);
the 256 and 512 levels use the first 12 and 16 steps of the same row::

    nextflow_schedule()                      # 1:1, 1024 level: 18 steps ending on (64, 64)
    nextflow_schedule("1:4", level=512)      # 16 steps ending on (16, 64)
    nextflow_schedule_for_size(720, 1280)    # any image size: nearest ratio of the table

Ratios are height / width, as in the table (the 0.25 row ends on (32, 128), a 512x2048 image).
"""

from __future__ import annotations

import math
import numbers

from nxcore.schedule.nextflow_table import NEXTFLOW_TABLE, NextFlowRow
from nxcore.schedule.schedule import Schedule

__all__ = [
    "NEXTFLOW_LEVELS",
    "nearest_nextflow_ratio",
    "nextflow_schedule",
    "nextflow_schedule_for_size",
]

NEXTFLOW_LEVELS: dict[int, int] = {256: 12, 512: 16, 1024: 18}
"""Image level (the side of the 1:1 image) -> number of leading steps of a Table 14 row."""

RATIO_TOLERANCE = 1e-3
_BY_LABEL: dict[str, NextFlowRow] = {row.label: row for row in NEXTFLOW_TABLE}


def _describe(row: NextFlowRow) -> str:
    return f"{row.ratio} ({row.label!r})"


def _neighbours(ratio: float) -> str:
    below = [row for row in NEXTFLOW_TABLE if row.ratio < ratio]
    above = [row for row in NEXTFLOW_TABLE if row.ratio > ratio]
    near = ([below[-1]] if below else []) + ([above[0]] if above else [])
    return ", ".join(_describe(row) for row in near)


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level not in NEXTFLOW_LEVELS:
        levels = ", ".join(f"{lv} ({n} steps)" for lv, n in NEXTFLOW_LEVELS.items())
        raise ValueError(f"level must be one of {levels}, got {level!r}")
    return NEXTFLOW_LEVELS[level]


def _row_for_label(label: str) -> NextFlowRow:
    text = label.replace(" ", "")
    if text in _BY_LABEL:
        return _BY_LABEL[text]
    num, sep, den = text.partition(":")
    try:
        value = int(num) / int(den) if sep else None
    except (ValueError, ZeroDivisionError):
        value = None
    if value is None or value <= 0:
        raise ValueError(
            f"ratio={label!r} is not a ratio label; pass a label printed in Table 14 such as '1:4' "
            "or '16:15', or the ratio height / width as a float such as 0.25"
        )
    raise ValueError(
        f"ratio={label!r} is not a label printed in NextFlow Table 14; nearest known: "
        f"{_neighbours(value)}. Pass one of those, or bucket any size with "
        "nearest_nextflow_ratio(height, width)"
    )


def _row_for_ratio(ratio: float) -> NextFlowRow:
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(
            f"ratio must be a finite number > 0 (height / width), got {ratio!r}; e.g. 1.0 for a "
            "square image or 0.25 for 1:4"
        )
    best = min(NEXTFLOW_TABLE, key=lambda row: abs(row.ratio - ratio))
    if abs(best.ratio - ratio) > RATIO_TOLERANCE:
        raise ValueError(
            f"ratio={ratio!r} is not a ratio of NextFlow Table 14 (within {RATIO_TOLERANCE}); "
            f"nearest known: {_neighbours(ratio)}. Pass one of those, or bucket any size with "
            "nearest_nextflow_ratio(height, width)"
        )
    return best


def nextflow_schedule(ratio: float | str = 1.0, level: int = 1024) -> Schedule:
    """The Table 14 schedule for ``ratio`` (height / width), cut to ``level`` (256, 512 or 1024).

    ``ratio`` is a printed ratio (a float within 1e-3 of it, e.g. 0.276) or a printed label
    (e.g. ``"1:4"``, ``"10:36"``). Sizes that are not in the table go through
    ``nextflow_schedule_for_size``.
    """
    num_steps = _check_level(level)
    if isinstance(ratio, str):
        row = _row_for_label(ratio)
    elif isinstance(ratio, numbers.Real) and not isinstance(ratio, bool):
        row = _row_for_ratio(float(ratio))
    else:
        raise TypeError(
            f"ratio must be a float (height / width) or a label like '1:4', got "
            f"{type(ratio).__name__} {ratio!r}"
        )
    return Schedule(row.steps[:num_steps])


def _check_size(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nearest_nextflow_ratio(height: float, width: float) -> float:
    """The printed Table 14 ratio nearest to ``height / width``, compared in log space.

    Log space makes a ratio and its reciprocal equally far from 1:1. Sizes beyond 1:4 or 4:1 go to
    the end rows. Bucketing uses the printed ratios; three rows (0.295, 0.311, 0.345) print steps
    whose final grids have other ratios (see ``nextflow_table``).
    """
    target = math.log(_check_size("height", height) / _check_size("width", width))
    return min(NEXTFLOW_TABLE, key=lambda row: abs(math.log(row.ratio) - target)).ratio


def nextflow_schedule_for_size(height: float, width: float, level: int = 1024) -> Schedule:
    """The schedule of the Table 14 ratio nearest to ``height / width`` at ``level``."""
    _check_level(level)
    return nextflow_schedule(nearest_nextflow_ratio(height, width), level)
