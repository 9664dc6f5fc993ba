"""``SwiGLUMLP``: the gated feed-forward block of Qwen2.5 and NextStep-1's backbone.

Shape legend (see ``nxcore.typing``): batch = any leading dimensions, dim = model width,
hidden = intermediate width (13824 for Qwen2.5-14B / NextStep-1).

    mlp(x) = down_proj(silu(gate_proj(x)) * up_proj(x))

The activation is ``nxkernels.swiglu.swiglu``. Parameter names follow Hugging Face Qwen2
(``mlp.gate_proj.weight``, ``mlp.up_proj.weight``, ``mlp.down_proj.weight``).
"""

from __future__ import annotations

from torch import Tensor, nn

from nxcore.nn._checks import check_dim, check_flag, check_width
from nxcore.typing import Float, typecheck
from nxkernels.swiglu import swiglu

__all__ = ["SwiGLUMLP"]


class SwiGLUMLP(nn.Module):
    """``down_proj(swiglu(gate_proj(x), up_proj(x)))``; ``bias`` applies to all three projections."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.hidden = check_dim("hidden", hidden)
        check_flag("bias", bias)
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    @typecheck
    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        check_width(self, "x", x, self.dim)
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
