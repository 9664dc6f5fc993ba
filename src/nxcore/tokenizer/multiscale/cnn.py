"""The LDM-style CNN encoder and decoder of VAR's VQVAE, with VAR's state-dict key names.

Shapes:
    batch           images
    channels        image channels (in_channels, 3)
    height, width   image pixels
    z               latent channels (the codebook's code_dim)
    h, w            latent map: height / downsample, width / downsample

Keys (level i = 0 is the highest resolution, in the encoder and the decoder alike; L = last level)::

    encoder.conv_in
    encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2[,nin_shortcut]}   j < num_res_blocks
    encoder.down.{L}.attn.{j}.{norm,qkv,proj_out}                          with level_attention
    encoder.down.{i}.downsample.conv                                       every level but the last
    encoder.mid.{block_1, attn_1.{norm,qkv,proj_out}, block_2}             attn_1 with mid_attention
    encoder.norm_out, encoder.conv_out                                     conv_out -> z
    decoder.conv_in, decoder.mid.*
    decoder.up.{i}.block.{j}.*, decoder.up.{L}.attn.{j}.*                  j < num_res_blocks + 1
    decoder.up.{i}.upsample.conv                                           every level but level 0
    decoder.norm_out, decoder.conv_out

The ResNet blocks and the re-sampling convs are those of the NextStep-1 autoencoder
(``nxcore.tokenizer.autoencoder.blocks``: same arithmetic and key names); self-attention here has
VAR's fused ``qkv`` 1x1 conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.tokenizer.autoencoder.blocks import Downsample, ResnetBlock, Upsample, group_norm
from nxcore.tokenizer.multiscale.config import MultiScaleVQConfig
from nxcore.typing import Float

__all__ = ["AttnBlock", "Decoder", "Encoder"]


class AttnBlock(nn.Module):
    """x + proj_out(softmax(q k^T / sqrt(channels)) v), one head over the flattened map; q, k, v
    come from one 1x1 conv ``qkv`` (3 x channels outputs, in that order) after GroupNorm ``norm``."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, 1 head, h*w, c]
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (one per block, or none), then an
    optional re-sampling module."""

    def __init__(self, pairs: list[tuple[int, int]], groups: int, attention: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, groups=groups) for i, o in pairs)
        self.attn = nn.ModuleList(AttnBlock(o, groups=groups) for _, o in pairs if attention)

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups=groups)
        self.attn_1 = AttnBlock(channels, groups=groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """images -> latent map z, ``downsample`` times smaller on each side."""

    def __init__(self, config: MultiScaleVQConfig) -> None:
        super().__init__()
        widths, groups, last = config.widths, config.norm_groups, len(config.widths) - 1
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        width = config.ch
        for i, out in enumerate(widths):
            pairs = [(width if j == 0 else out, out) for j in range(config.num_res_blocks)]
            level = _Level(pairs, groups, config.level_attention and i == last)
            width = out
            if i != last:
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = _Mid(width, groups, config.mid_attention)
        self.norm_out = group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.z_channels, kernel_size=3, padding=1)

    def forward(self, images: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch z h w"]:
        x = self.conv_in(images)
        for level in self.down:
            x = level(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """latent map z -> images, ``downsample`` times larger on each side (not clamped)."""

    def __init__(self, config: MultiScaleVQConfig) -> None:
        super().__init__()
        widths, groups, last = config.widths, config.norm_groups, len(config.widths) - 1
        width = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, kernel_size=3, padding=1)
        self.mid = _Mid(width, groups, config.mid_attention)
        levels: list[_Level] = []
        for i in reversed(range(len(widths))):  # built lowest resolution first, stored by index i
            out = widths[i]
            pairs = [(width if j == 0 else out, out) for j in range(config.num_res_blocks + 1)]
            level = _Level(pairs, groups, config.level_attention and i == last)
            width = out
            if i != 0:
                level.upsample = Upsample(width)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.in_channels, kernel_size=3, padding=1)

    def forward(self, z: Float[Tensor, "batch z h w"]) -> Float[Tensor, "batch channels height width"]:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))
