"""Building blocks of the Flux-style autoencoder, with the official sub-module names.

Shapes:
    batch           images
    channels        feature channels of a block (in_ch / out_ch when they differ)
    height, width   the feature map of the current resolution level

- ``ResnetBlock``: GroupNorm -> swish -> 3x3 conv -> GroupNorm -> swish -> 3x3 conv, plus the input
  (through a 1x1 ``nin_shortcut`` conv when the width changes). Keys ``norm1, conv1, norm2, conv2,
  nin_shortcut``.
- ``AttnBlock``: single-head self-attention over all positions of the map, with 1x1-conv ``q, k, v,
  proj_out`` after a GroupNorm ``norm``; residual.
- ``Downsample``: zero-pad one row at the bottom and one column at the right, then a 3x3 stride-2
  conv (``conv``): halves each side of an even-sized map.
- ``Upsample``: nearest x2, then a 3x3 conv (``conv``).

GroupNorms have ``eps = 1e-6`` and an affine transform; swish is x * sigmoid(x).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GROUP_NORM_EPS", "AttnBlock", "Downsample", "ResnetBlock", "Upsample", "group_norm"]

GROUP_NORM_EPS = 1e-6


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 shortcut conv appears only when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, *, groups: int) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if self.in_ch != self.out_ch else x
        return skip + h


class AttnBlock(nn.Module):
    """x + proj_out(softmax(q k^T / sqrt(channels)) v) over the flattened map, one head."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def rows(conv: nn.Conv2d) -> Tensor:  # [b, c, h, w] -> [b, 1 head, h*w, c]
            return conv(normed).flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(rows(self.q), rows(self.k), rows(self.v))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Asymmetric zero pad (right, bottom) + 3x3 stride-2 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 + 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
