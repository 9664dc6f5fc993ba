"""self_correction_encode (NextFlow §2.2): clean targets, exactly the requested selection per scale,
inputs drawn from the top-k of the residual left by the *corrupted* earlier inputs, determinism,
per-image probability p, and clear errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxcore.schedule import Schedule
from nxcore.tokenizer.dual import DualCodebookTokenizer, dual_tiny, selected_count, self_correction_encode
from nxcore.tokenizer.multiscale import MultiScaleVQTokenizer, multiscale_vq_tiny, reconstruct, resize
from nxkernels.vq import vq_nearest

torch.set_num_threads(1)
SCHEDULE = Schedule(((1, 1), (2, 2), (2, 3), (3, 4)))


def _tokenizer(seed=0, **changes):
    torch.manual_seed(seed)
    return DualCodebookTokenizer(dual_tiny(**changes)).eval()


TOKENIZER = _tokenizer(w_pix=0.5)


def _images(batch, height=6, width=8, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _encode(images, seed=0, tokenizer=TOKENIZER, schedule=SCHEDULE, **kwargs):
    return self_correction_encode(tokenizer, images, schedule, generator=torch.Generator().manual_seed(seed), **kwargs)


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kwargs", [{"fraction": 0.0}, {"p": 0.0}, {"fraction": 0.0, "p": 0.0, "k": 1}])
def test_no_correction_gives_the_clean_encode_as_inputs_and_targets(kwargs):
    images = _images(3)
    clean = TOKENIZER.encode(images, SCHEDULE)
    out = _encode(images, **kwargs)
    assert _same(out.inputs, clean) and _same(out.targets, clean)
    assert not any(s.any() for s in out.selected)


@pytest.mark.parametrize(
    ("fraction", "h", "w", "count"),
    [(0.6, 1, 1, 1), (0.6, 2, 2, 2), (0.6, 2, 3, 4), (0.6, 3, 4, 7), (0.6, 5, 5, 15), (0.5, 1, 1, 1),
     (0.25, 1, 2, 1), (1.0, 3, 3, 9), (0.0, 4, 4, 0)],
)
def test_selected_count_rounds_half_up(fraction, h, w, count):
    assert selected_count(fraction, h, w) == count


@settings(max_examples=10)
@given(fraction=st.floats(0.0, 1.0), k=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_exactly_the_requested_count_is_selected_and_every_selected_cell_changes(fraction, k, seed):
    out = _encode(_images(2), seed=seed, fraction=fraction, k=k, exclude_top1=True)
    assert out.corrupted.all()  # p = 1.0
    for (h, w), sel, inp, tgt in zip(SCHEDULE.steps, out.selected, out.inputs, out.targets, strict=True):
        assert sel.reshape(2, -1).sum(1).tolist() == [selected_count(fraction, h, w)] * 2
        assert torch.equal(inp != tgt, sel)  # ranks 2..k only: every selected input differs from the top-1


@pytest.mark.parametrize("kwargs", [{"k": 4}, {"k": 3, "exclude_top1": True}, {"k": 5, "temperature": 0.5}])
def test_inputs_are_top_k_of_the_residual_left_by_the_corrupted_inputs_and_targets_its_top_1(kwargs):
    tok, images = TOKENIZER, _images(2, seed=2)
    out = _encode(images, seed=3, fraction=0.6, **kwargs)
    k = kwargs["k"]
    steps, streams = SCHEDULE.steps, TOKENIZER.streams
    features = tok.features(images)
    for s, (h, w) in enumerate(steps):
        rest = list(features)
        if s:  # residual features: subtract what the *inputs* of the earlier steps contributed
            done = reconstruct(streams, out.inputs[:s], steps, up=tok.config.up)
            rest = [f - c for f, c in zip(features, done, strict=True)]
        rows = [resize(r, (h, w), "area").permute(0, 2, 3, 1).reshape(-1, r.shape[1]) for r in rest]
        top = vq_nearest(rows[0], streams[0].codebook, rows[1], streams[1].codebook, w_sem=1.0, w_pix=0.5,
                         normalize=True, k=k).indices.reshape(2, h, w, k)
        assert torch.equal(out.targets[s], top[..., 0])
        assert (out.inputs[s][..., None] == top).any(-1).all()
        assert torch.equal(out.inputs[s][~out.selected[s]], out.targets[s][~out.selected[s]])


def test_later_targets_correct_the_corrupted_earlier_inputs():
    images = _images(2, seed=5)
    clean = TOKENIZER.encode(images, SCHEDULE)
    out = _encode(images, fraction=1.0, k=4, exclude_top1=True)
    assert torch.equal(out.targets[0], clean[0])  # the first step sees no corruption yet
    assert any(not torch.equal(t, c) for t, c in zip(out.targets[1:], clean[1:], strict=True))


def test_deterministic_under_a_seed_and_different_across_seeds():
    images = _images(2)
    a, b, c = _encode(images, seed=7), _encode(images, seed=7), _encode(images, seed=8)
    assert _same(a.inputs, b.inputs) and _same(a.targets, b.targets) and _same(a.selected, b.selected)
    assert not _same(a.selected, c.selected)


def test_p_draws_whole_images_and_leaves_the_others_clean():
    images = _images(8, seed=9)
    clean = TOKENIZER.encode(images, SCHEDULE)
    out = _encode(images, seed=1, p=0.5, k=3, exclude_top1=True)
    drawn = out.corrupted
    assert 0 < drawn.sum() < 8
    for sel, inp, tgt, ref in zip(out.selected, out.inputs, out.targets, clean, strict=True):
        assert not sel[~drawn].any() and sel[drawn].any()
        assert torch.equal(inp[~drawn], ref[~drawn]) and torch.equal(tgt[~drawn], ref[~drawn])


def test_a_tiny_temperature_samples_the_nearest_codeword():
    images = _images(2)
    out = _encode(images, fraction=1.0, k=4, temperature=1e-6)
    assert _same(out.inputs, out.targets) and _same(out.targets, TOKENIZER.encode(images, SCHEDULE))


def test_inputs_feed_next_scale_inputs_and_work_for_the_var_tokenizer():
    out = _encode(_images(2))
    inputs = TOKENIZER.next_scale_inputs(out.inputs, SCHEDULE)
    assert [tuple(x.shape) for x in inputs] == [(2, 12, h, w) for h, w in SCHEDULE.steps[1:]]
    torch.manual_seed(0)
    var = MultiScaleVQTokenizer(multiscale_vq_tiny()).eval()
    images = _images(2)
    clean = var.encode(images, SCHEDULE)
    assert _same(_encode(images, tokenizer=var, fraction=0.0).targets, clean)
    corrupted = _encode(images, tokenizer=var, k=3, exclude_top1=True)
    assert (corrupted.inputs[-1] != corrupted.targets[-1]).sum() == 2 * selected_count(0.6, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 33}, ValueError, r"k must be an int in \[1, 32\]"),
        ({"k": 0}, ValueError, r"k must be an int in \[1, 32\]"),
        ({"p": 1.5}, ValueError, r"p must be a number in \[0\.0, 1\.0\], got 1\.5"),
        ({"fraction": -0.1}, ValueError, r"fraction must be a number in \[0\.0, 1\.0\]"),
        ({"k": 1, "exclude_top1": True}, ValueError, r"exclude_top1=True needs k >= 2"),
        ({"temperature": 0.0}, ValueError, r"temperature must be None .* or a number > 0"),
        ({"generator": 3}, TypeError, r"generator must be a torch\.Generator"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        self_correction_encode(TOKENIZER, _images(1), SCHEDULE, **kwargs)


def test_bad_tokenizer_schedule_or_images_get_clear_errors():
    with pytest.raises(TypeError, match=r"tokenizer must be a DualCodebookTokenizer or a MultiScaleVQTokenizer"):
        self_correction_encode(object(), _images(1), SCHEDULE)
    with pytest.raises(TypeError, match=r"schedule must be a ScaleSchedule"):
        self_correction_encode(TOKENIZER, _images(1), [(1, 1)])
    with pytest.raises(ValueError, match=r"images are 6x6"):
        self_correction_encode(TOKENIZER, _images(1, 6, 6), SCHEDULE)
