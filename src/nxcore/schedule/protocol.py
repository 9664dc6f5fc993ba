"""The ``ScaleSchedule`` contract: the (h, w) token grid of every step of next-scale prediction.

A schedule is a sequence of K grids ``steps = ((h_1, w_1), ..., (h_K, w_K))``, coarse to fine. Step
k contributes ``h_k * w_k`` tokens; the tokens of an image are the concatenation of all steps in
row-major order. Invariants every implementation keeps:

- K >= 1; every h_k, w_k >= 1 (plain ``int``);
- steps never shrink: h_{k+1} >= h_k and w_{k+1} >= w_k;
- the last step is the final latent grid (``grid``).

Implementations define ``steps`` and ``truncate``; the derived quantities below come from the
protocol and need not be re-implemented. Reference implementation: ``nxcore.schedule.Schedule``,
built from NextFlow's Table 14 (``nextflow_schedule``), the VAR presets (``var_schedule``),
Infinity's 1:1 template (``infinity_schedule``) or any grid (``derived_schedule``).
"""

from __future__ import annotations

import itertools
from typing import Protocol, Self, runtime_checkable


@runtime_checkable
class ScaleSchedule(Protocol):
    @property
    def steps(self) -> tuple[tuple[int, int], ...]:
        """(h, w) of every step, coarse to fine."""
        ...

    def truncate(self, num_steps: int) -> Self:
        """The first ``num_steps`` steps (a resolution level: e.g. 12 of 18 = NextFlow 256-level)."""
        ...

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def grid(self) -> tuple[int, int]:
        """The final (h, w) latent grid."""
        return self.steps[-1]

    @property
    def token_counts(self) -> tuple[int, ...]:
        """h_k * w_k for every step."""
        return tuple(h * w for h, w in self.steps)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of every step in the flattened image, plus the total: length K + 1."""
        return (0, *itertools.accumulate(self.token_counts))

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)
