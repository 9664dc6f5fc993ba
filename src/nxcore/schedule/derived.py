"""``derived_schedule``: a schedule for any final grid and step count.

The rule, for a final grid with long side L and short side S and K steps:

1. The long side starts at 1 and ends at L. Each step moves geometrically from the previous side
   toward L over the steps still to come, ``side * (L / side) ** (1 / steps_left)``, rounded half
   up; re-aiming from the previous side keeps a rounding push at the coarse end from crowding the
   fine end.
2. When K <= L the long side grows by at least 1 per step (capped to leave room for the steps still
   to come), so every step adds tokens. With more steps than L it cannot, and equal neighbouring
   steps are kept: a schedule never shrinks.
3. The short side is the long side scaled by S / L, rounded half up and at least 1, so every grid
   keeps the final ratio to within half a token per side and the last step is exactly the grid.

``derived_schedule((8, 8), 5)`` (a 64x64 image on an 8x8 latent grid) gives 1x1 2x2 3x3 5x5 8x8;
``derived_schedule((16, 16), 10)`` reproduces VAR's 256 preset, 1 2 3 4 5 6 8 10 13 16.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from nxcore.schedule.schedule import Schedule

__all__ = ["derived_schedule"]


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    hint = "pass the final latent grid as (h, w), e.g. (8, 8) for a 64x64 image with stride 8"
    if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or len(grid) != 2:
        raise TypeError(f"grid must be an (h, w) pair, got {grid!r}; {hint}")
    for name, side in zip(("h", "w"), grid, strict=True):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise TypeError(f"grid {name} must be an int, got {side!r} in grid={grid!r}; {hint}")
        if side < 1:
            raise ValueError(f"grid {name} must be >= 1, got {side!r} in grid={grid!r}; {hint}")
    return int(grid[0]), int(grid[1])


def _long_sides(long: int, num_steps: int) -> list[int]:
    if num_steps == 1:
        return [long]
    strict = num_steps <= long
    sides = [1]
    for k in range(1, num_steps):
        steps_left = num_steps - k
        prev = sides[-1]
        target = _round(prev * (long / prev) ** (1 / steps_left))
        if strict:
            lowest, highest = prev + 1, long - (steps_left - 1)
        else:
            lowest, highest = prev, long
        sides.append(min(max(target, lowest), highest))
    return sides


def derived_schedule(grid: tuple[int, int], num_steps: int) -> Schedule:
    """A ``num_steps``-step schedule from 1x1 up to ``grid`` = (h, w), growing geometrically."""
    h, w = _check_grid(grid)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}; a schedule needs a step")
    long, short = max(h, w), min(h, w)
    steps = []
    for side in _long_sides(long, int(num_steps)):
        other = max(1, (2 * side * short + long) // (2 * long))  # side * short / long, half up
        steps.append((side, other) if h >= w else (other, side))
    return Schedule(tuple(steps))
