import pytest
import torch
from hypothesis import given

from nxcore.layout import (
    ContinuousImage,
    DiscreteImage,
    Modality,
    SequenceLayout,
    TextSpan,
    scale_weights,
)
from nxcore.schedule import Schedule
from nxcore.testing import strategies as nxst


def _brute_force_mask(layout: SequenceLayout) -> torch.Tensor:
    """Mask from the definition, token by token: a token sees every earlier token, plus all of its
    own scale when it is an image token of a discrete image."""
    t = layout.tokens()
    n = layout.length
    mask = torch.zeros(n, n, dtype=torch.bool)
    discrete = {span.index for span in layout.images if isinstance(span.segment, DiscreteImage)}
    for q in range(n):
        for k in range(n):
            same_scale = (
                int(t.image_index[q]) in discrete
                and t.image_index[q] == t.image_index[k]
                and t.scale_index[q] == t.scale_index[k]
            )
            mask[q, k] = k <= q or bool(same_scale)
    return mask


@given(nxst.layouts())
def test_mask_matches_the_definition(layout):
    assert torch.equal(layout.attention_mask(), _brute_force_mask(layout))


@given(nxst.layouts())
def test_block_description_reproduces_the_mask(layout):
    blocks = layout.attention_blocks()
    assert blocks.starts[0] == 0 and blocks.ends[-1] == layout.length
    assert torch.equal(blocks.starts[1:], blocks.ends[:-1])  # blocks tile the sequence in order
    n = layout.length
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for s, e, c in zip(blocks.starts.tolist(), blocks.ends.tolist(), blocks.causal.tolist(), strict=True):
        rows = (q >= s) & (q < e)
        inside = k <= q if c else k < e
        mask |= rows & inside
    assert torch.equal(mask, layout.attention_mask())


@given(nxst.layouts())
def test_token_table_is_consistent(layout):
    t = layout.tokens()
    n = layout.length
    for field in ("modality", "image_index", "scale_index", "grid_i", "grid_j", "text_index", "position"):
        assert getattr(t, field).shape == (n,) and getattr(t, field).dtype == torch.int64
    text = t.modality == Modality.TEXT
    assert int(text.sum()) == layout.num_text_tokens
    assert torch.equal(t.text_index[text], torch.arange(layout.num_text_tokens))
    assert (t.image_index[text] == -1).all() and (t.scale_index[text] == -1).all()
    image = ~text
    assert ((t.grid_i[image] >= 0) & (t.grid_i[image] < t.grid_h[image])).all()
    assert ((t.grid_j[image] >= 0) & (t.grid_j[image] < t.grid_w[image])).all()
    assert torch.equal(t.position, torch.arange(n))
    for span in layout.images:
        assert (t.image_index[span.start : span.end] == span.index).all()
        counts = [h * w for h, w in span.steps]
        assert span.end - span.start == sum(counts)


def test_token_table_of_a_small_layout():
    layout = SequenceLayout.of(TextSpan(2), DiscreteImage(Schedule(((1, 1), (2, 3)))), TextSpan(1))
    t = layout.tokens()
    assert t.modality.tolist() == [0, 0] + [1] * 7 + [0]
    assert t.scale_index.tolist() == [-1, -1, 0, 1, 1, 1, 1, 1, 1, -1]
    assert t.grid_i.tolist() == [-1, -1, 0, 0, 0, 0, 1, 1, 1, -1]
    assert t.grid_j.tolist() == [-1, -1, 0, 0, 1, 2, 0, 1, 2, -1]
    assert t.text_index.tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]
    assert layout.kv_end().tolist() == [1, 2, 3, 9, 9, 9, 9, 9, 9, 10]


def test_continuous_images_are_causal_token_by_token():
    layout = SequenceLayout.of(TextSpan(1), ContinuousImage(2, 2))
    assert layout.kv_end().tolist() == [1, 2, 3, 4, 5]
    assert layout.attention_blocks().num_blocks == 1  # causal runs merge


@given(nxst.schedules(max_steps=8), nxst.grids())
def test_scale_weights_keep_the_total_vision_weight(schedule, _):
    for alpha in (0.0, 0.5, 0.9, 2.0):
        w = scale_weights(schedule.steps, alpha)
        assert w.shape == (schedule.total_tokens,)
        assert torch.isclose(w.sum(), torch.tensor(float(schedule.total_tokens)), rtol=1e-5)


def test_scale_weights_follow_eq2():
    steps = ((1, 1), (2, 2), (4, 4))
    w = scale_weights(steps, 0.9)
    per_scale = [w[0], w[1], w[5]]
    # k_s = 1 / (h_s w_s)^alpha, so the ratio of scales 1 and 3 is 16^0.9
    assert torch.isclose(per_scale[0] / per_scale[2], torch.tensor(16.0**0.9))
    assert torch.isclose(per_scale[1] / per_scale[2], torch.tensor(4.0**0.9))
    assert torch.allclose(scale_weights(steps, 0.0), torch.ones(21))


def test_loss_weights_by_segment():
    s = Schedule(((1, 1), (2, 2)))
    layout = SequenceLayout.of(TextSpan(3), DiscreteImage(s), ContinuousImage(1, 2))
    w = layout.loss_weights(alpha=0.9, text_weight=0.5)
    assert w[:3].tolist() == [0.5, 0.5, 0.5]
    assert torch.allclose(w[3:8], scale_weights(s.steps, 0.9))
    assert w[8:].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        layout.loss_weights(alpha=-1.0)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: SequenceLayout(()), ValueError, "at least one segment"),
        (lambda: SequenceLayout.of("text"), TypeError, r"segments\[0\] must be TextSpan"),
        (lambda: TextSpan(0), ValueError, "TextSpan.length must be an int >= 1, got 0"),
        (lambda: ContinuousImage(2, -1), ValueError, "ContinuousImage.w must be an int >= 1, got -1"),
        (lambda: DiscreteImage(((1, 1), (2, 2))), TypeError, "must implement ScaleSchedule"),
    ],
)
def test_bad_segments(make, error, message):
    with pytest.raises(error, match=message):
        make()
