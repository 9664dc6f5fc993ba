"""``GridRefiner``: residual convolution blocks over the tokens of one image scale laid out on their
grid — a local path beside attention for the output of a next-scale decoder.

Shape legend (see ``nxcore.typing``): grids = images (rows) of one scale, tokens = h·w positions in
raster order, dim = model width.

    x_{b+1} = x_b + conv2(silu(conv1(norm(x_b))))      (b = 0 .. blocks-1, k x k convolutions, same padding)

Every token of a scale is predicted at once from the same inputs, so mixing a scale's positions
after the last layer keeps KV-cached generation equal to the teacher-forced forward. ``conv2`` starts
at zero: an untrained refiner is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from nxcore.nn._checks import check_dim, check_width
from nxcore.nn.norm import RMSNorm
from nxcore.typing import Float, typecheck

__all__ = ["GridRefiner"]


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.conv1 = nn.Conv2d(dim, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, dim, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:  # [grids, h, w, dim]
        y = self.norm(x).permute(0, 3, 1, 2)
        y = self.conv2(nn.functional.silu(self.conv1(y)))
        return x + y.permute(0, 2, 3, 1)


class GridRefiner(nn.Module):
    """``blocks`` pre-norm residual blocks of two ``kernel`` x ``kernel`` convolutions (``dim`` →
    ``hidden`` → ``dim``, SiLU between) over an h x w grid of tokens."""

    def __init__(self, dim: int, blocks: int, *, hidden: int | None = None, kernel: int = 3) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        check_dim("blocks", blocks)
        self.hidden = check_dim("hidden", dim if hidden is None else hidden)
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel = {kernel!r}; pick an odd kernel size (3 is the usual one)")
        self.blocks = nn.ModuleList(_Block(dim, self.hidden, kernel) for _ in range(blocks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.norm.reset_parameters()
            block.conv1.reset_parameters()
            nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(block.conv2.bias)

    @typecheck
    def forward(
        self, x: Float[Tensor, "grids tokens dim"], h: int, w: int
    ) -> Float[Tensor, "grids tokens dim"]:
        """The refined tokens of ``x``, whose positions are an ``h`` x ``w`` grid in raster order."""
        check_width(self, "x", x, self.dim)
        if h * w != x.shape[1]:
            raise ValueError(
                f"x has {x.shape[1]} tokens but the grid is {h}x{w} = {h * w}; pass the scale's own grid"
            )
        y = x.reshape(x.shape[0], h, w, self.dim)
        for block in self.blocks:
            y = block(y)
        return y.reshape(x.shape)
