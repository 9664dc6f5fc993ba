"""The encoder and decoder of the Flux-style autoencoder (official state-dict key names).

Shapes:
    batch           images
    channels        image channels (in_channels / out_channels)
    height, width   image pixels
    moments         2 * z_channels: posterior mean, then log-variance
    z               z_channels
    h, w            latent map: height / spatial_factor, width / spatial_factor

Keys (level i = 0 is the highest resolution, in the encoder and the decoder alike)::

    encoder.conv_in
    encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2[,nin_shortcut]}   j < num_res_blocks
    encoder.down.{i}.downsample.conv                                       every level but the last
    encoder.mid.{block_1, attn_1.{norm,q,k,v,proj_out}, block_2}
    encoder.norm_out, encoder.conv_out                                     conv_out -> 2 * z_channels
    decoder.conv_in, decoder.mid.*
    decoder.up.{i}.block.{j}.*                                             j < num_res_blocks + 1
    decoder.up.{i}.upsample.conv                                           every level but level 0
    decoder.norm_out, decoder.conv_out

There is no quant_conv / post_quant_conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.tokenizer.autoencoder.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from nxcore.tokenizer.autoencoder.config import AutoencoderConfig
from nxcore.typing import Float

__all__ = ["Decoder", "Encoder"]


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), then an optional re-sampling module."""

    def __init__(self, widths: list[tuple[int, int]], groups: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, groups=groups) for i, o in widths)


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups=groups)
        self.attn_1 = AttnBlock(channels, groups=groups)
        self.block_2 = ResnetBlock(channels, channels, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """images -> moments (posterior mean and log-variance), spatial_factor times smaller."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        width = config.ch
        for i, out in enumerate(widths):
            level = _Level([(width if j == 0 else out, out) for j in range(config.num_res_blocks)], groups)
            width = out
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = _Mid(width, groups)
        self.norm_out = group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, 2 * config.z_channels, kernel_size=3, padding=1)

    def forward(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> Float[Tensor, "batch moments h w"]:
        x = self.conv_in(images)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """latent map z -> images, spatial_factor times larger."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        width = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, kernel_size=3, padding=1)
        self.mid = _Mid(width, groups)
        levels: list[_Level] = []
        for i in reversed(range(len(widths))):  # built lowest resolution first, stored by index i
            out = widths[i]
            pairs = [(width if j == 0 else out, out) for j in range(config.num_res_blocks + 1)]
            level = _Level(pairs, groups)
            width = out
            if i != 0:
                level.upsample = Upsample(width)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: Float[Tensor, "batch z h w"]) -> Float[Tensor, "batch channels height width"]:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))
