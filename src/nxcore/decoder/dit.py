"""``DiTDenoiser``: the transformer denoiser of the diffusion decoder (NextFlow §3.3's Transformer
variants, in miniature).

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels (multiples of ``patch``)
    tokens          patches: (height / patch) x (width / patch), raster order
    dim             the transformer width
    cond_channels   width of the projected condition;  gh, gw: its grid
    text, text_dim  caption tokens

Tokens: the noisy image cut into ``patch`` x ``patch`` patches (a stride-``patch`` conv) plus fixed
2-D sin-cos positions for the grid (any size, so the 2x stage needs no new weights). The visual
condition enters as NextFlow's Transformer decoders take the discrete tokens: an MLP projects the
condition into the model width and the result is added to the patch tokens (the condition map is
nearest-resized to the patch grid first). The caption enters through the text branch: pooled, it
joins the time embedding; its tokens are read by a cross-attention layer in every block.

Block (adaLN-Zero, as DiT)::

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))          c = time + pooled caption
    x = x + gate1 * attn(modulate(LN(x), shift1, scale1))                   nxcore.nn.Attention, qk-norm
    x = cross_attention(x, caption)                                         pre-LN, zero-init output
    x = x + gate2 * mlp(modulate(LN(x), shift2, scale2))                    SwiGLU

``modulate`` and the gated residuals are the fused ``nxkernels.adaln`` ops. The final layer is
``nxcore.nn.AdaLNFinalLayer`` (zero-initialised: a fresh denoiser predicts zero velocity), then the
patches are folded back into an image.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.config import Config, config, finite_number, integer
from nxcore.decoder.layers import CrossAttention, TimeEmbedding, masked_mean
from nxcore.decoder.protocol import Denoiser
from nxcore.nn import AdaLNFinalLayer, Attention, SwiGLUMLP
from nxcore.tokenizer.dual.semantic import sincos_2d
from nxcore.typing import Bool, Float, typecheck
from nxkernels.adaln import adaln_modulate, gated_residual

__all__ = ["DiTBlock", "DiTDenoiser", "DiTDenoiserConfig"]


@config
class DiTDenoiserConfig(Config):
    """``depth`` blocks of width ``dim`` with ``heads`` heads over ``patch`` x ``patch`` patches (default
    128 x 4 over 4x4 patches: one token per latent cell of a downsample-4 tokenizer; 1.4 M parameters,
    about 0.5 s per update of 32 images at 32 px on one CPU thread); SwiGLU
    hidden width ``mlp_ratio * dim``. The image, condition and text widths come from the
    ``DiffusionDecoder`` (``build(channels=, cond_channels=, text_dim=)``)."""

    dim: int = attrs.field(default=128, validator=integer(at_least=1))
    depth: int = attrs.field(default=4, validator=integer(at_least=1))
    heads: int = attrs.field(default=4, validator=integer(at_least=1))
    patch: int = attrs.field(default=4, validator=integer(at_least=1))
    mlp_ratio: float = attrs.field(default=2.0, validator=finite_number(above=0.0))

    def __attrs_post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"DiTDenoiserConfig.dim = {self.dim} is not divisible by heads = {self.heads}")
        if self.dim % 4:
            raise ValueError(
                f"DiTDenoiserConfig.dim = {self.dim} is not a multiple of 4; the 2-D sin-cos positions need "
                "4 channels per frequency"
            )

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (the patch size)."""
        return self.patch

    def build(self, *, channels: int = 3, cond_channels: int = 64, text_dim: int = 64) -> DiTDenoiser:
        return DiTDenoiser(self, channels=channels, cond_channels=cond_channels, text_dim=text_dim)


class DiTBlock(nn.Module):
    """One adaLN-Zero block with caption cross-attention (module docstring)."""

    def __init__(self, dim: int, heads: int, text_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, qk_norm=True, qkv_bias=True, o_bias=True)
        self.cross = CrossAttention(dim, text_dim, heads)
        self.mlp = SwiGLUMLP(dim, max(1, int(dim * mlp_ratio)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor, text: Tensor, mask: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = gated_residual(x, gate1, self.attn(adaln_modulate(x, shift1, scale1)))
        x = self.cross(x, text, mask)
        return gated_residual(x, gate2, self.mlp(adaln_modulate(x, shift2, scale2)))


class DiTDenoiser(nn.Module, Denoiser):
    """The DiT of the module docstring: (x_t, t, cond, text) -> velocity."""

    def __init__(self, config: DiTDenoiserConfig | None = None, *, channels: int = 3, cond_channels: int = 64,
                 text_dim: int = 64) -> None:
        super().__init__()
        config = config or DiTDenoiserConfig()
        self.config = config
        self.channels, self.cond_channels, self.text_dim = channels, cond_channels, text_dim
        d, p = config.dim, config.patch
        self.patch_embed = nn.Conv2d(channels, d, p, stride=p)
        self.cond_mlp = nn.Sequential(nn.Linear(cond_channels, d), nn.SiLU(), nn.Linear(d, d))
        self.time = TimeEmbedding(d)
        self.text_pool = nn.Linear(text_dim, d)
        self.blocks = nn.ModuleList(DiTBlock(d, config.heads, text_dim, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.final_layer = AdaLNFinalLayer(d, p * p * channels)

    @classmethod
    def examples(cls) -> list[DiTDenoiser]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return [cls(DiTDenoiserConfig(dim=16, depth=1, heads=2, patch=2), cond_channels=8, text_dim=16)]

    @typecheck
    def forward(
        self,
        x: Float[Tensor, "batch channels height width"],
        t: Float[Tensor, " batch"],
        cond: Float[Tensor, "batch cond_channels gh gw"],
        text: Float[Tensor, "batch text text_dim"],
        text_mask: Bool[Tensor, "batch text"],
    ) -> Float[Tensor, "batch channels height width"]:
        p = self.config.patch
        b, c, height, width = x.shape
        if height % p or width % p:
            raise ValueError(
                f"images are {height}x{width} but the DiT cuts {p}x{p} patches; pass sides that are "
                f"multiples of {p}"
            )
        gh, gw = height // p, width // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [batch, tokens, dim]
        cmap = F.interpolate(cond.to(x.dtype), size=(gh, gw), mode="nearest").flatten(2).transpose(1, 2)
        positions = sincos_2d(gh, gw, self.config.dim, device=x.device).to(x.dtype)
        tokens = tokens + self.cond_mlp(cmap) + positions
        emb = self.time(t) + self.text_pool(masked_mean(text, text_mask))
        for block in self.blocks:
            tokens = block(tokens, emb, text, text_mask)
        n = tokens.shape[1]
        out = self.final_layer(tokens.reshape(b * n, -1), emb.repeat_interleave(n, dim=0)).reshape(b, n, -1)
        out = out.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, height, width)
