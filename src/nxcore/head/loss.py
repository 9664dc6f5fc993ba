"""The reduction every head's loss shares: a weighted mean over rows that carry loss."""

from __future__ import annotations

import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.typing import Float, typecheck


def check_weights(weights: Tensor | None, rows: int) -> None:
    if weights is None:
        return
    check_tensor("weights", weights, ndim=1, kind="float")
    if weights.shape[0] != rows:
        raise ValueError(
            f"weights has {weights.shape[0]} rows but hidden has {rows}; pass one weight per row"
        )
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("weights must be finite and >= 0; zero a row's weight to drop its loss")


@typecheck
def weighted_mean(
    per_row: Float[Tensor, " tokens"],
    weights: Float[Tensor, " tokens"] | None,
    carries_loss: Tensor,
) -> Float[Tensor, ""]:
    """sum(w * l) / sum(w) over rows that carry loss; 0 (still differentiable) when none does."""
    w = carries_loss.to(torch.float32)
    if weights is not None:
        w = w * weights.to(torch.float32)
    total = w.sum()
    return (per_row.float() * w).sum() / total.clamp_min(torch.finfo(torch.float32).tiny)
