"""Dead-code restarts (``nxcore.tokenizer.multiscale.restart``): which codes move, where they move to,
when, which streams; the residual rows and distances the quantizer exposes for them; the dual
tokenizer's ``restart_every``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxcore.schedule import Schedule
from nxcore.tokenizer.dual import DualCodebookTokenizer, dual_tiny
from nxcore.tokenizer.multiscale.quantizer import CodebookStream, residual_quantize
from nxcore.tokenizer.multiscale.restart import CodeRestarts, reseed

torch.set_num_threads(1)
SCHEDULE = Schedule(((1, 1), (2, 2), (3, 4)))


@settings(max_examples=30, deadline=None)
@given(codes=st.integers(2, 12), rows=st.integers(1, 20), dead_share=st.floats(0, 1), seed=st.integers(0, 99))
def test_reseed_moves_exactly_the_dead_codes_onto_rows_with_positive_weight(codes, rows, dead_share, seed):
    g = torch.Generator().manual_seed(seed)
    books = [torch.randn(codes, 3, generator=g), torch.randn(codes, 2, generator=g)]
    before = [b.clone() for b in books]
    residuals = [torch.randn(rows, 3, generator=g) + 10, torch.randn(rows, 2, generator=g) + 10]
    weights = torch.rand(rows, generator=g)
    weights[::2] = 0  # these rows must never be drawn
    dead = torch.randperm(codes, generator=g)[: round(dead_share * codes)]
    moved = reseed(books, dead, residuals, weights, g)
    positive = int((weights > 0).sum())  # 0 when rows == 1: then rows are drawn uniformly
    assert moved == min(len(dead), positive or rows)
    alive = torch.ones(codes, dtype=torch.bool)
    alive[dead[:moved]] = False
    for b, b0 in zip(books, before, strict=True):
        assert torch.equal(b[alive], b0[alive])
    picked = []
    for code in dead[:moved].tolist():  # each moved code is one whole row, the same in both streams
        matches = [i for i in range(rows) if torch.equal(residuals[0][i], books[0][code])]
        assert len(matches) == 1 and torch.equal(residuals[1][matches[0]], books[1][code])
        assert weights[matches[0]] > 0 or positive == 0
        picked.append(matches[0])
    assert len(set(picked)) == len(picked)  # without replacement


def test_reseed_skips_a_none_stream_and_draws_uniformly_when_every_weight_is_zero():
    books = [torch.zeros(4, 2), torch.zeros(4, 3)]
    rows = [torch.ones(6, 2), torch.full((6, 3), 2.0)]
    moved = reseed([None, books[1]], torch.tensor([1, 3]), rows, torch.zeros(6))
    assert moved == 2
    assert torch.equal(books[1][[1, 3]], torch.full((2, 3), 2.0)) and books[1][[0, 2]].abs().sum() == 0
    with pytest.raises(ValueError, match="one codebook per stream"):
        reseed(books[:1], torch.tensor([0]), rows, torch.ones(6))


def test_reseed_draws_in_proportion_to_the_weights():
    g = torch.Generator().manual_seed(0)
    rows = [torch.arange(3.0).reshape(3, 1)]
    weights = torch.tensor([1.0, 3.0, 0.0])
    counts = torch.zeros(3)
    for _ in range(2000):
        book = torch.full((1, 1), -1.0)
        reseed([book], torch.tensor([0]), rows, weights, g)
        counts[int(book[0, 0])] += 1
    assert counts[2] == 0
    assert abs(counts[1] / counts.sum() - 0.75) < 0.04


def test_residual_quantize_exposes_each_steps_rows_and_their_distance_to_the_chosen_codeword():
    g = torch.Generator().manual_seed(0)
    f = [torch.randn(2, 3, 3, 4, generator=g), torch.randn(2, 2, 3, 4, generator=g)]
    streams = [CodebookStream(torch.randn(5, 3, generator=g), weight=0.5), CodebookStream(torch.randn(5, 2, generator=g))]
    q = residual_quantize(f, streams, SCHEDULE.steps, normalize=False)
    assert len(q.residuals) == len(q.distances) == 3
    for (h, w), rows, dist, idx in zip(SCHEDULE.steps, q.residuals, q.distances, q.codes, strict=True):
        assert [r.shape for r in rows] == [(2 * h * w, 3), (2 * h * w, 2)]
        flat = idx.reshape(-1)
        want = 0.5 * (rows[0] - streams[0].codebook[flat]).square().sum(-1) + (
            rows[1] - streams[1].codebook[flat]).square().sum(-1)
        torch.testing.assert_close(dist, want, rtol=1e-4, atol=1e-5)
    # the last step's rows are what the earlier steps left of f at the final grid
    left = [x - q_x.detach() for x, q_x in zip(f, q.quantized, strict=True)]
    last = [(x + streams[s].codebook[q.codes[-1]].permute(0, 3, 1, 2)) for s, x in enumerate(left)]
    torch.testing.assert_close(q.residuals[-1][0], last[0].permute(0, 2, 3, 1).reshape(-1, 3))


def test_code_restarts_wait_for_every_forwards_then_move_only_unused_codes():
    restarts = CodeRestarts(codebook_size=6, every=2)
    book = torch.zeros(6, 2)

    class Q:  # the fields CodeRestarts reads
        codes = [torch.tensor([[0, 1], [1, 0]]), torch.tensor([[2]])]
        residuals = ((torch.ones(4, 2),), (torch.full((1, 2), 5.0),))
        distances = (torch.ones(4), torch.full((1,), 9.0))

    assert restarts.step([book]) == 0  # nothing observed yet
    restarts.observe(Q)
    assert restarts.step([book]) == 0 and book.abs().sum() == 0  # one forward of two
    restarts.observe(Q)
    assert restarts.hits.tolist() == [4, 4, 2, 0, 0, 0]
    assert restarts.step([book]) == 3
    assert book[:3].abs().sum() == 0 and (book[3:] != 0).all()
    assert restarts.hits.sum() == 0 and restarts.restarted == 3
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        CodeRestarts(4, every=0)


def _train_steps(tokenizer, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        images = torch.rand(2, 3, 6, 8, generator=g) * 2 - 1
        tokenizer(images, SCHEDULE, keep=None)


def test_dual_tokenizer_restarts_dead_codes_in_training_only_and_never_a_stream_out_of_the_search():
    torch.manual_seed(0)
    tok = DualCodebookTokenizer(dual_tiny(normalize=False, restart_every=1, w_sem=0.0, scale_drop=0.0))
    sem, pix = tok.codebook_sem.weight.detach().clone(), tok.codebook_pix.weight.detach().clone()
    tok.eval()
    _train_steps(tok, 2)
    assert torch.equal(pix, tok.codebook_pix.weight) and tok.restarts.seen == 0
    tok.train()
    with torch.no_grad():
        _train_steps(tok, 2)
    assert tok.restarts.restarted > 0
    assert not torch.equal(pix, tok.codebook_pix.weight)
    assert torch.equal(sem, tok.codebook_sem.weight)  # w_sem = 0: the semantic half is not searched
    assert "restarts" not in "".join(tok.state_dict())  # counts are not saved


def test_restart_every_is_validated_and_off_by_default():
    assert DualCodebookTokenizer(dual_tiny()).restarts is None
    with pytest.raises(ValueError, match="restart_every"):
        dual_tiny(restart_every=-1)
