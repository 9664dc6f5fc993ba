"""``ScaleBlocks``: the block-causal pattern of a next-scale sequence as plain Python ints.

Blocks tile the sequence ``[0, seq)`` in order. A query in block ``b`` sees every key of the blocks
before ``b``, and inside ``b`` either every key (``causal[b]`` False: one scale of a discrete image)
or the keys up to itself (``causal[b]`` True: text, continuous image tokens). Equivalently query
``i`` sees the keys ``[0, kv_end[i])``; ``kv_end`` never decreases along the sequence.

This is the contract of ``nxcore.layout.AttentionBlocks`` (int/bool tensors), held as tuples so it
is hashable (masks and plans are cached per schedule) and so ``torch.compile`` specialises on it as
a constant instead of breaking the graph on ``.tolist()``. nxkernels does not import nxcore:
``ScaleBlocks.of(layout.attention_blocks())`` converts anything with ``.starts``/``.ends``/``.causal``.

The split plan (``ScaleBlocks.plan``) is computed once per instance: the rows of the sequence cut into
chunks, each run as one SDPA call over a key prefix. A non-causal block is one unmasked chunk (exact
work ``len * end``); a causal block is cut into pieces of ``CAUSAL_CHUNK`` rows with a small
bottom-right mask (waste about ``CAUSAL_CHUNK / 2`` keys per row); runs of tiny blocks (the 1x1, 2x2,
... scales) merge into one masked chunk while the extra work stays under ``MERGE_WASTE`` scores, to
save per-call overhead. The largest mask is ``chunk rows x kv`` with at most ``MAX_MERGED_ROWS``
rows: never ``seq x seq`` once ``seq`` exceeds that.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["CAUSAL_CHUNK", "MAX_MERGED_ROWS", "MERGE_WASTE", "Chunk", "ScaleBlocks"]

CAUSAL_CHUNK = 128
"""Rows per SDPA call inside a causal block (bounds its mask to 128 x kv and the waste to ~64 keys/row)."""
MERGE_WASTE = 4096
"""Extra (query, key) scores a merge of adjacent small pieces may add: about one call's overhead."""
MAX_MERGED_ROWS = 256
"""A merged chunk never exceeds this many rows (bounds its mask to 256 x kv)."""


