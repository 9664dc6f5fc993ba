"""Packing strategies (NextFlow §4, Table 3): how samples become rows, and rows reach N ranks.

Three strategies over a list of samples (each a ``SequenceLayout``), each returning a
``PackingPlan``: for every rank, its rows (``PackedLayout``) step by step::

    plan = pad_batches(samples, ranks=8, batch_size=4)               # the naive baseline
    plan = pack_fixed_length(samples, ranks=8, max_len=16384)        # FFD into fixed-size rows
    plan = pack_fixed_compute(samples, ranks=8, budget_flops=TransformerCost()(16384))
    plan.ranks[r][k]        # the rows rank r processes at step k (empty: the rank idles)
    plan.stats(TransformerCost())   # per-step time = slowest rank, padding, throughput

Cost model. A sample of ``s`` tokens costs, per layer, ``12·s·h² + 4·s²·h`` forward FLOPs (NextFlow
Eq. 8 with s_q = s_kv = s: QKV/output projections and the MLP, plus the attention products).
``TransformerCost`` defaults to NextFlow's backbone, Qwen2.5-VL-7B's language model: hidden size
h = 3584, 28 layers. Training costs about 3x the forward pass on every strategy alike, so ratios
do not change. Attention stays within a sample, so a packed row costs the sum over its samples, not
the cost of its total length. Any callable ``cost(tokens) -> float`` may replace the model, e.g. a
``CostTable`` of measured step times; budgets are then in that callable's unit.

Padding. A padding token costs ``cost(1)`` (it goes through every linear layer; it attends only to
padding, see ``nxcore.packing``). ``pad_batches`` builds the naive padded batch: by default its
rows are charged as dense sequences, ``cost(L)`` for a row padded to ``L`` (a padded [batch, L]
tensor with a key-padding mask computes all L x L attention scores); pass
``dense_attention=False`` to model a varlen kernel that skips padding keys.

Steps. Training is synchronous: a step takes as long as its slowest rank. ``pad_batches`` gives
each rank one batch of ``batch_size`` rows per step; the packing strategies one row per rank per
step. Row order is shuffled with ``seed`` (a data loader shuffles); ``pack_fixed_compute`` also
balances by default: it sorts its rows by cost and gives each step ``ranks`` rows of similar cost.
"""

from __future__ import annotations

import bisect
import math
import numbers
import random
from collections.abc import Callable, Mapping, Sequence

import attrs
import numpy as np

from nxcore.layout import SequenceLayout
from nxcore.packing import PackedLayout

__all__ = [
    "CostTable",
    "PackingPlan",
    "PackingStats",
    "TransformerCost",
    "pack_fixed_compute",
    "pack_fixed_length",
    "pad_batches",
    "row_cost",
]

Cost = Callable[[int], float]

QWEN25_7B_HIDDEN = 3584
QWEN25_7B_LAYERS = 28


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _positive_int_field(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _positive_int(attribute.name, value)


@attrs.frozen(kw_only=True)
class TransformerCost:
    """Forward FLOPs of one sample of ``tokens`` tokens: ``layers * (12 s h² + 4 s² h)``.

    Defaults: Qwen2.5-VL-7B (NextFlow's backbone), hidden size 3584, 28 layers.
    """

    hidden: int = attrs.field(default=QWEN25_7B_HIDDEN, validator=_positive_int_field)
    layers: int = attrs.field(default=QWEN25_7B_LAYERS, validator=_positive_int_field)

    def __call__(self, tokens: int) -> float:
        s, h = float(tokens), float(self.hidden)
        return self.layers * (12.0 * s * h * h + 4.0 * s * s * h)


@attrs.frozen
class CostTable:
    """A measured cost table: ``lengths[i]`` tokens cost ``costs[i]`` (e.g. seconds per step).

    Linear interpolation between measured lengths, and from (0, 0) up to the first one. Lengths
    beyond the last measurement raise: measure up to the longest sample you pack.
    """

    lengths: tuple[int, ...] = attrs.field(converter=lambda v: tuple(int(x) for x in v))
    costs: tuple[float, ...] = attrs.field(converter=lambda v: tuple(float(x) for x in v))

    def __attrs_post_init__(self) -> None:
        if len(self.lengths) != len(self.costs) or not self.lengths:
            raise ValueError(
                f"lengths and costs must be non-empty and of equal size, got {len(self.lengths)} "
                f"lengths and {len(self.costs)} costs"
            )
        if any(b <= a for a, b in zip(self.lengths, self.lengths[1:], strict=False)) or self.lengths[0] < 1:
            raise ValueError(f"lengths must be >= 1 and strictly increasing, got {self.lengths}")
        if any(not (c >= 0 and math.isfinite(c)) for c in self.costs):
            raise ValueError(f"costs must be finite and >= 0, got {self.costs}")

    @classmethod
    def from_mapping(cls, table: Mapping[int, float]) -> CostTable:
        items = sorted(table.items())
        return cls([k for k, _ in items], [v for _, v in items])

    def __call__(self, tokens: int) -> float:
        if tokens > self.lengths[-1]:
            raise ValueError(
                f"tokens={tokens} is beyond the cost table, which ends at {self.lengths[-1]}; "
                "measure longer sequences"
            )
        i = bisect.bisect_left(self.lengths, tokens)
        if self.lengths[i] == tokens:
            return self.costs[i]
        x0, y0 = (0, 0.0) if i == 0 else (self.lengths[i - 1], self.costs[i - 1])
        x1, y1 = self.lengths[i], self.costs[i]
        return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)


