"""Interleaved examples and the padded batches the NextFlow model reads.

Shape legend: batch = rows, seq = tokens of the longest row, images = images of one schedule across
the batch, h, w = the grid of one step.

An ``Example`` is a sequence of parts: ``Text`` (token ids of the unified vocabulary) and
``Image`` (the code grids of every step of its schedule). In a row an image becomes

    ... text | <boi> x (h_0 w_0) | inputs of step 1 | ... | inputs of step K-1 | <eoi> | text ...
              ^ step 0            ^ the next-scale inputs of step 0's codes

The first step's positions carry the ``<boi>`` embedding (for NextFlow's 1x1 first step that is the
single ``<boi>`` token); the positions of step k >= 1 carry the next-scale inputs made from step
k-1's *input* codes, and every image position is trained to predict its own step's *target* code
(the clean top-1 when the inputs are self-corrected). The token before an image predicts
``<boi>`` (so a model learns when to start an image); ``<eoi>`` follows the last step without being
predicted: the schedule fixes where an image ends, so the sampler writes it.

A part with ``loss=False`` is context only (a prompt, the source image of an edit): its tokens are
not targets. Text tokens weigh ``text_weight``, image tokens the scale weights k_s =
(h_s w_s)^-alpha of Eq. 2, normalised so an image's total weight equals its token count.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from nxcore.head import IGNORE_INDEX
from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan, scale_weights
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer import Vocabulary

__all__ = ["Batch", "Example", "Image", "ImageGroup", "Text", "collate"]


def _ids(value: object) -> tuple[int, ...]:
    if isinstance(value, Tensor):
        value = value.tolist()
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


@attrs.frozen
class Text:
    """Token ids of the unified vocabulary (text ids and specials)."""

    ids: tuple[int, ...] = attrs.field(converter=_ids)
    loss: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.ids:
            raise ValueError("Text.ids is empty; leave the part out instead")


@attrs.frozen(eq=False)
class Image:
    """One image: ``inputs`` and ``targets`` are int64 [h_k, w_k] code grids per step of
    ``schedule`` (equal unless the inputs are self-corrected)."""

    schedule: ScaleSchedule
    inputs: tuple[Tensor, ...] = attrs.field(converter=tuple)
    targets: tuple[Tensor, ...] = attrs.field(converter=tuple)
    loss: bool = True

    def __attrs_post_init__(self) -> None:
        steps = tuple(self.schedule.steps)
        for name in ("inputs", "targets"):
            grids = getattr(self, name)
            shapes = tuple(tuple(g.shape) for g in grids)
            if shapes != steps:
                raise ValueError(
                    f"Image.{name} has grids {list(shapes)} but the schedule's steps are {list(steps)}; "
                    "encode the image with the same schedule"
                )

    @classmethod
    def of(cls, codes: Sequence[Tensor], schedule: ScaleSchedule, *, loss: bool = True) -> Image:
        """An image whose inputs are its targets (no self-correction)."""
        return cls(schedule, tuple(codes), tuple(codes), loss)


Part = Text | Image


@attrs.frozen(eq=False)
class Example:
    parts: tuple[Part, ...] = attrs.field(default=(), converter=tuple)
    task: str = "t2i"


@attrs.frozen(eq=False)
class ImageGroup:
    """The images of one schedule across a batch: ``inputs[k]`` int64 [images, h_k, w_k]; image n
    sits in row ``rows[n]`` from sequence index ``starts[n]`` on."""

    schedule: ScaleSchedule
    inputs: tuple[Tensor, ...]
    rows: Tensor
    starts: Tensor

    def to(self, device: torch.device | str) -> ImageGroup:
        return ImageGroup(self.schedule, tuple(c.to(device) for c in self.inputs), self.rows.to(device),
                          self.starts.to(device))


@attrs.frozen(eq=False)
class Batch:
    """Right-padded rows: ``ids`` [batch, seq] (``<boi>`` on step-0 image positions, pad elsewhere in
    images and after the row's end), ``targets`` [batch, seq] (``IGNORE_INDEX`` where none),
    ``weights`` [batch, seq] float, one ``SequenceLayout`` per row, ``images`` grouped by schedule."""

    ids: Tensor
    targets: Tensor
    weights: Tensor
    layouts: tuple[SequenceLayout, ...]
    images: tuple[ImageGroup, ...]
    tasks: tuple[str, ...] = ()

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(layout.length for layout in self.layouts)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.ids.to(device), self.targets.to(device), self.weights.to(device), self.layouts,
                     tuple(g.to(device) for g in self.images), self.tasks)


@attrs.frozen(eq=False)
class _Row:
    ids: list[int]
    targets: list[int]
    weights: list[float]
    segments: list
    images: list[tuple[int, Image]]


def _encode(example: Example, vocab: Vocabulary, alpha: float, text_weight: float) -> _Row:
    """One row: ids, the target and weight of every position, the layout segments, the images."""
    if not isinstance(example, Example):
        raise TypeError(f"examples must hold Example objects, got {type(example).__name__}")
    boi, eoi, pad = vocab.special_id("<boi>"), vocab.special_id("<eoi>"), _pad_id(vocab)
    code0 = vocab.code_range[0]
    ids: list[int] = []
    as_next: list[int] = []        # what position i is as the target of position i - 1
    own: list[int | None] = []     # image positions: their own target (None for text positions)
    own_w: list[float] = []
    segments: list = []
    images: list[tuple[int, Image]] = []
    text_run = 0
    for part in example.parts:
        if isinstance(part, Text):
            ids.extend(part.ids)
            as_next.extend(part.ids if part.loss else [IGNORE_INDEX] * len(part.ids))
            own.extend([None] * len(part.ids))
            own_w.extend([0.0] * len(part.ids))
            text_run += len(part.ids)
            continue
        if not isinstance(part, Image):
            raise TypeError(f"Example.parts must hold Text or Image parts, got {type(part).__name__}")
        if text_run:
            segments.append(TextSpan(text_run))
        steps = tuple(part.schedule.steps)
        codes = (torch.cat([t.reshape(-1) for t in part.targets]) + code0).tolist()
        first = steps[0][0] * steps[0][1]
        images.append((len(ids), part))
        ids.extend([boi] * first + [pad] * (len(codes) - first))
        as_next.extend([boi if part.loss else IGNORE_INDEX] + [IGNORE_INDEX] * (len(codes) - 1))
        own.extend(codes if part.loss else [IGNORE_INDEX] * len(codes))
        own_w.extend(scale_weights(steps, alpha).tolist() if part.loss else [0.0] * len(codes))
        segments.append(DiscreteImage(part.schedule))
        ids.append(eoi)  # written by the sampler, never a target
        as_next.append(IGNORE_INDEX)
        own.append(None)
        own_w.append(0.0)
        text_run = 1
    if text_run:
        segments.append(TextSpan(text_run))
    if not ids:
        raise ValueError("the example has no tokens")
    targets: list[int] = []
    weights: list[float] = []
    for i in range(len(ids)):
        if own[i] is not None:
            targets.append(own[i])
            weights.append(own_w[i] if own[i] != IGNORE_INDEX else 0.0)
        else:
            nxt = as_next[i + 1] if i + 1 < len(ids) else IGNORE_INDEX
            targets.append(nxt)
            weights.append(text_weight if nxt != IGNORE_INDEX else 0.0)
    return _Row(ids, targets, weights, segments, images)


def _pad_id(vocab: Vocabulary) -> int:
    specials = vocab.special_tokens
    return specials.get("<pad>", 0)


def collate(
    examples: Sequence[Example], vocab: Vocabulary, *, alpha: float = 0.9, text_weight: float = 1.0,
) -> Batch:
    """Rows of ``examples``, right-padded to the longest (module docstring)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    if not (isinstance(alpha, int | float) and alpha >= 0):
        raise ValueError(f"alpha must be a number >= 0 (0: uniform, paper: 0.9), got {alpha!r}")
    rows = [_encode(e, vocab, float(alpha), float(text_weight)) for e in examples]
    seq = max(len(r.ids) for r in rows)
    pad = _pad_id(vocab)
    ids = torch.full((len(rows), seq), pad, dtype=torch.int64)
    targets = torch.full((len(rows), seq), IGNORE_INDEX, dtype=torch.int64)
    weights = torch.zeros(len(rows), seq)
    grouped: dict[tuple, list[tuple[int, int, Image]]] = {}
    schedules: dict[tuple, ScaleSchedule] = {}
    for b, row in enumerate(rows):
        n = len(row.ids)
        ids[b, :n] = torch.tensor(row.ids)
        targets[b, :n] = torch.tensor(row.targets)
        weights[b, :n] = torch.tensor(row.weights)
        for start, image in row.images:
            key = tuple(image.schedule.steps)
            schedules.setdefault(key, image.schedule)
            grouped.setdefault(key, []).append((b, start, image))
    groups = []
    for key, items in grouped.items():
        inputs = tuple(
            torch.stack([image.inputs[k] for _, _, image in items]).long() for k in range(len(key))
        )
        groups.append(ImageGroup(schedules[key], inputs, torch.tensor([b for b, _, _ in items]),
                                 torch.tensor([s for _, s, _ in items])))
    layouts = tuple(SequenceLayout(tuple(r.segments)) for r in rows)
    return Batch(ids, targets, weights, layouts, tuple(groups), tuple(e.task for e in examples))
