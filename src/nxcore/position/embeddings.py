"""Additive positional encoders: one [dim] vector per token, added to the input embeddings.

Shape legend (see ``nxcore.typing``): seq = tokens of the layout, dim = model width, scale = steps
of a schedule, L = tokens of one image (``schedule.total_tokens``), K = its number of steps.

Every encoder here returns zeros on text rows and gives its output the dtype and device of its
parameters (or, for the parameter-free ``ScaleLengthEmbedding`` and ``GridPositionEmbedding``, of
its buffer), so
``module.to(device, dtype)`` moves the output too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.layout import DiscreteImage, Modality, SequenceLayout, TextSpan
from nxcore.position.protocol import AdditivePositionalEncoder
from nxcore.position.rope3d import image_coordinates
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.typing import Float, typecheck

__all__ = [
    "GridPositionEmbedding",
    "LearnedAbsolutePosition",
    "LearnedScaleEmbedding",
    "ScaleLengthEmbedding",
]


def _check_count(owner: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")
    return value


def _check_above(owner: str, name: str, value: object, bound: float, example: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= bound:
        raise ValueError(
            f"{owner}: {name} must be a finite number > {bound:g} (e.g. {example}), got {value!r}"
        )
    return float(value)


def _check_layout(owner: str, layout: object) -> SequenceLayout:
    if not isinstance(layout, SequenceLayout):
        raise TypeError(
            f"{owner} takes a SequenceLayout, got {type(layout).__name__}; build one with "
            "SequenceLayout.of(TextSpan(n), DiscreteImage(schedule), ...)"
        )
    return layout


def _steps(seg) -> tuple[tuple[int, int], ...]:
    return tuple(seg.schedule.steps) if isinstance(seg, DiscreteImage) else ((seg.h, seg.w),)


class LearnedScaleEmbedding(nn.Module, AdditivePositionalEncoder):
    """A learned vector per scale index (VAR's ``lvl_embed``), added to image tokens.

    ``embed`` is an ``nn.Embedding(max_scales, dim)`` initialised N(0, 0.02). Continuous images are
    scale 0. Text rows are zero. Size ``max_scales`` for the longest schedule (NextFlow: 18).
    """

    def __init__(self, max_scales: int, dim: int) -> None:
        super().__init__()
        self.max_scales = _check_count("LearnedScaleEmbedding", "max_scales", max_scales)
        self.dim = _check_count("LearnedScaleEmbedding", "dim", dim)
        self.embed = nn.Embedding(max_scales, dim)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)

    @classmethod
    def examples(cls) -> list[LearnedScaleEmbedding]:
        return [cls(max_scales=8, dim=16), cls(max_scales=18, dim=4)]

    @typecheck
    def forward(self, layout: SequenceLayout) -> Float[Tensor, "seq dim"]:
        _check_layout("LearnedScaleEmbedding", layout)
        table = layout.tokens(self.embed.weight.device)
        top = int(table.scale_index.max())
        if top >= self.max_scales:
            raise ValueError(
                f"the layout has scale index {top} (a schedule with {top + 1} steps) but "
                f"LearnedScaleEmbedding has max_scales = {self.max_scales}; build it with "
                f"max_scales >= {top + 1}"
            )
        is_image = (table.modality == int(Modality.IMAGE))[:, None]
        vectors = self.embed(table.scale_index.clamp(min=0))
        return vectors * is_image.to(vectors.dtype)


class ScaleLengthEmbedding(nn.Module, AdditivePositionalEncoder):
    """NextFlow's "scale length" embedding: a fixed sinusoid of the number of steps K of the
    token's image schedule, telling the model which target resolution it is generating.

    Not learned. With half = dim // 2 and f_i = max_period^(-i / half), i = 0 .. half - 1, every
    token of an image with K steps gets ``[cos(K f_0), ..., cos(K f_{half-1}), sin(K f_0), ...,
    sin(K f_{half-1})]`` (cos half first, then sin; one zero column at the end when dim is odd).
    All tokens of one image share the vector; a continuous image has K = 1; text rows are zero.
    The paper says only "sinusoidal encoding over the number of scales": using K (not the token
    count) is this library's reading.

    The angles are computed in fp32 each call; a non-persistent buffer (nothing in the state dict)
    carries the output device and dtype.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = _check_count("ScaleLengthEmbedding", "dim", dim)
        self.max_period = _check_above("ScaleLengthEmbedding", "max_period", max_period, 1, "10000.0")
        self.register_buffer("carrier", torch.zeros(()), persistent=False)

    @classmethod
    def examples(cls) -> list[ScaleLengthEmbedding]:
        return [cls(dim=16), cls(dim=7, max_period=100.0)]

    def encode(self, num_steps: Tensor) -> Float[Tensor, "tokens dim"]:
        """The sinusoid of ``num_steps`` (any int tensor [tokens]) in fp32."""
        half = self.dim // 2
        i = torch.arange(half, dtype=torch.float32, device=num_steps.device)
        freqs = torch.exp(-math.log(self.max_period) * i / max(half, 1))
        angles = num_steps.to(torch.float32)[:, None] * freqs
        parts = [angles.cos(), angles.sin()]
        if self.dim % 2:
            parts.append(torch.zeros_like(angles[:, :1]))
        return torch.cat(parts, dim=-1)

    @typecheck
    def forward(self, layout: SequenceLayout) -> Float[Tensor, "seq dim"]:
        _check_layout("ScaleLengthEmbedding", layout)
        device = self.carrier.device
        counts = [
            torch.full((seg.length,), 0, dtype=torch.int64) if isinstance(seg, TextSpan)
            else torch.full((sum(h * w for h, w in _steps(seg)),), len(_steps(seg)))
            for seg in layout.segments
        ]
        k = torch.cat(counts).to(device)
        out = self.encode(k) * (k > 0).to(torch.float32)[:, None]
        return out.to(self.carrier.dtype)


class GridPositionEmbedding(nn.Module, AdditivePositionalEncoder):
    """A fixed sinusoid of each image token's place on its own grid: where in the picture the cell
    lies, the same for every resolution and aspect ratio (not in the NextFlow paper).

    The coordinates are those of ``MultiscaleRoPE3D`` (Eq. 1: cell centres scaled by
    ``range_factor / sqrt(h w)``, so a square grid spans [0, range_factor] whatever its side). With
    q = dim // 4 frequencies f_i geometric from pi (half a turn per unit: neighbouring cells of a
    grid of side ``range_factor`` get opposite signs) down to pi / (2 range_factor) (a quarter turn
    across the picture), a token at (row r, col c) gets ``[cos(r f), sin(r f), cos(c f), sin(c f)]``
    (zero columns pad dim to a multiple of 4). Text rows are zero.

    Why: RoPE gives attention only relative offsets, and next-scale inputs are up-sampled from a
    coarser grid, so neighbouring cells of a step start from near-identical vectors; a small decoder
    then cannot tell them apart (ShapeWorld: trained on 16 images, top-1 on their 2x2 step stays at
    0.5, where every cell's input is the one 1x1 code). Parameter-free like ``ScaleLengthEmbedding``:
    the model owns the learned projection.
    """

    def __init__(self, dim: int, range_factor: float) -> None:
        super().__init__()
        self.dim = _check_count("GridPositionEmbedding", "dim", dim)
        self.range_factor = _check_above("GridPositionEmbedding", "range_factor", range_factor, 0,
                                         "16.0: the RoPE range C, the final grid side")
        self.register_buffer("carrier", torch.zeros(()), persistent=False)

    @classmethod
    def examples(cls) -> list[GridPositionEmbedding]:
        return [cls(dim=16, range_factor=4.0), cls(dim=7, range_factor=16.0)]

    def frequencies(self) -> Tensor:
        """[dim // 4] fp32 angular frequencies, pi down to pi / (2 range_factor)."""
        low = math.log(math.pi / (2 * self.range_factor))
        return torch.exp(torch.linspace(math.log(math.pi), low, self.dim // 4))

    def encode(self, coordinates: Tensor) -> Float[Tensor, "tokens dim"]:
        """The sinusoid of (row, col) ``coordinates`` [tokens, 2] in fp32."""
        freqs = self.frequencies().to(coordinates.device)
        rows = coordinates[:, :1].to(torch.float32) * freqs
        cols = coordinates[:, 1:].to(torch.float32) * freqs
        out = torch.cat([rows.cos(), rows.sin(), cols.cos(), cols.sin()], dim=-1)
        return F.pad(out, (0, self.dim - out.shape[-1]))

    @typecheck
    def forward(self, layout: SequenceLayout) -> Float[Tensor, "seq dim"]:
        _check_layout("GridPositionEmbedding", layout)
        device = self.carrier.device
        parts = []
        for seg in layout.segments:
            if isinstance(seg, TextSpan):
                parts.append(torch.zeros(seg.length, self.dim, device=device))
            else:
                where = image_coordinates(_steps(seg), self.range_factor)[:, 1:].to(device)
                parts.append(self.encode(where))
        return torch.cat(parts).to(self.carrier.dtype)


class LearnedAbsolutePosition(nn.Module, AdditivePositionalEncoder):
    """VAR's learned absolute position of every token of an image, plus its level embedding.

    Parameters keep VAR's names so VAR checkpoints map one to one: ``pos_1LC`` [1, L, dim] (one
    vector per token of the flattened schedule) and ``lvl_embed`` = ``nn.Embedding(K, dim)``
    (``lvl_embed.weight`` [K, dim]). Both start as VAR initialises them: ``trunc_normal_`` with
    std sqrt(1 / (3 dim)) and torch's default cut at +-2 (absolute, so in effect a plain normal).
    Every image of a layout must use the construction schedule (anything else
    has no learned position); text rows are zero.
    """

    def __init__(self, schedule: ScaleSchedule, dim: int) -> None:
        super().__init__()
        if not isinstance(schedule, ScaleSchedule):
            raise TypeError(
                f"LearnedAbsolutePosition: schedule must implement ScaleSchedule, got "
                f"{type(schedule).__name__}; build one with nxcore.schedule"
            )
        self.dim = _check_count("LearnedAbsolutePosition", "dim", dim)
        self.schedule = schedule
        self.steps = tuple(tuple(s) for s in schedule.steps)
        length = sum(h * w for h, w in self.steps)
        std = math.sqrt(1.0 / (3.0 * dim))
        self.pos_1LC = nn.Parameter(torch.empty(1, length, dim))
        self.lvl_embed = nn.Embedding(len(self.steps), dim)
        nn.init.trunc_normal_(self.pos_1LC, mean=0.0, std=std)
        nn.init.trunc_normal_(self.lvl_embed.weight, mean=0.0, std=std)
        scale_of_token = torch.repeat_interleave(
            torch.arange(len(self.steps)), torch.tensor([h * w for h, w in self.steps])
        )
        self.register_buffer("lvl_1L", scale_of_token[None], persistent=False)

    @classmethod
    def examples(cls) -> list[LearnedAbsolutePosition]:
        from nxcore.schedule import Schedule

        return [
            cls(Schedule(steps=((1, 1), (2, 2), (3, 3))), dim=8),
            cls(Schedule(steps=((1, 2), (2, 3))), dim=5),
        ]

    def example_layout(self) -> SequenceLayout:
        """Text, an image of the construction schedule, text: a layout this encoder accepts."""
        return SequenceLayout.of(TextSpan(3), DiscreteImage(self.schedule), TextSpan(2))

    def image_vectors(self) -> Float[Tensor, "tokens dim"]:
        """pos_1LC + lvl_embed(scale of each token): the vectors of one image, [L, dim]."""
        return self.pos_1LC[0] + self.lvl_embed(self.lvl_1L[0])

    @typecheck
    def forward(self, layout: SequenceLayout) -> Float[Tensor, "seq dim"]:
        _check_layout("LearnedAbsolutePosition", layout)
        weight = self.pos_1LC
        image = None
        parts = []
        for seg in layout.segments:
            if isinstance(seg, TextSpan):
                parts.append(weight.new_zeros(seg.length, self.dim))
                continue
            steps = _steps(seg)
            if steps != self.steps:
                raise ValueError(
                    f"the layout has an image with steps {steps} but LearnedAbsolutePosition was "
                    f"built for steps {self.steps}; it has learned positions for that schedule "
                    "only: build one per schedule, or use a relative encoder (MultiscaleRoPE3D)"
                )
            image = self.image_vectors() if image is None else image
            parts.append(image)
        return torch.cat(parts)
