"""Patchify a latent map into tokens and back, and the token-wise LayerNorm, in NextStep-1's order.

Shapes:
    batch           images
    channels        latent channels (z_channels)
    height, width   latent map
    h, w            token grid: height / patch, width / patch
    latent_dim      channels * patch**2

Element order: token (i, j) holds the p x p block of latent pixels at rows i*p.., columns j*p..;
inside the token, the value of channel c at row r, column q of the block sits at index
``c * p**2 + r * p + q``. Tokens come in raster order when the grid is flattened: index
``i * w + j``. Grids need not be square.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.typing import Float, typecheck

__all__ = ["LAYER_NORM_EPS", "patch_layer_norm", "patchify", "unpatchify"]

LAYER_NORM_EPS = 1e-6


def _check_patch(patch: object) -> int:
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        raise ValueError(f"patch must be an int >= 1, got {patch!r}")
    return patch


@typecheck
def patchify(
    latents: Float[Tensor, "batch channels height width"], patch: int
) -> Float[Tensor, "batch h w latent_dim"]:
    """[B, C, H, W] -> [B, H/p, W/p, C*p*p] (element order in the module docstring)."""
    check_tensor("latents", latents, ndim=4, kind="float")
    p = _check_patch(patch)
    b, c, height, width = latents.shape
    if height % p or width % p:
        raise ValueError(
            f"latents map is {height}x{width}, not a multiple of patch = {p} on each side; crop or pad "
            f"it to a multiple of {p} (images to a multiple of the tokenizer's downsample)"
        )
    x = latents.reshape(b, c, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, height // p, width // p, c * p * p)


@typecheck
def unpatchify(
    tokens: Float[Tensor, "batch h w latent_dim"], patch: int
) -> Float[Tensor, "batch channels height width"]:
    """[B, h, w, C*p*p] -> [B, C, h*p, w*p]; the inverse of ``patchify``."""
    check_tensor("tokens", tokens, ndim=4, kind="float")
    p = _check_patch(patch)
    b, h, w, dim = tokens.shape
    if dim % (p * p):
        raise ValueError(
            f"tokens have width {dim}, not a multiple of patch**2 = {p * p}; pass tokens of width "
            f"channels * {p * p}"
        )
    c = dim // (p * p)
    x = tokens.reshape(b, h, w, c, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * p, w * p)


@typecheck
def patch_layer_norm(
    latents: Float[Tensor, "batch channels height width"], patch: int, *, eps: float = LAYER_NORM_EPS
) -> Float[Tensor, "batch channels height width"]:
    """LayerNorm (no affine) of every p x p patch of the map over its C*p*p values; same shape out.

    With ``patch`` equal to the token patch size this normalises each token to zero mean and unit
    variance (biased variance, ``eps`` inside the square root).
    """
    tokens = patchify(latents, patch)
    return unpatchify(F.layer_norm(tokens, tokens.shape[-1:], None, None, eps), patch)
