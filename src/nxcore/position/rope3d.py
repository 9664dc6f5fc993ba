"""Multiscale 3D RoPE (NextFlow Eq. 1): text on the diagonal, image tokens at normalised
centre coordinates plus their scale index.

Shape legend (see ``nxcore.typing``): seq = tokens of the layout, axes = 3 in the order
(scale, row, col), head_dim = width of one attention head, pairs = head_dim // 2.

Coordinates of one image, before any offset (Eq. 1): the token at row i, column j of the h x w grid
of step s gets

    (s,  C / sqrt(h w) * (i + 0.5),  C / sqrt(h w) * (j + 0.5))

so every step of a schedule with one aspect ratio spans the same box [0, C sqrt(h/w)] x
[0, C sqrt(w/h)] (the square [0, C] for square grids), a coarse token sits at the centre of the
region it covers on the finer grids, and two resolutions with one aspect ratio share one coordinate
range (no extrapolation when fine-tuning at a higher resolution). A continuous image (NextStep-1
style) is a single step, s = 0. A text token at text position t gets (t, t, t), so a text-only
sequence is exactly 1D RoPE.

Sections: the pairs split into contiguous sections (scale, row, col). Qwen2.5-VL's M-RoPE uses
[16, 24, 24] over (t, h, w) with head_dim 128; NextFlow starts from Qwen2.5-VL, so the scale axis
takes the temporal section and rows/columns keep theirs. The paper does not say how it assigns the
sections; this mapping is the one that reuses Qwen's text positions unchanged.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch
from torch import Tensor

from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.position.rope import Rotation, _check_width, _head_dim_validator, _theta_validator, rotate
from nxcore.typing import Float, typecheck

__all__ = ["MultiscaleRoPE3D", "default_sections", "image_coordinates"]

QWEN_SECTIONS = (16, 24, 24)  # Qwen2.5-VL mrope_section for head_dim 128 (64 pairs)


def default_sections(head_dim: int) -> tuple[int, int, int]:
    """Qwen's [16, 24, 24] scaled to ``head_dim // 2`` pairs: 1/4 scale, 3/8 rows, 3/8 columns.

    Rows and columns each get round(3/8 * pairs) (ties round down) and the scale axis the rest,
    so the sum is exact and rows and columns stay symmetric: 128 -> (16, 24, 24),
    64 -> (8, 12, 12), 16 -> (2, 3, 3), 8 -> (2, 1, 1).
    """
    pairs = head_dim // 2
    spatial = (3 * pairs + 3) // 8  # nearest integer to 3 * pairs / 8, ties down
    return (pairs - 2 * spatial, spatial, spatial)


def image_coordinates(
    steps: tuple[tuple[int, int], ...], range_factor: float
) -> Float[Tensor, "tokens 3"]:
    """Eq. 1 coordinates (scale, row, col) of every token of one image, steps in order, fp64."""
    parts = []
    for s, (h, w) in enumerate(steps):
        unit = range_factor / math.sqrt(h * w)
        rows = (torch.arange(h, dtype=torch.float64) + 0.5) * unit
        cols = (torch.arange(w, dtype=torch.float64) + 0.5) * unit
        grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
        scale = torch.full((h * w,), float(s), dtype=torch.float64)
        parts.append(torch.stack((scale, grid_r.reshape(-1), grid_c.reshape(-1)), dim=-1))
    return torch.cat(parts)


def _check_sections(instance, attribute, value) -> None:
    pairs = instance.head_dim // 2
    ok = (
        isinstance(value, tuple)
        and len(value) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    )
    if not ok:
        raise ValueError(
            f"MultiscaleRoPE3D.sections must be three ints >= 0 (pairs for scale, rows, columns), "
            f"got {value!r}"
        )
    if sum(value) != pairs:
        raise ValueError(
            f"MultiscaleRoPE3D.sections {value} sum to {sum(value)} but head_dim "
            f"{instance.head_dim} has {pairs} rotary pairs; they must sum to head_dim // 2 = "
            f"{pairs} (or pass sections=None for {default_sections(instance.head_dim)})"
        )


def _resolve_sections(value, instance) -> tuple[int, ...]:
    if value is None:
        return default_sections(instance.head_dim)
    return tuple(value) if isinstance(value, list | tuple) else value


def _positive_finite(instance, attribute, value) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number > 0, got {value!r}"
        )


def _offset_mode(instance, attribute, value) -> None:
    if value not in ("continue", "none"):
        raise ValueError(
            f"MultiscaleRoPE3D.image_offset must be 'continue' (images continue the text "
            f"positions, Qwen2-VL style) or 'none' (raw Eq. 1 coordinates), got {value!r}"
        )


@attrs.frozen(kw_only=True)
class MultiscaleRoPE3D(RotaryPositionalEncoder):
    """NextFlow's multiscale 3D RoPE; axes (scale, row, col).

    Fields:
        head_dim: attention head width (even). Default 128, Qwen2.5-VL-7B's.
        theta: RoPE base. Default 1e6, Qwen2.5-VL's ``rope_theta``.
        sections: pairs per axis (scale, rows, columns), summing to head_dim // 2. ``None`` gives
            ``default_sections(head_dim)``: (16, 24, 24) for 128.
        range_factor: C of Eq. 1 (the paper gives no value). Default 64: the final grid side at
            NextFlow's 1024 level (1024 px / 16), so that on a 64 x 64 final grid neighbouring
            tokens are exactly one position apart, the spacing text tokens have.
        image_offset: how images and text share the position line.

            ``"continue"`` (default, Qwen2-VL style). A running position t walks the segments: text
            tokens take t, t + 1, ... An image that starts when the running position is t0 (the
            position the next text token would have taken) gets its Eq. 1 coordinates plus t0 on
            every axis, and the running position then jumps to
            t0 + floor(max coordinate of that image over all three axes) + 1: text after the image
            resumes one past the image's largest coordinate. For a square image whose final grid
            side H is at least C / 2, with an integer C and at most C steps, the largest
            coordinate is C - C / (2H), so text resumes at t0 + C (NextFlow's 1024 level with the
            default C = 64: t0 + 64). Consecutive images stack the same way.

            ``"none"``: images take their raw Eq. 1 coordinates (every image spans the same box,
            starting at 0) and text positions count text tokens only (``TokenTable.text_index``).

        With a text-only layout both modes give exactly 1D positions (t, t, t) = token index, and
        ``apply`` equals ``RoPE1D`` with the same ``theta`` and ``head_dim``.
    """

    head_dim: int = attrs.field(default=128, validator=_head_dim_validator)
    theta: float = attrs.field(default=1e6, validator=_theta_validator)
    sections: tuple[int, ...] | None = attrs.field(
        default=None,
        converter=attrs.Converter(_resolve_sections, takes_self=True),
        validator=_check_sections,
    )
    range_factor: float = attrs.field(default=64.0, validator=_positive_finite)
    image_offset: Literal["continue", "none"] = attrs.field(
        default="continue", validator=_offset_mode
    )
    num_axes: ClassVar[int] = 3

    @classmethod
    def examples(cls) -> list[MultiscaleRoPE3D]:
        return [
            cls(head_dim=16, range_factor=8.0),
            cls(head_dim=16, range_factor=4.0, image_offset="none"),
            cls(head_dim=12, theta=10000.0, sections=(2, 2, 2)),
            cls(head_dim=128),
        ]

    @typecheck
    def positions(
        self, layout: SequenceLayout, *, device: torch.device | str = "cpu"
    ) -> Float[Tensor, "seq 3"]:
        """(scale, row, col) float32 coordinates of every token of ``layout``."""
        if not isinstance(layout, SequenceLayout):
            raise TypeError(
                f"layout must be a SequenceLayout, got {type(layout).__name__}; build one with "
                "SequenceLayout.of(TextSpan(n), DiscreteImage(schedule), ...)"
            )
        cont = self.image_offset == "continue"
        parts, t = [], 0
        for seg in layout.segments:
            if isinstance(seg, TextSpan):
                line = torch.arange(t, t + seg.length, dtype=torch.float64)
                parts.append(line[:, None].expand(-1, 3))
                t += seg.length
                continue
            steps = seg.schedule.steps if isinstance(seg, DiscreteImage) else ((seg.h, seg.w),)
            coords = image_coordinates(tuple(steps), self.range_factor)
            if cont:
                parts.append(coords + t)
                # a hair of slack so a coordinate that is an integer up to rounding counts as one
                t += math.floor(float(coords.max()) + 1e-9) + 1
            else:
                parts.append(coords)
        return torch.cat(parts).to(device=device, dtype=torch.float32)

    @typecheck
    def apply(
        self, x: Float[Tensor, "*batch seq head_dim"], positions: Float[Tensor, "seq axes"]
    ) -> Float[Tensor, "*batch seq head_dim"]:
        _check_width(self, x, positions)
        return rotate(x, positions, theta=self.theta, sections=self.sections)

    def rotation(self, positions: Float[Tensor, "seq axes"]) -> Rotation:
        """``apply(., positions)`` prepared for many eager calls without gradients (``Rotation``)."""
        return Rotation(self, positions, self.theta, self.sections)
