"""Discrete heads: ``LinearHead`` (one shared projection over the unified vocabulary, NextFlow's
choice) and ``SplitHead`` (one projection per vocabulary range with a softmax per range, the
separate-heads ablation).

Both losses run through ``nxkernels.linear_cross_entropy`` with the per-row weights as its
``token_weights``: the [tokens, vocab] logits are never materialised (the unified vocabulary of
NextFlow-7B is 152064 + codes wide)."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nxcore.checks import check_tensor
from nxcore.config import Config, config, positive
from nxcore.head.loss import check_weights
from nxcore.head.protocol import IGNORE_INDEX, DiscreteHead
from nxcore.typing import Float, Int, typecheck
from nxkernels.linear_cross_entropy import linear_cross_entropy

__all__ = ["LinearHead", "LinearHeadConfig", "SplitHead", "SplitHeadConfig"]


def check_range(head: DiscreteHead, start: object, stop: object) -> tuple[int, int]:
    """``(start, stop)`` as ints after checking ``0 <= start < stop <= head.vocab_size``."""
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int id, got {type(value).__name__} {value!r}")
    if not 0 <= start < stop <= head.vocab_size:
        raise ValueError(
            f"the id range [{start}, {stop}) is not a non-empty range inside [0, {head.vocab_size}); "
            "pass 0 <= start < stop <= vocab_size"
        )
    return start, stop


def _check_inputs(head: DiscreteHead, hidden: Tensor, targets: Tensor) -> None:
    check_tensor("hidden", hidden, ndim=2, kind="float")
    check_tensor("targets", targets, ndim=1, kind="int")
    if hidden.shape[1] != head.dim:
        raise ValueError(
            f"hidden has width {hidden.shape[1]} but the head expects dim={head.dim}; "
            "project the hidden states or build the head with the model's width"
        )
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"targets has {targets.shape[0]} rows but hidden has {hidden.shape[0]}; "
            "pass one target per hidden row"
        )
    valid = targets != IGNORE_INDEX
    bad = valid & ((targets < 0) | (targets >= head.vocab_size))
    if bad.any():
        value = int(targets[bad][0])
        raise ValueError(
            f"targets contains {value}, outside [0, {head.vocab_size}); use {IGNORE_INDEX} "
            "for rows without a target"
        )


class LinearHead(nn.Module, DiscreteHead):
    """logits = hidden @ W^T (+ b) over the whole unified vocabulary."""

    def __init__(self, dim: int, vocab_size: int, *, bias: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.vocab_size = vocab_size
        self.proj = nn.Linear(dim, vocab_size, bias=bias)

    @classmethod
    def examples(cls) -> list[LinearHead]:
        torch.manual_seed(0)
        return [cls(16, 37), cls(8, 5, bias=True)]

    @typecheck
    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> Float[Tensor, "tokens vocab"]:
        check_tensor("hidden", hidden, ndim=2, kind="float")
        return self.proj(hidden)

    @typecheck
    def predict_range(self, hidden: Float[Tensor, "tokens dim"], start: int, stop: int
                      ) -> Float[Tensor, "tokens ids"]:
        check_tensor("hidden", hidden, ndim=2, kind="float")
        start, stop = check_range(self, start, stop)
        bias = None if self.proj.bias is None else self.proj.bias[start:stop]
        return F.linear(hidden, self.proj.weight[start:stop], bias)

    @typecheck
    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Int[Tensor, " tokens"],
        weights: Float[Tensor, " tokens"] | None = None,
    ) -> Float[Tensor, ""]:
        _check_inputs(self, hidden, targets)
        check_weights(weights, hidden.shape[0])
        return linear_cross_entropy(
            hidden, self.proj.weight, targets, bias=self.proj.bias, token_weights=weights,
            ignore_index=IGNORE_INDEX, reduction="mean",
        )


class SplitHead(nn.Module, DiscreteHead):
    """One projection per contiguous vocabulary range (e.g. text, then visual codes).

    ``predict`` concatenates the ranges' logits into the unified vocabulary. ``loss`` scores a row
    with the softmax of the range its target falls in only: an image target competes with the
    other codes, never with text tokens.
    """

    def __init__(self, dim: int, range_sizes: tuple[int, ...], *, bias: bool = False) -> None:
        super().__init__()
        if len(range_sizes) < 1 or any(int(n) < 1 for n in range_sizes):
            raise ValueError(
                f"range_sizes must be one or more sizes >= 1, got {range_sizes!r}; e.g. "
                "(text_vocab_size, codebook_size)"
            )
        self.dim = dim
        self.range_sizes = tuple(int(n) for n in range_sizes)
        self.vocab_size = sum(self.range_sizes)
        self.heads = nn.ModuleList(nn.Linear(dim, n, bias=bias) for n in self.range_sizes)

    @classmethod
    def examples(cls) -> list[SplitHead]:
        torch.manual_seed(0)
        return [cls(16, (23, 11)), cls(8, (4, 6, 2), bias=True)]

    @property
    def range_starts(self) -> tuple[int, ...]:
        starts, total = [], 0
        for n in self.range_sizes:
            starts.append(total)
            total += n
        return tuple(starts)

    @typecheck
    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> Float[Tensor, "tokens vocab"]:
        check_tensor("hidden", hidden, ndim=2, kind="float")
        return torch.cat([head(hidden) for head in self.heads], dim=-1)

    @typecheck
    def predict_range(self, hidden: Float[Tensor, "tokens dim"], start: int, stop: int
                      ) -> Float[Tensor, "tokens ids"]:
        check_tensor("hidden", hidden, ndim=2, kind="float")
        start, stop = check_range(self, start, stop)
        parts = []
        for first, head in zip(self.range_starts, self.heads, strict=True):
            lo, hi = max(start, first), min(stop, first + head.out_features)
            if lo < hi:
                bias = None if head.bias is None else head.bias[lo - first : hi - first]
                parts.append(F.linear(hidden, head.weight[lo - first : hi - first], bias))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    @typecheck
    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Int[Tensor, " tokens"],
        weights: Float[Tensor, " tokens"] | None = None,
    ) -> Float[Tensor, ""]:
        _check_inputs(self, hidden, targets)
        check_weights(weights, hidden.shape[0])
        carries = targets != IGNORE_INDEX
        w = carries.float() if weights is None else weights.float() * carries
        total = hidden.new_zeros((), dtype=torch.float32)
        for head, start, size in zip(self.heads, self.range_starts, self.range_sizes, strict=True):
            rows = (targets >= start) & (targets < start + size)
            local = torch.where(rows, targets - start, torch.full_like(targets, IGNORE_INDEX))
            total = total + linear_cross_entropy(
                hidden, head.weight, local, bias=head.bias, token_weights=w, ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        return total / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


@config
class LinearHeadConfig(Config):
    dim: int = attrs.field(validator=positive())
    vocab_size: int = attrs.field(validator=positive())
    bias: bool = False

    def build(self) -> LinearHead:
        return LinearHead(self.dim, self.vocab_size, bias=self.bias)


@config
class SplitHeadConfig(Config):
    dim: int = attrs.field(validator=positive())
    range_sizes: tuple[int, ...] = attrs.field(converter=tuple)
    bias: bool = False

    def build(self) -> SplitHead:
        return SplitHead(self.dim, self.range_sizes, bias=self.bias)
