import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.packing import PackedLayout
from nxcore.schedule import nextflow_schedule
from nxcore.testing import strategies as nxst
from nxrecipes.data.packing import (
    CostTable,
    PackingPlan,
    TransformerCost,
    _first_fit_decreasing,
    pack_fixed_compute,
    pack_fixed_length,
    pad_batches,
    row_cost,
)

samples_lists = st.lists(nxst.layouts(max_segments=3), min_size=1, max_size=25)
SMALL = TransformerCost(hidden=8, layers=2)


def _check_plan(plan: PackingPlan, samples, ranks: int) -> None:
    assert plan.num_ranks == ranks
    assert all(len(steps) == plan.num_steps for steps in plan.ranks)  # ranks march in lock step
    assert sorted(plan.sample_indices()) == list(range(len(samples)))  # each sample exactly once
    for steps, idx_steps in zip(plan.ranks, plan.indices, strict=True):
        for rows, idx_rows in zip(steps, idx_steps, strict=True):
            assert len(rows) == len(idx_rows)
            for row, idx in zip(rows, idx_rows, strict=True):
                assert row.layouts == tuple(samples[i] for i in idx)


@given(samples_lists, st.integers(1, 4), st.integers(1, 5))
def test_pad_batches_places_every_sample_once_padded_to_its_batch(samples, ranks, batch_size):
    plan = pad_batches(samples, ranks=ranks, batch_size=batch_size)
    _check_plan(plan, samples, ranks)
    for r in range(ranks):
        for rows in plan.ranks[r]:
            assert len(rows) <= batch_size
            if rows:
                longest = max(row.content_length for row in rows)
                assert all(row.num_samples == 1 and row.length == longest for row in rows)
    stats = plan.stats(SMALL)
    assert stats.useful_tokens == sum(s.length for s in samples)
    assert stats.padding_tokens == sum(row.padding for r in range(ranks) for row in plan.rows(r))


@given(samples_lists, st.integers(1, 4), st.integers(0, 40))
def test_fixed_length_respects_the_token_budget(samples, ranks, extra):
    max_len = max(s.length for s in samples) + extra
    plan = pack_fixed_length(samples, ranks=ranks, max_len=max_len)
    _check_plan(plan, samples, ranks)
    rows = [row for r in range(ranks) for row in plan.rows(r)]
    assert all(row.length == max_len and row.content_length <= max_len for row in rows)
    stats = plan.stats(SMALL)
    assert stats.padding_tokens == len(rows) * max_len - sum(s.length for s in samples)
    assert all(len(step) <= 1 for steps in plan.ranks for step in steps)


@given(samples_lists, st.integers(1, 4), st.floats(1.0, 3.0), st.booleans(), st.booleans())
def test_fixed_compute_respects_the_budget(samples, ranks, slack, cap, balance):
    costliest = max(SMALL(s.length) for s in samples)
    budget = costliest * slack
    max_len = max(s.length for s in samples) * 2 if cap else None
    plan = pack_fixed_compute(samples, ranks=ranks, budget_flops=budget, cost=SMALL, max_len=max_len,
                              balance=balance)
    _check_plan(plan, samples, ranks)
    for r in range(ranks):
        for row in plan.rows(r):
            assert row.padding == 0
            assert row_cost(row, SMALL) <= budget * (1 + 1e-12)
            if max_len is not None:
                assert row.length <= max_len


def _naive_ffd(sizes, cap):
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins, room = [], []
    for i in order:
        for b, left in enumerate(room):
            if left >= sizes[i]:
                bins[b].append(i)
                room[b] -= sizes[i]
                break
        else:
            bins.append([i])
            room.append(cap - sizes[i])
    return bins


@given(st.lists(st.integers(1, 20), min_size=1, max_size=60), st.integers(20, 45))
def test_first_fit_decreasing_matches_the_textbook_algorithm(sizes, cap):
    assert _first_fit_decreasing([(float(s),) for s in sizes], (float(cap),)) == _naive_ffd(sizes, cap)


def _skewed_mix(n: int = 600, seed: int = 0) -> list[SequenceLayout]:
    """Mostly short text, some large images: fixed-length rows carry very different FLOPs."""
    rng = random.Random(seed)
    big = DiscreteImage(nextflow_schedule(1.0, level=512))  # 3684 tokens
    out = []
    for _ in range(n):
        if rng.random() < 0.15:
            out.append(SequenceLayout.of(TextSpan(rng.randint(8, 64)), big))
        else:
            out.append(SequenceLayout.of(TextSpan(rng.randint(16, 600))))
    return out


def test_compute_budget_balances_better_than_fixed_length_on_a_skewed_mix():
    samples = _skewed_mix()
    cost = TransformerCost(hidden=1024, layers=4)  # small h: attention matters, as at long lengths
    fixed = pack_fixed_length(samples, ranks=8, max_len=4096).stats(cost)
    budget = pack_fixed_compute(samples, ranks=8, budget_flops=cost(4096), cost=cost).stats(cost)
    padded = pad_batches(samples, ranks=8, batch_size=4).stats(cost)
    assert budget.idle_fraction < fixed.idle_fraction
    assert budget.throughput > 1.05 * fixed.throughput
    assert fixed.throughput > padded.throughput
    assert budget.useful_tokens == fixed.useful_tokens == padded.useful_tokens