@dataclass(frozen=True)
class Chunk:
    """Rows ``[q0, q1)`` attend to keys ``[0, kv)``; ``pieces`` says which keys each row sees.

    ``pieces`` is ``((lo, hi, causal, end), ...)`` covering ``[q0, q1)``: rows ``lo..hi-1`` see keys
    ``[0, i + 1)`` when ``causal`` else ``[0, end)``. ``masked`` is False when every row sees all of
    ``[0, kv)`` (then SDPA runs without a mask).
    """

    q0: int
    q1: int
    kv: int
    masked: bool
    pieces: tuple[tuple[int, int, bool, int], ...]

    def kv_end(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[q1 - q0]`` int64: row ``i`` of the chunk sees keys ``[0, kv_end[i])``."""
        parts = [
            torch.arange(lo + 1, hi + 1, device=device) if causal
            else torch.full((hi - lo,), end, dtype=torch.int64, device=device)
            for lo, hi, causal, end in self.pieces
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[q1 - q0, kv]`` bool, True where the row may attend (bottom-right causal for text)."""
        keys = torch.arange(self.kv, device=device)
        return keys[None, :] < self.kv_end(device)[:, None]


def _pieces(starts, ends, causal) -> list[tuple[int, int, bool, int]]:
    out = []
    for s, e, c in zip(starts, ends, causal, strict=True):
        if not c:
            out.append((s, e, False, e))
            continue
        for lo in range(s, e, CAUSAL_CHUNK):
            out.append((lo, min(lo + CAUSAL_CHUNK, e), True, min(lo + CAUSAL_CHUNK, e)))
    return out


def _chunk(pieces: list[tuple[int, int, bool, int]]) -> Chunk:
    q0, q1, kv = pieces[0][0], pieces[-1][1], pieces[-1][3]
    # unmasked iff every row sees exactly [0, kv): one non-causal piece, or a single causal row
    masked = not (len(pieces) == 1 and (not pieces[0][2] or q1 - q0 == 1))
    return Chunk(q0, q1, kv, masked, tuple(pieces))


def _plan(starts, ends, causal) -> tuple[Chunk, ...]:
    chunks: list[Chunk] = []
    pending: list[tuple[int, int, bool, int]] = []
    for piece in _pieces(starts, ends, causal):
        if pending:
            rows = pending[-1][1] - pending[0][0]
            waste = rows * (piece[3] - pending[-1][3])  # earlier rows now also score the new keys
            if waste <= MERGE_WASTE and rows + piece[1] - piece[0] <= MAX_MERGED_ROWS:
                pending.append(piece)
                continue
            chunks.append(_chunk(pending))
        pending = [piece]
    chunks.append(_chunk(pending))
    return tuple(chunks)


def _as_tuple(name: str, value, kind: type) -> tuple:
    if isinstance(value, torch.Tensor):
        if value.ndim != 1:
            raise ValueError(f"blocks.{name} must be 1-D, got shape {tuple(value.shape)}")
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"blocks.{name} must be a 1-D tensor or a sequence, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if kind is bool:
            if not hasattr(item, "__index__") or operator.index(item) not in (0, 1):
                raise TypeError(f"blocks.{name}[{i}] must be a bool, got {item!r}")
            out.append(bool(item))
        else:
            if isinstance(item, bool) or not hasattr(item, "__index__"):
                raise TypeError(f"blocks.{name}[{i}] must be an int, got {item!r}")
            out.append(operator.index(item))
    return tuple(out)


@dataclass(frozen=True)
class ScaleBlocks:
    """Blocks ``[starts[b], ends[b])`` tiling ``[0, length)`` in order; ``causal[b]`` as above.

    Build with ``ScaleBlocks(starts, ends, causal)`` (tuples of ints/bools), ``ScaleBlocks.of(obj)``
    (anything with ``.starts``/``.ends``/``.causal``, e.g. ``nxcore``'s ``AttentionBlocks``), or
    ``ScaleBlocks.from_lengths(lengths, causal)``.
    """

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    causal: tuple[bool, ...]
    plan: tuple[Chunk, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        starts = _as_tuple("starts", self.starts, int)
        ends = _as_tuple("ends", self.ends, int)
        causal = _as_tuple("causal", self.causal, bool)
        if not starts:
            raise ValueError("blocks must hold at least one block, got none; a sequence of L tokens is "
                             "at least ScaleBlocks.from_lengths([L], [False])")
        if not len(starts) == len(ends) == len(causal):
            raise ValueError(
                f"blocks.starts, .ends and .causal must have one entry per block, got lengths "
                f"{len(starts)}, {len(ends)}, {len(causal)}"
            )
        if starts[0] != 0:
            raise ValueError(f"blocks must tile [0, seq) from 0, but blocks.starts[0] = {starts[0]}")
        for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
            if e <= s:
                raise ValueError(
                    f"block {b} is [{s}, {e}): every block needs ends > starts (drop empty blocks)"
                )
            if b and s != ends[b - 1]:
                raise ValueError(
                    f"blocks must tile the sequence in order, but block {b} starts at {s} and block {b - 1} "
                    f"ends at {ends[b - 1]}; use starts[b] == ends[b - 1]"
                )
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "ends", ends)
        object.__setattr__(self, "causal", causal)
        object.__setattr__(self, "plan", _plan(starts, ends, causal))

    @classmethod
    def of(cls, blocks) -> ScaleBlocks:
        """``blocks`` itself if a ``ScaleBlocks``; else read ``.starts``, ``.ends``, ``.causal``."""
        if isinstance(blocks, ScaleBlocks):
            return blocks
        if torch.compiler.is_compiling():
            raise TypeError(
                f"blocks is a {type(blocks).__name__}, which torch.compile cannot read without a graph "
                "break; convert it once outside the compiled function with ScaleBlocks.of(blocks)"
            )
        missing = [a for a in ("starts", "ends", "causal") if not hasattr(blocks, a)]
        if missing:
            raise TypeError(
                f"blocks must be a ScaleBlocks or have .starts, .ends and .causal (like "
                f"nxcore.layout.AttentionBlocks); {type(blocks).__name__} lacks {', '.join(missing)}"
            )
        return cls(blocks.starts, blocks.ends, blocks.causal)

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], causal: Sequence[bool] | bool = False) -> ScaleBlocks:
        """Consecutive blocks of the given lengths; ``causal`` per block or one value for all."""
        lengths = list(lengths)
        flags = [bool(causal)] * len(lengths) if isinstance(causal, bool) else list(causal)
        starts, pos = [], 0
        for n in lengths:
            starts.append(pos)
            pos += n
        return cls(tuple(starts), tuple(s + n for s, n in zip(starts, lengths, strict=True)), tuple(flags))

    @property
    def length(self) -> int:
        """Tokens covered: ``ends[-1]``."""
        return self.ends[-1]

    @property
    def num_blocks(self) -> int:
        return len(self.starts)

    def kv_end(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[seq]`` int64: query ``i`` may attend to keys ``[0, kv_end[i])``."""
        parts = [
            torch.arange(s + 1, e + 1, device=device) if c
            else torch.full((e - s,), e, dtype=torch.int64, device=device)
            for s, e, c in zip(self.starts, self.ends, self.causal, strict=True)
        ]
        return torch.cat(parts)

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense ``[seq, seq]`` bool mask, True where query (row) may attend to key (column)."""
        keys = torch.arange(self.length, device=device)
        return keys[None, :] < self.kv_end(device)[:, None]
