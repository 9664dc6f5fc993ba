"""``SequenceLayout``: where every text token, image and scale sits in an interleaved sequence.

The single source of truth for positions, attention masks and loss weights. A layout is a tuple of
segments, each a ``TextSpan`` (causal text), a ``DiscreteImage`` (all steps of a scale schedule,
block-causal: a token sees every earlier token and the whole of its own scale) or a
``ContinuousImage`` (a grid of continuous tokens in raster order, causal as NextStep-1 is).

Shape legend: seq = total tokens of the layout, blocks = attention blocks (see ``AttentionBlocks``).

Per-token fields (``SequenceLayout.tokens()``), all int64 of shape [seq]:
    modality      0 text, 1 image (``Modality``)
    image_index   which image (0, 1, ...) the token belongs to; -1 for text
    scale_index   step of the schedule (0 = coarsest); 0 for continuous images; -1 for text
    grid_i/j      row/column inside the token's scale grid; -1 for text
    grid_h/w      size of that scale grid; 0 for text
    text_index    for text: how many text tokens precede it; for image tokens: how many text tokens
                  precede the image (the index the next text token will get)
    position      0 .. seq-1
"""

from __future__ import annotations

import enum

import attrs
import torch
from torch import Tensor

from nxcore.schedule.protocol import ScaleSchedule
from nxcore.typing import Bool, Float, Int, typecheck

__all__ = [
    "AttentionBlocks",
    "ContinuousImage",
    "DiscreteImage",
    "ImageSpan",
    "Modality",
    "SequenceLayout",
    "TextSpan",
    "TokenTable",
    "scale_weights",
]


class Modality(enum.IntEnum):
    TEXT = 0
    IMAGE = 1


def _at_least_one(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"{type(instance).__name__}.{attribute.name} must be an int >= 1, got {value!r}; "
            "omit an empty segment instead"
        )


def _is_schedule(instance, attribute, value) -> None:
    if not isinstance(value, ScaleSchedule):
        raise TypeError(
            f"DiscreteImage.schedule must implement ScaleSchedule, got {type(value).__name__}; "
            "build one with nxcore.schedule (e.g. derived_schedule((8, 8), 5))"
        )


@attrs.frozen
class TextSpan:
    """``length`` causal text tokens."""

    length: int = attrs.field(validator=_at_least_one)


@attrs.frozen
class DiscreteImage:
    """Every step of ``schedule`` as tokens, block-causal across steps."""

    schedule: ScaleSchedule = attrs.field(validator=_is_schedule)


@attrs.frozen
class ContinuousImage:
    """An ``h`` x ``w`` grid of continuous tokens in raster order, causal."""

    h: int = attrs.field(validator=_at_least_one)
    w: int = attrs.field(validator=_at_least_one)


Segment = TextSpan | DiscreteImage | ContinuousImage


@attrs.frozen
class ImageSpan:
    """Image ``index`` occupies tokens [start, end) of the sequence."""

    index: int
    start: int
    end: int
    segment: DiscreteImage | ContinuousImage

    @property
    def steps(self) -> tuple[tuple[int, int], ...]:
        seg = self.segment
        return seg.schedule.steps if isinstance(seg, DiscreteImage) else ((seg.h, seg.w),)


@attrs.frozen
class TokenTable:
    modality: Int[Tensor, " seq"]
    image_index: Int[Tensor, " seq"]
    scale_index: Int[Tensor, " seq"]
    grid_i: Int[Tensor, " seq"]
    grid_j: Int[Tensor, " seq"]
    grid_h: Int[Tensor, " seq"]
    grid_w: Int[Tensor, " seq"]
    text_index: Int[Tensor, " seq"]
    position: Int[Tensor, " seq"]

    def to(self, device: torch.device | str) -> TokenTable:
        return TokenTable(**{f.name: getattr(self, f.name).to(device) for f in attrs.fields(TokenTable)})


@attrs.frozen
class AttentionBlocks:
    """Compact mask description: blocks tile the sequence in order.

    A query in block b sees every key of blocks before b, and inside b either every key
    (``causal[b]`` False: one scale of a discrete image) or the keys up to itself (``causal[b]``
    True: text, continuous image tokens). Equivalent to ``kv_end``: query q sees keys [0, kv_end[q]).
    """

    starts: Int[Tensor, " blocks"]
    ends: Int[Tensor, " blocks"]
    causal: Bool[Tensor, " blocks"]

    @property
    def num_blocks(self) -> int:
        return int(self.starts.numel())


def scale_weights(steps: tuple[tuple[int, int], ...], alpha: float) -> Float[Tensor, " tokens"]:
    """Per-token weights k_s = (h_s w_s)^-alpha (NextFlow Eq. 2) over one image's steps.

    Normalised so the image's total weight equals its token count: reweighting moves loss between
    scales and leaves the total vision loss unchanged. ``alpha = 0`` gives uniform weights.
    """
    counts = torch.tensor([h * w for h, w in steps], dtype=torch.float64)
    per_scale = counts.pow(-float(alpha))
    per_token = per_scale.repeat_interleave(counts.long())
    return (per_token * (counts.sum() / per_token.sum())).to(torch.float32)


