"""``UNetDenoiser``: the small convolutional denoiser of the diffusion decoder (NextFlow §3.3's UNet
variant, sized to train on a CPU).

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels (multiples of 2^(levels - 1))
    cond_channels   width of the projected condition;  gh, gw: its grid
    text, text_dim  caption tokens

The visual condition enters where NextFlow puts it for the UNet: the input convolution takes the
noisy image and the condition map (nearest-resized from the latent grid to the image grid)
concatenated along channels. The caption enters through the text branch: its pooled tokens are
added to the time embedding (FiLM-style, through every residual block) and cross-attention layers
read its tokens at the lowest resolution and in the middle block.

Layout (default ``ch`` 16, ``ch_mult`` = (1, 2, 4), ``num_res_blocks`` = 1; 0.75 M parameters with the
default decoder, about 0.55 s per update of 32 images at 32 px on one CPU thread): conv_in -> per
level ``num_res_blocks`` ResBlocks (time-conditioned: GroupNorm, SiLU, conv, + Linear(temb),
GroupNorm, SiLU, conv), a stride-2 conv between levels -> middle (ResBlock, cross-attention,
ResBlock) -> the mirror with skip connections and nearest up-sampling + conv -> GroupNorm, SiLU,
conv_out (zero-initialised: a fresh denoiser predicts zero velocity).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.config import Config, as_tuple, channel_multipliers, config, integer
from nxcore.decoder.layers import CrossAttention, TimeEmbedding, masked_mean
from nxcore.decoder.protocol import Denoiser
from nxcore.typing import Bool, Float, typecheck

__all__ = ["UNetDenoiser", "UNetDenoiserConfig"]


@config
class UNetDenoiserConfig(Config):
    """Widths ``ch * ch_mult[i]`` per level, ``num_res_blocks`` per level, GroupNorm of
    ``norm_groups``, cross-attention with ``heads`` heads. The image, condition and text widths come
    from the ``DiffusionDecoder`` (``build(channels=, cond_channels=, text_dim=)``)."""

    ch: int = attrs.field(default=16, validator=integer(at_least=1))
    ch_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4), converter=as_tuple,
                                        validator=channel_multipliers((1, 2, 2)))
    num_res_blocks: int = attrs.field(default=1, validator=integer(at_least=1))
    norm_groups: int = attrs.field(default=8, validator=integer(at_least=1))
    heads: int = attrs.field(default=2, validator=integer(at_least=1))

    def __attrs_post_init__(self) -> None:
        for width in (self.ch * m for m in self.ch_mult):
            if width % self.norm_groups or width % self.heads:
                raise ValueError(
                    f"UNetDenoiserConfig: channel width {width} (ch {self.ch} x ch_mult {self.ch_mult}) must "
                    f"be divisible by norm_groups = {self.norm_groups} and heads = {self.heads}"
                )

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (one halving per level after the first)."""
        return 2 ** (len(self.ch_mult) - 1)

    def build(self, *, channels: int = 3, cond_channels: int = 64, text_dim: int = 64) -> UNetDenoiser:
        return UNetDenoiser(self, channels=channels, cond_channels=cond_channels, text_dim=text_dim)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv, + Linear(temb), GroupNorm, SiLU, conv; a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SpatialCrossAttention(nn.Module):
    """``CrossAttention`` over the pixels of a feature map."""

    def __init__(self, width: int, text_dim: int, heads: int) -> None:
        super().__init__()
        self.attn = CrossAttention(width, text_dim, heads)

    def forward(self, x: Tensor, text: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.attn(x.flatten(2).transpose(1, 2), text, mask)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class UNetDenoiser(nn.Module, Denoiser):
    """The UNet of the module docstring: (x_t, t, cond, text) -> velocity."""

    def __init__(self, config: UNetDenoiserConfig | None = None, *, channels: int = 3,
                 cond_channels: int = 64, text_dim: int = 64) -> None:
        super().__init__()
        config = config or UNetDenoiserConfig()
        self.config = config
        self.channels, self.cond_channels, self.text_dim = channels, cond_channels, text_dim
        c, g = config.ch, config.norm_groups
        widths = [c * m for m in config.ch_mult]
        temb = 4 * c
        self.time = TimeEmbedding(temb)
        self.text_pool = nn.Linear(text_dim, temb)
        self.conv_in = nn.Conv2d(channels + cond_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [widths[0]]
        cur = widths[0]
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(cur, w, temb, g))
                cur = w
                skips.append(cur)
            self.down.append(blocks)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.down_attn = SpatialCrossAttention(cur, text_dim, config.heads)
        self.mid1 = ResBlock(cur, cur, temb, g)
        self.mid_attn = SpatialCrossAttention(cur, text_dim, config.heads)
        self.mid2 = ResBlock(cur, cur, temb, g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skips.pop(), w, temb, g))
                cur = w
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def examples(cls) -> list[UNetDenoiser]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            config = UNetDenoiserConfig(ch=8, ch_mult=(1, 2), norm_groups=4)
            return [cls(config, cond_channels=8, text_dim=16)]

    @typecheck
    def forward(
        self,
        x: Float[Tensor, "batch channels height width"],
        t: Float[Tensor, " batch"],
        cond: Float[Tensor, "batch cond_channels gh gw"],
        text: Float[Tensor, "batch text text_dim"],
        text_mask: Bool[Tensor, "batch text"],
    ) -> Float[Tensor, "batch channels height width"]:
        m = self.config.multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"images are {tuple(x.shape[-2:])} but this UNet halves them {len(self.config.ch_mult) - 1} "
                f"times; pass sides that are multiples of {m} (or use fewer ch_mult levels)"
            )
        temb = self.time(t) + self.text_pool(masked_mean(text, text_mask))
        c = F.interpolate(cond.to(x.dtype), size=x.shape[-2:], mode="nearest")
        h = self.conv_in(torch.cat([x, c], dim=1))
        hs = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.down_attn(h, text, text_mask)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), text, text_mask), temb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
