"""``RMSNorm``: root-mean-square normalisation with a learned gain, and the fused residual add that
pre-norm decoders carry their residual stream with.

Shape legend (see ``nxcore.typing``): batch = any leading dimensions, dim = the normalised width.

    y    = norm(x)                    y = x * rsqrt(mean(x**2, -1) + eps) * weight
    y, h = norm(x, residual=r)        h = x + r (the new residual stream), y = norm(h)

Statistics run in fp32 (``nxkernels.rms_norm``); ``y`` has ``x``'s dtype. The parameter is named
``weight`` as in Hugging Face Qwen2 (``input_layernorm.weight``, ``norm.weight``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nxcore.nn._checks import check_dim, check_eps, check_width
from nxcore.typing import Float, typecheck
from nxkernels.rms_norm import rms_norm

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with gain ``weight`` [dim] (initialised to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.eps = check_eps("eps", eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    @typecheck
    def forward(
        self, x: Float[Tensor, "*batch dim"], residual: Float[Tensor, "*batch dim"] | None = None
    ) -> Float[Tensor, "*batch dim"] | tuple[Float[Tensor, "*batch dim"], Float[Tensor, "*batch dim"]]:
        """``norm(x)``, or ``(norm(x + residual), x + residual)`` when ``residual`` is given."""
        check_width(self, "x", x, self.dim)
        if residual is not None:
            check_width(self, "residual", residual, self.dim)
            if residual.shape != x.shape:
                raise ValueError(
                    f"residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}; "
                    "the residual stream must have x's shape"
                )
        return rms_norm(x, self.weight, self.eps, residual=residual)
