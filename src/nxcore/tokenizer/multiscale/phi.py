"""φ refinement convs of VAR's quantizer: ``Phi``, ``PhiBank`` and the step -> φ tick rule.

Shapes:
    batch       images
    code_dim    codebook width
    h, w        the final latent grid (φ runs after up-sampling to it)

``φ(h) = (1 - r)·h + r·conv3x3(h)``, r = ``phi_ratio`` (VAR's ``quant_resi``, 0.5). A bank holds
``count`` convs; step k of a K-step schedule sits at ``k / (K - 1)`` (0 when K = 1, where VAR would
divide by zero) and uses the conv whose tick is nearest, ties to the lower index (``np.argmin``).
Ticks (``rule``):

- ``"var"``: ``linspace(1/(3n), 1 - 1/(3n), n)`` when n = 4, else ``linspace(1/(2n), 1 - 1/(2n), n)``
  — VAR's ``PhiPartiallyShared``/``PhiNonShared``. With 4 convs, 10 steps map to
  [0, 0, 1, 1, 1, 2, 2, 3, 3, 3] and 13 steps to [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3];
- ``"uniform"``: ``linspace(1/(2n), 1 - 1/(2n), n)`` for every n.

Ticks are computed with ``numpy.linspace`` in float64, as VAR does, so that steps that fall exactly
between two ticks (e.g. the middle step of an odd K) resolve as VAR resolves them.

Key names: ``qresi_ls.{i}.{weight,bias}`` (VAR's partially shared bank; ``official.py`` maps VAR's
fully shared ``qresi.*`` and non-shared ``{i}.*`` layouts onto it).
"""

from __future__ import annotations

import functools

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.typing import Float

__all__ = ["Phi", "PhiBank", "phi_index", "phi_ticks"]


@functools.cache
def phi_ticks(count: int, rule: str = "var") -> tuple[float, ...]:
    """The ``count`` ticks in [0, 1] of the φ bank (module docstring)."""
    if rule not in ("var", "uniform"):
        raise ValueError(f"rule must be 'var' or 'uniform', got {rule!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1 (the number of φ convs), got {count!r}")
    third = rule == "var" and count == 4
    margin = 1 / 3 / count if third else 1 / 2 / count
    return tuple(float(t) for t in np.linspace(margin, 1 - margin, count))


def phi_index(step: int, num_steps: int, count: int, rule: str = "var") -> int:
    """Which of ``count`` φ convs step ``step`` (0-based) of a ``num_steps`` schedule uses."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
        raise ValueError(f"step must be an int in [0, {num_steps}), got {step!r}")
    at = step / (num_steps - 1) if num_steps > 1 else 0.0
    ticks = np.asarray(phi_ticks(count, rule))
    return int(np.argmin(np.abs(ticks - at)))


class Phi(nn.Conv2d):
    """3x3 conv (code_dim -> code_dim) blended with its input: ``(1 - ratio)·h + ratio·conv(h)``.

    Computed in the input's dtype (fp32 in the quantizer) whatever the parameters' dtype.
    """

    def __init__(self, code_dim: int, ratio: float) -> None:
        super().__init__(code_dim, code_dim, kernel_size=3, padding=1)
        self.ratio = float(ratio)

    def forward(self, h: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(h.dtype)
        conv = F.conv2d(h, self.weight.to(h.dtype), bias, padding=1)
        return h.mul(1 - self.ratio) + conv.mul(self.ratio)


class PhiBank(nn.Module):
    """``count`` φ convs; ``bank(h, step, num_steps)`` applies the one the tick rule picks."""

    def __init__(self, code_dim: int, count: int, *, ratio: float = 0.5, rule: str = "var") -> None:
        super().__init__()
        phi_ticks(count, rule)  # validates count and rule
        self.rule = rule
        self.qresi_ls = nn.ModuleList(Phi(code_dim, ratio) for _ in range(count))

    def index(self, step: int, num_steps: int) -> int:
        return phi_index(step, num_steps, len(self.qresi_ls), self.rule)

    def forward(
        self, h: Float[Tensor, "batch code_dim h w"], step: int, num_steps: int
    ) -> Float[Tensor, "batch code_dim h w"]:
        return self.qresi_ls[self.index(step, num_steps)](h)

    def extra_repr(self) -> str:
        return f"rule={self.rule!r}, ticks={phi_ticks(len(self.qresi_ls), self.rule)}"
