"""``PackedLayout``: several samples (each a ``SequenceLayout``) packed into one row.

Packing puts the tokens of several independent samples one after another in one sequence, so that
no compute is spent on padding (NextFlow §4, Table 3). Attention stays inside each sample: a query
sees only keys of its own sample, and inside it exactly what that sample's ``SequenceLayout``
allows (causal text, block-causal scales, causal continuous tokens)::

    row = PackedLayout((layout_a, layout_b)).pad_to(4096)
    row.kv_start(), row.kv_end()      # query q sees keys [kv_start[q], kv_end[q])
    row.attention_blocks()            # compact form for a fused kernel
    row.loss_weights()                # per-sample weights, 0 on padding

Padding: ``pad_to(length)`` appends padding tokens after the last sample. A padding token sees
only padding keys, causally (keys from the first padding token up to itself), so it never attends
to a real token, no real token attends to it, and no attention row is empty (no NaN from a softmax
over nothing); its loss weight is 0 and its ``document`` id is -1. To a varlen kernel the padding is
one more (trailing, causal) document: ``cu_seqlens()`` lists it as such.

Shape legend: seq = ``length`` (samples + padding); blocks = attention blocks; docs = samples
(+ 1 when padded).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import attrs
import torch
from torch import Tensor

from nxcore.layout import SequenceLayout
from nxcore.typing import Bool, Float, Int, typecheck

__all__ = ["PackedAttentionBlocks", "PackedLayout"]

PADDING_DOCUMENT = -1
"""``document`` id of padding tokens."""


def _to_layouts(value: object) -> tuple[SequenceLayout, ...]:
    if isinstance(value, SequenceLayout):
        raise TypeError(
            "layouts must be a sequence of SequenceLayout, got a single SequenceLayout; "
            "wrap it: PackedLayout((layout,))"
        )
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"layouts must be a sequence of SequenceLayout, got {type(value).__name__} {value!r}"
        )
    layouts = tuple(value)
    if not layouts:
        raise ValueError(
            "layouts must hold at least one SequenceLayout, got none; a row of only padding is "
            "not a packed row"
        )
    for i, layout in enumerate(layouts):
        if not isinstance(layout, SequenceLayout):
            raise TypeError(
                f"layouts[{i}] must be a SequenceLayout, got {type(layout).__name__} {layout!r}"
            )
    return layouts


def _check_padding(instance: PackedLayout, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"padding must be an int >= 0, got {value!r}; build padded rows with pad_to(length)")


@attrs.frozen
class PackedAttentionBlocks:
    """Compact mask of a packed row: blocks tile the row in order.

    A query in block ``b`` sees the keys [``kv_starts[b]``, ``starts[b]``) (everything earlier in
    its own sample: ``kv_starts[b]`` is where its document begins), and inside block ``b`` either
    every key (``causal[b]`` False: one scale of a discrete image) or the keys up to itself
    (``causal[b]`` True: text, continuous image tokens, padding). ``document[b]`` is the sample the
    block belongs to (-1 for padding). These are each sample's ``SequenceLayout.attention_blocks()``
    shifted by its offset, plus the document boundaries; causal blocks are never merged across
    documents.
    """

    starts: Int[Tensor, " blocks"]
    ends: Int[Tensor, " blocks"]
    causal: Bool[Tensor, " blocks"]
    kv_starts: Int[Tensor, " blocks"]
    document: Int[Tensor, " blocks"]

    @property
    def num_blocks(self) -> int:
        return int(self.starts.numel())


@attrs.frozen
class PackedLayout:
    """Samples ``layouts`` one after another, then ``padding`` padding tokens.

    ``offsets[i]`` is where sample ``i`` starts; ``lengths[i]`` its token count. Build a padded
    row with ``pad_to(length)`` rather than passing ``padding`` by hand.
    """

    layouts: tuple[SequenceLayout, ...] = attrs.field(converter=_to_layouts)
    padding: int = attrs.field(default=0, validator=_check_padding)
    lengths: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)
    offsets: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        lengths = tuple(layout.length for layout in self.layouts)
        offsets, pos = [], 0
        for n in lengths:
            offsets.append(pos)
            pos += n
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "offsets", tuple(offsets))

    @classmethod
    def of(cls, *layouts: SequenceLayout) -> PackedLayout:
        return cls(layouts)

    @property
    def num_samples(self) -> int:
        return len(self.layouts)

    @property
    def content_length(self) -> int:
        """Tokens of the samples (the row without its padding)."""
        return sum(self.lengths)

    @property
    def length(self) -> int:
        return self.content_length + self.padding

    def pad_to(self, length: int) -> PackedLayout:
        """The same samples padded to ``length`` tokens (``length >= content_length``)."""
        if isinstance(length, bool) or not isinstance(length, numbers.Integral):
            raise TypeError(f"length must be an int, got {type(length).__name__} {length!r}")
        if length < self.content_length:
            raise ValueError(
                f"length={length} is shorter than the {self.content_length} tokens of the packed "
                f"samples; pass length >= {self.content_length} or pack fewer samples"
            )
        return PackedLayout(self.layouts, padding=int(length) - self.content_length)

    def _spans(self) -> list[tuple[int, int, int]]:
        """(document, start, end) of every sample, then of the padding when there is some."""
        spans = [(i, o, o + n) for i, (o, n) in enumerate(zip(self.offsets, self.lengths, strict=True))]
        if self.padding:
            spans.append((PADDING_DOCUMENT, self.content_length, self.length))
        return spans

    @typecheck
    def document(self, device: torch.device | str = "cpu") -> Int[Tensor, " seq"]:
        """Per token: index of its sample, -1 for padding."""
        ids = torch.arange(self.num_samples).repeat_interleave(torch.tensor(self.lengths))
        pad = torch.full((self.padding,), PADDING_DOCUMENT, dtype=torch.int64)
        return torch.cat([ids, pad]).to(device)

    @typecheck
    def cu_seqlens(self, device: torch.device | str = "cpu") -> Int[Tensor, " docs_plus_one"]:
        """Document boundaries in the varlen-kernel convention: [0, end_0, end_1, ..., length].

        The padding, when present, is the last document. int32, as flash-attention expects.
        """
        bounds = [0] + [end for _, _, end in self._spans()]
        return torch.tensor(bounds, dtype=torch.int32, device=device)

    @typecheck
    def kv_start(self, device: torch.device | str = "cpu") -> Int[Tensor, " seq"]:
        """Query q may attend to no key before ``kv_start[q]``: the first token of its sample."""
        parts = [torch.full((end - start,), start, dtype=torch.int64) for _, start, end in self._spans()]
        return torch.cat(parts).to(device)

    @typecheck
    def kv_end(self, device: torch.device | str = "cpu") -> Int[Tensor, " seq"]:
        """Query q may attend to keys [kv_start[q], kv_end[q]): its sample's ``kv_end`` shifted."""
        parts = [layout.kv_end() + o for layout, o in zip(self.layouts, self.offsets, strict=True)]
        if self.padding:
            parts.append(torch.arange(self.content_length + 1, self.length + 1))
        return torch.cat(parts).to(device)

    @typecheck
    def attention_mask(self, device: torch.device | str = "cpu") -> Bool[Tensor, "seq seq"]:
        """Dense boolean mask, True where query (row) may attend to key (column). O(seq^2): for
        tests and reference paths; kernels use ``attention_blocks()`` or ``kv_start``/``kv_end``."""
        keys = torch.arange(self.length, device=device)[None, :]
        return (keys >= self.kv_start(device)[:, None]) & (keys < self.kv_end(device)[:, None])

    def attention_blocks(self, device: torch.device | str = "cpu") -> PackedAttentionBlocks:
        starts: list[Tensor] = []
        ends: list[Tensor] = []
        causal: list[Tensor] = []
        kv_starts: list[Tensor] = []
        document: list[Tensor] = []
        for i, (layout, o) in enumerate(zip(self.layouts, self.offsets, strict=True)):
            blocks = layout.attention_blocks()
            starts.append(blocks.starts + o)
            ends.append(blocks.ends + o)
            causal.append(blocks.causal)
            kv_starts.append(torch.full((blocks.num_blocks,), o, dtype=torch.int64))
            document.append(torch.full((blocks.num_blocks,), i, dtype=torch.int64))
        if self.padding:
            starts.append(torch.tensor([self.content_length]))
            ends.append(torch.tensor([self.length]))
            causal.append(torch.tensor([True]))
            kv_starts.append(torch.tensor([self.content_length]))
            document.append(torch.tensor([PADDING_DOCUMENT]))
        return PackedAttentionBlocks(
            starts=torch.cat(starts).to(device),
            ends=torch.cat(ends).to(device),
            causal=torch.cat(causal).to(device),
            kv_starts=torch.cat(kv_starts).to(device),
            document=torch.cat(document).to(device),
        )

    @typecheck
    def loss_weights(
        self, *, alpha: float = 0.9, text_weight: float = 1.0, device: torch.device | str = "cpu"
    ) -> Float[Tensor, " seq"]:
        """Each sample's ``SequenceLayout.loss_weights`` one after another; 0 on padding."""
        parts = [
            layout.loss_weights(alpha=alpha, text_weight=text_weight) for layout in self.layouts
        ]
        parts.append(torch.zeros(self.padding))
        return torch.cat(parts).to(device=device, dtype=torch.float32)
