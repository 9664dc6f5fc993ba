"""IndexedBatches: deterministic, disjoint per rank, resumable to the batch."""

import pytest
import torch

from nxrecipes.train import BatchSource, IndexedBatches


def ids(source, n):
    return [source.next_batch().tolist() for _ in range(n)]


def test_ranks_are_disjoint_and_cover_each_epoch():
    data = list(range(50))
    ranks = [IndexedBatches(data, 4, seed=3, rank=r, world_size=3) for r in range(3)]
    assert ranks[0].batches_per_epoch == 4  # 50 // 12; the last 2 samples wait for the next shuffle
    epoch0 = [ids(src, 4) for src in ranks]
    seen = [i for per_rank in epoch0 for batch in per_rank for i in batch]
    assert len(seen) == len(set(seen)) == 48
    # global batch b = the b-th slice of 12 of the epoch's permutation, ranks in order
    for b in range(4):
        assert sum((per_rank[b] for per_rank in epoch0), []) == list(ranks[0].indices(b)) + list(
            ranks[1].indices(b)) + list(ranks[2].indices(b))
    epoch1 = [ids(src, 4) for src in ranks]
    assert epoch1 != epoch0 and ranks[0].epoch == 2
    assert isinstance(ranks[0], BatchSource)


def test_same_seed_same_batches_and_resume_is_exact():
    a = IndexedBatches(list(range(30)), 4, seed=7, rank=0, world_size=1)
    first = ids(a, 11)  # crosses two epochs (7 batches each)
    b = IndexedBatches(list(range(30)), 4, seed=7, rank=0, world_size=1)
    assert ids(b, 11) == first
    resumed = IndexedBatches(list(range(30)), 4, seed=7, rank=0, world_size=1)
    c = IndexedBatches(list(range(30)), 4, seed=7, rank=0, world_size=1)
    ids(c, 5)
    resumed.load_state_dict(c.state_dict())
    assert ids(resumed, 6) == first[5:]
    assert IndexedBatches(list(range(30)), 4, seed=8, rank=0, world_size=1).next_batch().tolist() != first[0]


def test_collate_default_and_custom():
    pairs = [(torch.tensor([float(i)]), i) for i in range(8)]
    x, y = IndexedBatches(pairs, 4, rank=0, world_size=1).next_batch()
    assert x.shape == (4, 1) and y.shape == (4,)
    assert len(IndexedBatches(pairs, 4, rank=0, world_size=1, collate=list).next_batch()) == 4


def test_world_size_change_continues_in_the_epoch_without_repeats():
    data = list(range(48))
    two = [IndexedBatches(data, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    consumed = set()
    for _ in range(3):  # 3 global batches of 8 = 24 samples
        for src in two:
            consumed |= set(src.next_batch().tolist())
    three = [IndexedBatches(data, 4, seed=1, rank=r, world_size=3) for r in range(3)]
    for src in three:
        src.load_state_dict(two[0].state_dict())
        assert src.position == 2  # 24 samples consumed = 2 global batches of 12
    rest = set()
    for _ in range(2):
        for src in three:
            rest |= set(src.next_batch().tolist())
    assert not rest & consumed and rest | consumed == set(data)


def test_bad_arguments_and_states():
    with pytest.raises(ValueError, match=r"dataset has 5 samples, fewer than one global batch of batch_size \(4\) x world_size \(2\)"):
        IndexedBatches(list(range(5)), 4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="give rank and world_size together"):
        IndexedBatches(list(range(5)), 1, rank=0)
    with pytest.raises(ValueError, match="rank = 2 must be < world_size = 2"):
        IndexedBatches(list(range(5)), 1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size = 0 must be an int >= 1"):
        IndexedBatches(list(range(5)), 0)
    with pytest.raises(TypeError, match="dataset must be map-style"):
        IndexedBatches(iter(range(5)), 1)
    src = IndexedBatches(list(range(8)), 2, seed=1, rank=0, world_size=1)
    with pytest.raises(ValueError, match="cannot resume these batches: seed: saved 2, now 1"):
        src.load_state_dict({**src.state_dict(), "seed": 2})
    with pytest.raises(ValueError, match="not an IndexedBatches state"):
        src.load_state_dict({"step": 3})