def row_cost(row: PackedLayout, cost: Cost, *, dense: bool = False) -> float:
    """Cost of one row: each sample's cost plus ``cost(1)`` per padding token; with ``dense``
    (a padded single-sample row computed as one dense sequence) ``cost(row.length)``."""
    if dense:
        return float(cost(row.length))
    return float(sum(cost(n) for n in row.lengths) + row.padding * cost(1))


@attrs.frozen
class PackingStats:
    """What a plan costs. ``time`` is the sum over steps of the slowest rank's cost (synchronous
    training); ``busy`` the sum of all ranks' costs; ``throughput`` useful tokens per unit of
    time (per rank: divide by ``num_ranks``)."""

    num_ranks: int
    num_steps: int
    num_rows: int
    useful_tokens: int
    padding_tokens: int
    time: float
    busy: float

    @property
    def throughput(self) -> float:
        return self.useful_tokens / self.time if self.time else 0.0

    @property
    def idle_fraction(self) -> float:
        """Share of rank-time spent waiting for the slowest rank of the step."""
        return 1.0 - self.busy / (self.num_ranks * self.time) if self.time else 0.0

    @property
    def padding_fraction(self) -> float:
        total = self.useful_tokens + self.padding_tokens
        return self.padding_tokens / total if total else 0.0

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = attrs.asdict(self)
        out.update(throughput=self.throughput, idle_fraction=self.idle_fraction,
                   padding_fraction=self.padding_fraction)
        return out


Rows = tuple[PackedLayout, ...]


