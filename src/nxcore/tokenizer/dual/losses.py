"""Loss terms of the dual-codebook tokenizer (TokenFlow §4.3 of the fact sheet; NextFlow §3.1).

- ``reconstruction_loss``: mean squared error between the pixel decoder's output and the images.
- ``semantic_loss``: 1 − cosine similarity between the semantic decoder's prediction and the
  teacher's features, per latent cell, averaged over cells and images.
- the VQ terms (codebook + β·commitment) come from ``residual_quantize(loss=config.vq_loss)``:
  ``"step"`` (TokenFlow) compares each step's codewords with the residual it quantized (both
  L2-normalised), ``"cumulative"`` (VAR) the running f̂_k with the features after every step.
- the optional perceptual term is any callable ``(reconstruction, images) -> scalar`` (e.g. LPIPS);
  nx ships none (no downloadable weights at run time).

``drop_scales`` draws the steps kept in a training forward (NextFlow: "randomly dropping 50% of VAR
scales").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nxcore.typing import Float, typecheck

__all__ = ["drop_scales", "reconstruction_loss", "semantic_loss"]


@typecheck
def reconstruction_loss(
    reconstruction: Float[Tensor, "batch channels height width"],
    images: Float[Tensor, "batch channels height width"],
) -> Float[Tensor, ""]:
    """MSE in fp32."""
    return F.mse_loss(reconstruction.float(), images.float())


@typecheck
def semantic_loss(
    prediction: Float[Tensor, "batch dim gh gw"], target: Float[Tensor, "batch dim gh gw"]
) -> Float[Tensor, ""]:
    """mean over cells of 1 − cos(prediction, target) along channels, in fp32; the target carries no
    gradient."""
    cos = F.cosine_similarity(prediction.float(), target.detach().float(), dim=1, eps=1e-6)
    return (1 - cos).mean()


def drop_scales(
    num_steps: int, fraction: float, *, generator: torch.Generator | None = None
) -> tuple[int, ...]:
    """The step indices kept when ``fraction`` of the steps after the first are dropped.

    Exactly ``floor(fraction·(num_steps − 1) + 0.5)`` of steps 1..K−1 (round half up) are dropped,
    chosen uniformly without replacement; step 0 is always kept (TokenFlow's ``drop_scale`` never drops
    the first scale either). Returned increasing, ready for ``residual_quantize(keep=...)``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ValueError(
            f"fraction must be a number in [0, 1] (the share of steps to drop), got {fraction!r}"
        )
    n_drop = math.floor(fraction * (num_steps - 1) + 0.5)
    if n_drop == 0:
        return tuple(range(num_steps))
    device = generator.device if generator is not None else None
    order = torch.randperm(num_steps - 1, generator=generator, device=device)[:n_drop] + 1
    dropped = set(order.tolist())
    return tuple(k for k in range(num_steps) if k not in dropped)