def test_step_time_is_the_slowest_rank():
    a = SequenceLayout.of(TextSpan(10))
    b = SequenceLayout.of(TextSpan(30))
    plan = pad_batches([a, b, a], ranks=2, batch_size=1, seed=None)
    costs = plan.step_costs(SMALL)
    assert costs.shape == (2, 2)
    assert costs[0].tolist() == [SMALL(10), SMALL(30)] and costs[1].tolist() == [SMALL(10), 0.0]
    stats = plan.stats(SMALL)
    assert stats.time == SMALL(30) + SMALL(10)
    assert stats.busy == 2 * SMALL(10) + SMALL(30)
    assert stats.throughput == 50 / stats.time
    assert 0 < stats.idle_fraction < 1


def test_padding_costs_dense_or_linear():
    row = PackedLayout.of(SequenceLayout.of(TextSpan(10))).pad_to(16)
    assert row_cost(row, SMALL, dense=True) == SMALL(16)
    assert row_cost(row, SMALL) == SMALL(10) + 6 * SMALL(1)
    packed = PackedLayout.of(SequenceLayout.of(TextSpan(10)), SequenceLayout.of(TextSpan(6)))
    assert row_cost(packed, SMALL) == SMALL(10) + SMALL(6) < SMALL(16)  # attention within a sample
    one = [SequenceLayout.of(TextSpan(10)), SequenceLayout.of(TextSpan(16))]
    dense = pad_batches(one, ranks=1, batch_size=2, seed=None).stats(SMALL)
    varlen = pad_batches(one, ranks=1, batch_size=2, seed=None, dense_attention=False).stats(SMALL)
    assert dense.time == 2 * SMALL(16) > varlen.time == SMALL(16) + SMALL(10) + 6 * SMALL(1)
    assert dense.padding_tokens == varlen.padding_tokens == 6


def test_transformer_cost_is_the_papers_per_layer_formula():
    c = TransformerCost(hidden=4096, layers=1)
    s, h = 1000, 4096
    assert c(s) == 12 * s * h**2 + 4 * s**2 * h
    assert TransformerCost()(1) == 28 * (12 * 3584**2 + 4 * 3584)  # defaults: Qwen2.5-7B


def test_a_measured_cost_table_drives_the_budget():
    table = CostTable.from_mapping({64: 1.0, 256: 3.0, 1024: 20.0})
    assert table(64) == 1.0 and table(32) == 0.5 and table(160) == 2.0
    with pytest.raises(ValueError, match="tokens=2000 is beyond the cost table, which ends at 1024"):
        table(2000)
    samples = [SequenceLayout.of(TextSpan(n)) for n in (64, 64, 256, 1000, 100, 30)]
    plan = pack_fixed_compute(samples, ranks=2, budget_flops=20.0, cost=table)
    assert sorted(plan.sample_indices()) == list(range(6))
    for r in range(2):
        for row in plan.rows(r):
            assert row_cost(row, table) <= 20.0
    with pytest.raises(ValueError, match="strictly increasing"):
        CostTable([4, 2], [1.0, 2.0])


def test_bad_inputs_name_the_fix():
    long = SequenceLayout.of(TextSpan(100))
    with pytest.raises(ValueError, match=r"samples\[1\] has 100 tokens, more than max_len=50; raise max_len"):
        pack_fixed_length([SequenceLayout.of(TextSpan(5)), long], ranks=2, max_len=50)
    with pytest.raises(ValueError, match=r"samples\[0\] \(100 tokens\) costs .* more than budget_flops"):
        pack_fixed_compute([long], ranks=2, budget_flops=SMALL(50), cost=SMALL)
    with pytest.raises(ValueError, match="ranks must be an int >= 1, got 0"):
        pad_batches([long], ranks=0, batch_size=1)
    with pytest.raises(ValueError, match="at least one SequenceLayout"):
        pack_fixed_length([], ranks=1, max_len=10)
    with pytest.raises(TypeError, match=r"samples\[0\] must be a SequenceLayout, got int"):
        pack_fixed_length([3], ranks=1, max_len=10)
    with pytest.raises(ValueError, match="budget_flops must be a finite number > 0"):
        pack_fixed_compute([long], ranks=1, budget_flops=float("nan"))


def test_seeds_shuffle_reproducibly():
    samples = _skewed_mix(80)
    a = pack_fixed_length(samples, ranks=3, max_len=4096, seed=1)
    b = pack_fixed_length(samples, ranks=3, max_len=4096, seed=1)
    assert a.indices == b.indices
    assert pad_batches(samples, ranks=3, batch_size=2, seed=1).indices == pad_batches(
        samples, ranks=3, batch_size=2, seed=1).indices


def test_balancing_groups_rows_of_similar_cost():
    samples = _skewed_mix(300)
    cost = TransformerCost(hidden=256, layers=2)
    kwargs = dict(ranks=4, budget_flops=cost(4096), cost=cost, max_len=4096)
    balanced = pack_fixed_compute(samples, balance=True, **kwargs)
    dealt = pack_fixed_compute(samples, balance=False, **kwargs)
    assert balanced.num_steps == dealt.num_steps
    assert balanced.stats(cost).time <= dealt.stats(cost).time
    per_step = balanced.step_costs(cost)
    order = np.argsort(-per_step.max(axis=1))
    for k in range(balanced.num_steps - 1):  # steps hold contiguous runs of the cost order
        a, b = per_step[order[k]], per_step[order[k + 1]]
        assert a[a > 0].min() >= b.max() - 1e-6 * b.max()