@attrs.frozen
class PackingPlan:
    """``ranks[r][k]``: the rows rank ``r`` processes at step ``k`` (empty when it idles);
    ``indices[r][k][j]``: the positions, in the input list, of the samples of row ``j``.
    ``dense_padding``: padded rows are charged as dense sequences (see ``row_cost``)."""

    strategy: str
    ranks: tuple[tuple[Rows, ...], ...]
    indices: tuple[tuple[tuple[tuple[int, ...], ...], ...], ...]
    dense_padding: bool = False

    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    @property
    def num_steps(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    def rows(self, rank: int) -> list[PackedLayout]:
        """Every row of ``rank``, step after step."""
        return [row for step in self.ranks[rank] for row in step]

    def sample_indices(self) -> list[int]:
        """Every placed sample's input position (each exactly once when the plan is valid)."""
        return [i for rank in self.indices for step in rank for row in step for i in row]

    def step_costs(self, cost: Cost) -> np.ndarray:
        """[num_steps, num_ranks]: what each rank computes at each step."""
        cache: dict[int, float] = {}

        def c(n: int) -> float:
            if n not in cache:
                cache[n] = float(cost(n))
            return cache[n]

        out = np.zeros((self.num_steps, self.num_ranks))
        for r, steps in enumerate(self.ranks):
            for k, rows in enumerate(steps):
                out[k, r] = sum(row_cost(row, c, dense=self.dense_padding and row.padding > 0)
                                for row in rows)
        return out

    def stats(self, cost: Cost) -> PackingStats:
        costs = self.step_costs(cost)
        rows = [row for r in range(self.num_ranks) for row in self.rows(r)]
        return PackingStats(
            num_ranks=self.num_ranks,
            num_steps=self.num_steps,
            num_rows=len(rows),
            useful_tokens=sum(row.content_length for row in rows),
            padding_tokens=sum(row.padding for row in rows),
            time=float(costs.max(axis=1).sum()),
            busy=float(costs.sum()),
        )


# ---------------------------------------------------------------------------------------------
# helpers


def _check_samples(samples: Sequence[SequenceLayout]) -> list[SequenceLayout]:
    if isinstance(samples, SequenceLayout):
        raise TypeError("samples must be a sequence of SequenceLayout, got a single SequenceLayout")
    out = list(samples)
    if not out:
        raise ValueError("samples must hold at least one SequenceLayout, got none")
    for i, s in enumerate(out):
        if not isinstance(s, SequenceLayout):
            raise TypeError(f"samples[{i}] must be a SequenceLayout, got {type(s).__name__} {s!r}")
    return out


def _distribute(
    strategy: str,
    steps: list[list[tuple[Rows, tuple[tuple[int, ...], ...]]]],
    ranks: int,
    dense_padding: bool = False,
) -> PackingPlan:
    """``steps[k][r]`` = (rows, their sample indices) for rank r (missing ranks idle)."""
    plan_rows: list[list[Rows]] = [[] for _ in range(ranks)]
    plan_idx: list[list[tuple[tuple[int, ...], ...]]] = [[] for _ in range(ranks)]
    for step in steps:
        for r in range(ranks):
            rows, idx = step[r] if r < len(step) else ((), ())
            plan_rows[r].append(rows)
            plan_idx[r].append(idx)
    return PackingPlan(
        strategy=strategy,
        ranks=tuple(tuple(r) for r in plan_rows),
        indices=tuple(tuple(r) for r in plan_idx),
        dense_padding=dense_padding,
    )


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _FirstFit:
    """First fit over bins with one or two capacities, in O(log bins) per item (a max segment
    tree over the remaining capacities; unopened bins hold full capacity, so the leftmost bin that
    fits is either an open bin or the next new one)."""

    def __init__(self, num_items: int, capacities: tuple[float, ...]) -> None:
        size = 1
        while size < num_items:
            size *= 2
        self.size = size
        self.dims = len(capacities)
        self.tree = [[float(c)] * (2 * size) for c in capacities]

    def _fits(self, node: int, need: tuple[float, ...]) -> bool:
        return all(self.tree[d][node] >= need[d] for d in range(self.dims))

    def place(self, need: tuple[float, ...]) -> int:
        """Index of the leftmost bin that holds ``need``; its capacities shrink by ``need``."""
        stack = [1]
        leaf = -1
        while stack:  # depth-first, left child first: the first leaf reached is the leftmost fit
            node = stack.pop()
            if not self._fits(node, need):
                continue
            if node >= self.size:
                leaf = node
                break
            stack.append(2 * node + 1)
            stack.append(2 * node)
        if leaf < 0:
            raise RuntimeError("no bin fits; items larger than a bin must be rejected first")
        for d in range(self.dims):
            self.tree[d][leaf] -= need[d]
        node = leaf // 2
        while node:
            for d in range(self.dims):
                t = self.tree[d]
                t[node] = max(t[2 * node], t[2 * node + 1])
            node //= 2
        b = leaf - self.size
        return b


def _first_fit_decreasing(
    sizes: list[tuple[float, ...]], capacities: tuple[float, ...], key: int = 0
) -> list[list[int]]:
    """Bins of item indices: items sorted by ``sizes[i][key]`` decreasing (ties: input order),
    each into the first bin with room."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][key], i))
    ff = _FirstFit(len(sizes), capacities)
    bins: list[list[int]] = []
    for i in order:
        b = ff.place(sizes[i])
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
    return bins


# ---------------------------------------------------------------------------------------------
# strategies


def pad_batches(
    samples: Sequence[SequenceLayout],
    *,
    ranks: int,
    batch_size: int,
    seed: int | None = 0,
    dense_attention: bool = True,
) -> PackingPlan:
    """Batch padding: batches of ``batch_size`` samples, each sample a row padded to the longest
    of its batch; one batch per rank per step (batch j goes to rank j mod ranks).

    ``seed`` shuffles the samples first (``None`` keeps their order). ``dense_attention``: charge
    padded rows as dense sequences (the naive padded batch; see the module docstring).
    """
    samples = _check_samples(samples)
    ranks = _positive_int("ranks", ranks)
    batch_size = _positive_int("batch_size", batch_size)
    order = list(range(len(samples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    batches = []
    for batch in _chunks(order, batch_size):
        rows = [PackedLayout((samples[i],)) for i in batch]
        longest = max(row.length for row in rows)
        batches.append((tuple(row.pad_to(longest) for row in rows), tuple((i,) for i in batch)))
    return _distribute("batch_padding", _chunks(batches, ranks), ranks, dense_padding=dense_attention)


def pack_fixed_length(
    samples: Sequence[SequenceLayout],
    *,
    ranks: int,
    max_len: int,
    seed: int | None = 0,
) -> PackingPlan:
    """Fixed-length packing: first-fit decreasing (by token count) into rows of ``max_len``
    tokens, each row padded to ``max_len``; rows shuffled with ``seed`` (``None``: FFD order),
    one row per rank per step."""
    samples = _check_samples(samples)
    ranks = _positive_int("ranks", ranks)
    max_len = _positive_int("max_len", max_len)
    lengths = [s.length for s in samples]
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(
                f"samples[{i}] has {n} tokens, more than max_len={max_len}; raise max_len to at "
                "least the longest sample, or drop or truncate the sample"
            )
    bins = _first_fit_decreasing([(float(n),) for n in lengths], (float(max_len),))
    rows = [
        (
            (PackedLayout(tuple(samples[i] for i in b)).pad_to(max_len),),
            (tuple(b),),
        )
        for b in bins
    ]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return _distribute("fixed_length", [rows[i : i + ranks] for i in range(0, len(rows), ranks)], ranks)


def pack_fixed_compute(
    samples: Sequence[SequenceLayout],
    *,
    ranks: int,
    budget_flops: float,
    cost: Cost | None = None,
    max_len: int | None = None,
    balance: bool = True,
    seed: int | None = 0,
) -> PackingPlan:
    """Fixed-computation-budget packing: first-fit decreasing (by cost) into rows whose summed
    sample cost stays within ``budget_flops`` (and within ``max_len`` tokens when given); rows
    are not padded, so their token counts differ while their costs are close to the budget.

    ``balance``: sort the rows by cost and let ``ranks`` consecutive ones form a step, so the
    ranks of a step carry similar work even where rows fall short of the budget (the last rows,
    or rows capped by ``max_len``); steps are then shuffled with ``seed``. Without it the rows are
    shuffled and dealt out like ``pack_fixed_length``'s.

    ``cost``: ``cost(tokens)`` of one sample, ``TransformerCost()`` by default (h = 3584, 28
    layers), or a measured ``CostTable``; ``budget_flops`` is in its unit. A good budget is the
    cost of the longest row you would otherwise pack, e.g. ``cost(max_len)``.
    """
    samples = _check_samples(samples)
    ranks = _positive_int("ranks", ranks)
    cost = TransformerCost() if cost is None else cost
    if not callable(cost):
        raise TypeError(f"cost must be a callable tokens -> cost, got {type(cost).__name__} {cost!r}")
    if isinstance(budget_flops, bool) or not isinstance(budget_flops, numbers.Real) or not (
        math.isfinite(budget_flops) and budget_flops > 0
    ):
        raise ValueError(f"budget_flops must be a finite number > 0, got {budget_flops!r}")
    if max_len is not None:
        max_len = _positive_int("max_len", max_len)
    lengths = [s.length for s in samples]
    cache: dict[int, float] = {}
    costs = []
    for n in lengths:
        if n not in cache:
            cache[n] = float(cost(n))
        costs.append(cache[n])
    for i, (n, c) in enumerate(zip(lengths, costs, strict=True)):
        if c > budget_flops:
            raise ValueError(
                f"samples[{i}] ({n} tokens) costs {c:.4g}, more than budget_flops={budget_flops:.4g}; "
                f"raise the budget to at least the costliest sample (e.g. cost({max(lengths)})), or "
                "drop or truncate the sample"
            )
        if max_len is not None and n > max_len:
            raise ValueError(
                f"samples[{i}] has {n} tokens, more than max_len={max_len}; raise max_len or drop "
                "the sample"
            )
    if max_len is None:
        sizes = [(c,) for c in costs]
        caps: tuple[float, ...] = (float(budget_flops),)
    else:
        sizes = [(c, float(n)) for c, n in zip(costs, lengths, strict=True)]
        caps = (float(budget_flops), float(max_len))
    bins = _first_fit_decreasing(sizes, caps)
    rows = [
        (sum(costs[i] for i in b), (PackedLayout(tuple(samples[i] for i in b)),), (tuple(b),))
        for b in bins
    ]
    if balance:
        rows.sort(key=lambda r: -r[0])
    elif seed is not None:
        random.Random(seed).shuffle(rows)
    steps = [[(rw, ix) for _, rw, ix in rows[i : i + ranks]] for i in range(0, len(rows), ranks)]
    if balance and seed is not None:
        random.Random(seed).shuffle(steps)
    return _distribute("fixed_compute", steps, ranks)