@attrs.frozen
class SequenceLayout:
    segments: tuple[Segment, ...] = attrs.field(converter=tuple)

    @segments.validator
    def _check(self, attribute, value) -> None:
        if not value:
            raise ValueError("SequenceLayout needs at least one segment, got none")
        for i, seg in enumerate(value):
            if not isinstance(seg, TextSpan | DiscreteImage | ContinuousImage):
                raise TypeError(
                    f"segments[{i}] must be TextSpan, DiscreteImage or ContinuousImage, "
                    f"got {type(seg).__name__}"
                )

    @classmethod
    def of(cls, *segments: Segment) -> SequenceLayout:
        return cls(segments)

    @property
    def length(self) -> int:
        return sum(_segment_length(s) for s in self.segments)

    @property
    def images(self) -> tuple[ImageSpan, ...]:
        return _images(self)

    @property
    def num_text_tokens(self) -> int:
        return sum(s.length for s in self.segments if isinstance(s, TextSpan))

    def tokens(self, device: torch.device | str = "cpu") -> TokenTable:
        return _token_table(self).to(device)

    def attention_blocks(self, device: torch.device | str = "cpu") -> AttentionBlocks:
        starts, ends, causal = _blocks(self)
        return AttentionBlocks(
            starts=torch.tensor(starts, dtype=torch.int64, device=device),
            ends=torch.tensor(ends, dtype=torch.int64, device=device),
            causal=torch.tensor(causal, dtype=torch.bool, device=device),
        )

    @typecheck
    def kv_end(self, device: torch.device | str = "cpu") -> Int[Tensor, " seq"]:
        """Query q may attend to keys [0, kv_end[q]): O(seq) instead of an L x L mask."""
        starts, ends, causal = _blocks(self)
        parts = []
        for s, e, c in zip(starts, ends, causal, strict=True):
            parts.append(torch.arange(s + 1, e + 1) if c else torch.full((e - s,), e))
        return torch.cat(parts).to(device)

    @typecheck
    def attention_mask(self, device: torch.device | str = "cpu") -> Bool[Tensor, "seq seq"]:
        """Dense boolean mask, True where query (row) may attend to key (column)."""
        kv_end = self.kv_end(device)
        keys = torch.arange(self.length, device=device)
        return keys[None, :] < kv_end[:, None]

    @typecheck
    def loss_weights(
        self, *, alpha: float = 0.9, text_weight: float = 1.0, device: torch.device | str = "cpu"
    ) -> Float[Tensor, " seq"]:
        """Weight of the loss on each token as a target.

        Text tokens get ``text_weight``; the tokens of a discrete image get the scale weights of
        ``scale_weights(schedule.steps, alpha)`` (alpha = 0.9 is the paper's default); continuous
        image tokens get 1.
        """
        if not (alpha >= 0):
            raise ValueError(f"alpha must be >= 0 (0 = uniform, paper: 0.9), got {alpha!r}")
        parts = []
        for seg in self.segments:
            if isinstance(seg, TextSpan):
                parts.append(torch.full((seg.length,), float(text_weight)))
            elif isinstance(seg, DiscreteImage):
                parts.append(scale_weights(seg.schedule.steps, alpha))
            else:
                parts.append(torch.ones(seg.h * seg.w))
        return torch.cat(parts).to(device=device, dtype=torch.float32)


def _segment_length(seg: Segment) -> int:
    if isinstance(seg, TextSpan):
        return seg.length
    if isinstance(seg, DiscreteImage):
        return seg.schedule.total_tokens
    return seg.h * seg.w


def _images(layout: SequenceLayout) -> tuple[ImageSpan, ...]:
    spans, start = [], 0
    for seg in layout.segments:
        n = _segment_length(seg)
        if not isinstance(seg, TextSpan):
            spans.append(ImageSpan(index=len(spans), start=start, end=start + n, segment=seg))
        start += n
    return tuple(spans)


def _blocks(layout: SequenceLayout) -> tuple[list[int], list[int], list[bool]]:
    starts: list[int] = []
    ends: list[int] = []
    causal: list[bool] = []

    def add(start: int, end: int, is_causal: bool) -> None:
        if is_causal and causal and causal[-1]:
            ends[-1] = end  # merge adjacent causal runs: the mask is the same
            return
        starts.append(start)
        ends.append(end)
        causal.append(is_causal)

    pos = 0
    for seg in layout.segments:
        if isinstance(seg, DiscreteImage):
            for count in seg.schedule.token_counts:
                add(pos, pos + count, False)
                pos += count
        else:
            n = _segment_length(seg)
            add(pos, pos + n, True)
            pos += n
    return starts, ends, causal


def _token_table(layout: SequenceLayout) -> TokenTable:
    cols: dict[str, list[Tensor]] = {f.name: [] for f in attrs.fields(TokenTable)}

    def push(n: int, **values: Tensor | int) -> None:
        for name in cols:
            if name == "position":
                continue
            v = values[name]
            cols[name].append(v if isinstance(v, Tensor) else torch.full((n,), v, dtype=torch.int64))

    text_seen, image_index = 0, 0
    for seg in layout.segments:
        if isinstance(seg, TextSpan):
            n = seg.length
            push(n, modality=int(Modality.TEXT), image_index=-1, scale_index=-1, grid_i=-1,
                 grid_j=-1, grid_h=0, grid_w=0,
                 text_index=torch.arange(text_seen, text_seen + n))
            text_seen += n
            continue
        steps = seg.schedule.steps if isinstance(seg, DiscreteImage) else ((seg.h, seg.w),)
        for s, (h, w) in enumerate(steps):
            n = h * w
            idx = torch.arange(n)
            push(n, modality=int(Modality.IMAGE), image_index=image_index, scale_index=s,
                 grid_i=idx // w, grid_j=idx % w, grid_h=h, grid_w=w, text_index=text_seen)
        image_index += 1
    table = {name: torch.cat(parts) for name, parts in cols.items() if name != "position"}
    table["position"] = torch.arange(layout.length)
    return TokenTable(**table)
