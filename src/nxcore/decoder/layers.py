"""Pieces both denoisers share: the time embedding and caption cross-attention.

Shapes:
    batch       images
    tokens      query tokens (pixels of a feature map, or patches)
    text        caption tokens;  text_dim: their width
    dim         the width of the query tokens

``timestep_embedding(t, dim)``: the sinusoidal embedding of ``1000 t`` (half cos, half sin, DDPM /
DiT frequencies 10000^(-i / (dim / 2))); ``TimeEmbedding``: it, then Linear -> SiLU -> Linear.
``CrossAttention``: pre-LayerNorm queries attend to the caption tokens (keys / values projected from
``text_dim``), masked where ``text_mask`` is False; the output projection starts at zero, so a fresh
block adds nothing. ``masked_mean``: the pooled caption (the mean of its real tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.typing import Bool, Float, typecheck

__all__ = ["CrossAttention", "TimeEmbedding", "masked_mean", "timestep_embedding"]


@typecheck
def timestep_embedding(t: Float[Tensor, " batch"], dim: int) -> Float[Tensor, "batch dim"]:
    """[cos(1000 t f_i), sin(1000 t f_i)] with f_i = 10000^(-i / half), half = dim // 2 (a zero
    column when ``dim`` is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(out, (0, 1)) if dim % 2 else out


class TimeEmbedding(nn.Module):
    """t [batch] -> [batch, dim]: sinusoidal features of width ``frequency_dim``, then an MLP."""

    def __init__(self, dim: int, frequency_dim: int = 64) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


@typecheck
def masked_mean(
    text: Float[Tensor, "batch text dim"], mask: Bool[Tensor, "batch text"]
) -> Float[Tensor, "batch dim"]:
    """The mean of each row's real tokens (``mask`` True)."""
    w = mask.to(text.dtype)[..., None]
    return (text * w).sum(1) / w.sum(1).clamp_min(1.0)


class CrossAttention(nn.Module):
    """``x + out(attn(q(norm(x)), k(text), v(text)))`` over the caption tokens (module docstring)."""

    def __init__(self, dim: int, text_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention width {dim} is not divisible by heads = {heads}; pick a "
                             "width that is a multiple of the heads")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, text: Tensor, mask: Tensor) -> Tensor:
        """x [batch, tokens, dim] -> the same, with the caption read in."""
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(self.norm(x)).view(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(text.to(x.dtype)).view(b, text.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return x + self.out(out.transpose(1, 2).reshape(b, n, d))
