import pytest
import torch

from nxcore.head import IGNORE_INDEX
from nxcore.layout import DiscreteImage, TextSpan
from nxrecipes.nextflow import Example, Image, Text, collate


def test_an_image_row_predicts_boi_then_every_code_and_never_eoi(world):
    codes = world.codes(1)
    prompt = world.ids("a red circle")
    ex = Example([Text(prompt, loss=False), Image.of([c[0] for c in codes], world.schedule), Text([7, 8])])
    batch = collate([ex], world.vocab, alpha=0.9)
    v = world.vocab
    n, total = len(prompt), world.schedule.total_tokens
    ids, targets, weights = batch.ids[0], batch.targets[0], batch.weights[0]
    assert (targets[: n - 1] == IGNORE_INDEX).all()  # the prompt carries no loss
    assert targets[n - 1] == v.special_id("<boi>")
    assert ids[n] == v.special_id("<boi>")  # the 1x1 first step reads <boi>
    flat = torch.cat([c[0].reshape(-1) for c in codes]) + v.code_range[0]
    torch.testing.assert_close(targets[n : n + total], flat)
    assert ids[n + total] == v.special_id("<eoi>")
    # <eoi> is never a target; the token at <eoi> predicts the text after it
    assert (targets != v.special_id("<eoi>")).all()
    assert targets[n + total] == 7 and targets[n + total + 1] == 8
    assert targets[-1] == IGNORE_INDEX
    # the image's weights sum to its token count (Eq. 2 normalisation), the first scale weighs most
    image_w = weights[n : n + total]
    assert image_w.sum().item() == pytest.approx(total, rel=1e-5)
    assert image_w[0] > image_w[1] > image_w[-1]
    assert batch.layouts[0].segments == (TextSpan(n), DiscreteImage(world.schedule), TextSpan(3))


def test_alpha_zero_weighs_every_image_token_alike(world):
    codes = world.codes(1)
    ex = Example([Text([5]), Image.of([c[0] for c in codes], world.schedule)])
    weights = collate([ex], world.vocab, alpha=0.0).weights[0]
    assert torch.allclose(weights[1 : 1 + world.schedule.total_tokens], torch.ones(world.schedule.total_tokens))


def test_context_images_and_self_corrected_inputs(world):
    clean, other = world.codes(1), world.codes(1, seed=3)
    source = Image.of([c[0] for c in clean], world.schedule, loss=False)
    target = Image(world.schedule, [c[0] for c in other], [c[0] for c in clean])
    batch = collate([Example([source, Text([9], loss=False), target])], world.vocab)
    total = world.schedule.total_tokens
    assert (batch.targets[0, : total + 1] == IGNORE_INDEX).all()  # source image and instruction
    # the targets are the clean codes, the inputs (held by the image group) the corrupted ones
    start = total + 2
    flat = torch.cat([c[0].reshape(-1) for c in clean]) + world.vocab.code_range[0]
    torch.testing.assert_close(batch.targets[0, start : start + total], flat)
    (group,) = batch.images
    assert group.starts.tolist() == [0, start]
    torch.testing.assert_close(group.inputs[2][1], other[2][0])


def test_rows_are_right_padded_and_grouped_by_schedule(world):
    codes = world.codes(2)
    a = Example([Text([5, 6, 7]), Image.of([c[0] for c in codes], world.schedule)])
    b = Example([Text([5]), Image.of([c[1] for c in codes], world.schedule)])
    batch = collate([a, b], world.vocab)
    assert batch.lengths == (3 + 22, 1 + 22)
    assert batch.ids.shape == (2, 25)
    assert (batch.targets[1, 23:] == IGNORE_INDEX).all() and (batch.weights[1, 23:] == 0).all()
    (group,) = batch.images
    assert group.rows.tolist() == [0, 1] and group.starts.tolist() == [3, 1]


def test_bad_parts(world):
    with pytest.raises(ValueError, match=r"Image.inputs has grids \[\(1, 1\)\] but the schedule's steps"):
        Image(world.schedule, [torch.zeros(1, 1, dtype=torch.long)], [torch.zeros(1, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match="Text.ids is empty"):
        Text([])
    with pytest.raises(TypeError, match="Example.parts must hold Text or Image parts, got str"):
        collate([Example(["hello"])], world.vocab)
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        collate([Example([Text([1])])], world.vocab, alpha=-1)
