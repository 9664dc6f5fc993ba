"""Additive encoders: learned scale embedding, sinusoidal scale-length embedding, sinusoidal grid
position, VAR positions."""

import math

import pytest
import torch
from hypothesis import given

from nxcore.layout import ContinuousImage, DiscreteImage, SequenceLayout, TextSpan
from nxcore.position import (
    AdditivePositionalEncoder,
    GridPositionEmbedding,
    LearnedAbsolutePosition,
    LearnedScaleEmbedding,
    ScaleLengthEmbedding,
)
from nxcore.schedule import Schedule
from nxcore.testing import strategies as nxst
from nxcore.testing.check_position import check_additive_encoder

S3 = Schedule(steps=((1, 1), (2, 2), (3, 3)))


def image_rows(layout):
    return layout.tokens().modality == 1


# --- LearnedScaleEmbedding -----------------------------------------------------------------

@given(nxst.layouts(max_steps=4))
def test_scale_embedding_rows_are_the_scale_vectors(layout):
    enc = LearnedScaleEmbedding(max_scales=4, dim=6)
    out = enc(layout)
    table = layout.tokens()
    img = image_rows(layout)
    assert out.shape == (layout.length, 6)
    assert bool((out[~img] == 0).all())
    assert torch.equal(out[img], enc.embed.weight[table.scale_index[img]])
    check_additive_encoder(enc, layout)


def test_scale_embedding_init_dtype_and_errors():
    enc = LearnedScaleEmbedding(max_scales=18, dim=512)
    assert isinstance(enc, AdditivePositionalEncoder) and enc.dim == 512
    assert float(enc.embed.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert abs(float(enc.embed.weight.detach().mean())) < 0.002
    assert enc(SequenceLayout.of(DiscreteImage(S3))).dtype == torch.float32
    assert enc.to(torch.float64)(SequenceLayout.of(DiscreteImage(S3))).dtype == torch.float64
    small = LearnedScaleEmbedding(max_scales=2, dim=4)
    with pytest.raises(ValueError, match=r"scale index 2 .*max_scales = 2; build it with "
                                         r"max_scales >= 3"):
        small(SequenceLayout.of(TextSpan(1), DiscreteImage(S3)))
    with pytest.raises(ValueError, match=r"max_scales must be an int >= 1, got 0"):
        LearnedScaleEmbedding(max_scales=0, dim=4)
    with pytest.raises(TypeError, match=r"takes a SequenceLayout, got list"):
        small([TextSpan(1)])


def test_scale_embedding_is_trainable():
    enc = LearnedScaleEmbedding(max_scales=3, dim=4)
    enc(SequenceLayout.of(TextSpan(2), DiscreteImage(S3))).sum().backward()
    counts = torch.tensor([1.0, 4.0, 9.0])[:, None].expand(3, 4)
    assert torch.equal(enc.embed.weight.grad, counts)


# --- ScaleLengthEmbedding ------------------------------------------------------------------

def _image(k):
    return DiscreteImage(Schedule(steps=tuple((s + 1, s + 1) for s in range(k))))


def test_scale_length_tells_k10_from_k13_and_is_constant_over_an_image():
    enc = ScaleLengthEmbedding(dim=32)
    layout = SequenceLayout.of(TextSpan(2), _image(10), TextSpan(1), _image(13))
    out = enc(layout)
    table = layout.tokens()
    first, second = out[table.image_index == 0], out[table.image_index == 1]
    assert bool((first == first[0]).all()) and bool((second == second[0]).all())
    assert float((first[0] - second[0]).abs().max()) > 0.1
    assert bool((out[table.modality == 0] == 0).all())
    # the vector depends on K only: the same K elsewhere in another layout is the same vector
    alone = enc(SequenceLayout.of(_image(13)))
    assert torch.equal(alone[0], second[0])


def test_scale_length_formula_cos_half_first():
    enc = ScaleLengthEmbedding(dim=6, max_period=100.0)
    out = enc(SequenceLayout.of(_image(4)))[0].double()
    freqs = [100.0 ** (-i / 3) for i in range(3)]
    expected = [math.cos(4 * f) for f in freqs] + [math.sin(4 * f) for f in freqs]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    odd = ScaleLengthEmbedding(dim=5)(SequenceLayout.of(ContinuousImage(2, 2)))
    assert odd.shape == (4, 5) and bool((odd[:, -1] == 0).all())
    assert odd[0, 0] == pytest.approx(math.cos(1.0))  # a continuous image has K = 1


def test_scale_length_is_not_learned_and_follows_dtype():
    enc = ScaleLengthEmbedding(dim=8)
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
    layout = SequenceLayout.of(TextSpan(1), _image(3))
    assert enc(layout).dtype == torch.float32
    assert enc.to(torch.bfloat16)(layout).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"max_period must be a finite number > 1.*got 0.5"):
        ScaleLengthEmbedding(dim=8, max_period=0.5)


# --- GridPositionEmbedding -----------------------------------------------------------------

def test_grid_position_formula_on_a_2x2_grid():
    enc = GridPositionEmbedding(dim=8, range_factor=4.0)  # 2 frequencies: pi and pi / 8
    out = enc(SequenceLayout.of(TextSpan(1), DiscreteImage(Schedule(steps=((2, 2),))))).double()
    assert bool((out[0] == 0).all())
    freqs = (math.pi, math.pi / 8)
    for cell, (r, c) in enumerate([(1, 1), (1, 3), (3, 1), (3, 3)]):
        expected = ([math.cos(r * f) for f in freqs] + [math.sin(r * f) for f in freqs]
                    + [math.cos(c * f) for f in freqs] + [math.sin(c * f) for f in freqs])
        assert out[1 + cell].tolist() == pytest.approx(expected, abs=1e-6)


def test_grid_position_tells_every_cell_of_a_grid_apart_and_keeps_a_place_across_grids():
    enc = GridPositionEmbedding(dim=32, range_factor=16.0)
    steps = ((1, 1), (3, 3), (4, 8), (16, 16))
    out = enc(SequenceLayout.of(DiscreteImage(Schedule(steps=steps))))
    start = 0
    for h, w in steps:
        grid = out[start : start + h * w]
        gaps = torch.cdist(grid, grid) + torch.eye(h * w) * 1e9
        assert float(gaps.min()) > 0.1, (h, w)
        start += h * w
    # the picture's centre: the 1x1 cell and the middle cell of the 3x3 grid
    torch.testing.assert_close(out[0], out[1 + 4])


@given(nxst.layouts(max_steps=4))
def test_grid_position_passes_the_additive_check(layout):
    enc = GridPositionEmbedding(dim=12, range_factor=8.0)
    out = enc(layout)
    assert out.shape == (layout.length, 12)
    assert bool((out[~image_rows(layout)] == 0).all())
    check_additive_encoder(enc, layout)


def test_grid_position_is_not_learned_follows_dtype_and_checks_its_range():
    enc = GridPositionEmbedding(dim=7, range_factor=16.0)
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
    layout = SequenceLayout.of(TextSpan(1), ContinuousImage(2, 3))
    out = enc(layout)
    assert out.shape == (7, 7) and out.dtype == torch.float32 and bool((out[:, 4:] == 0).all())
    assert enc.to(torch.bfloat16)(layout).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"range_factor must be a finite number > 0.*got 0"):
        GridPositionEmbedding(dim=8, range_factor=0)
    with pytest.raises(ValueError, match=r"dim must be an int >= 1, got 0"):
        GridPositionEmbedding(dim=0, range_factor=4.0)


# --- LearnedAbsolutePosition ---------------------------------------------------------------

def test_var_absolute_positions_keep_var_names_and_shapes():
    enc = LearnedAbsolutePosition(S3, dim=16)
    state = enc.state_dict()
    assert set(state) == {"pos_1LC", "lvl_embed.weight"}
    assert state["pos_1LC"].shape == (1, 14, 16)
    assert state["lvl_embed.weight"].shape == (3, 16)
    wide = LearnedAbsolutePosition(S3, dim=256)  # VAR's init: std sqrt(1 / (3 dim))
    assert float(wide.pos_1LC.detach().std()) == pytest.approx(math.sqrt(1 / 768), rel=0.1)
    var_state = {"pos_1LC": torch.randn(1, 14, 16), "lvl_embed.weight": torch.randn(3, 16)}
    enc.load_state_dict(var_state, strict=True)
    assert torch.equal(enc.pos_1LC, var_state["pos_1LC"])


def test_var_absolute_positions_values():
    enc = LearnedAbsolutePosition(S3, dim=4)
    layout = SequenceLayout.of(TextSpan(2), DiscreteImage(S3), TextSpan(1), DiscreteImage(S3))
    out = enc(layout)
    table = layout.tokens()
    assert out.shape == (layout.length, 4)
    assert bool((out[table.modality == 0] == 0).all())
    expected = enc.pos_1LC[0] + enc.lvl_embed.weight[table.scale_index[table.image_index == 0]]
    assert torch.equal(out[table.image_index == 0], expected)
    assert torch.equal(out[table.image_index == 1], expected)
    out.sum().backward()
    assert torch.equal(enc.pos_1LC.grad, torch.full((1, 14, 4), 2.0))
    check_additive_encoder(enc)  # uses enc.example_layout()


def test_var_absolute_positions_reject_another_schedule():
    enc = LearnedAbsolutePosition(S3, dim=4)
    other = Schedule(steps=((1, 1), (2, 2)))
    with pytest.raises(ValueError, match=r"steps \(\(1, 1\), \(2, 2\)\) but LearnedAbsolute"
                       r"Position was built for steps \(\(1, 1\), \(2, 2\), \(3, 3\)\)"):
        enc(SequenceLayout.of(TextSpan(1), DiscreteImage(other)))
    with pytest.raises(ValueError, match=r"was built for steps"):
        enc(SequenceLayout.of(ContinuousImage(3, 3)))
    with pytest.raises(TypeError, match=r"schedule must implement ScaleSchedule, got tuple"):
        LearnedAbsolutePosition(((1, 1), (2, 2)), dim=4)
    assert enc(SequenceLayout.of(TextSpan(3))).abs().sum() == 0
