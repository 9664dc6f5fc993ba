"""RoPE1D: positions are the token index, rotation is the nxkernels op, errors are clear."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.position import RoPE1D, RotaryPositionalEncoder, rope_inv_freq
from nxcore.schedule import Schedule
from nxcore.testing import strategies as nxst
from nxcore.testing.check_position import check_rotary_encoder
from nxkernels.rope import apply_rope_reference


def test_inv_freq_is_theta_to_minus_two_i_over_d():
    got = rope_inv_freq(8, 10000.0)
    expected = torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)])
    assert got.dtype == torch.float32 and got.shape == (4,)
    torch.testing.assert_close(got, expected)
    assert got[0] == 1.0
    with pytest.raises(ValueError, match=r"head_dim must be an even int >= 2.*got 7"):
        rope_inv_freq(7, 10000.0)
    with pytest.raises(ValueError, match=r"theta must be a finite number > 0.*got -1"):
        rope_inv_freq(8, -1.0)


def test_fields_and_validation():
    enc = RoPE1D(head_dim=64)
    assert isinstance(enc, RotaryPositionalEncoder)
    assert (enc.theta, enc.num_axes) == (10000.0, 1)
    with pytest.raises(ValueError, match=r"RoPE1D.head_dim must be an even int >= 2.*got 3"):
        RoPE1D(head_dim=3)
    with pytest.raises(ValueError, match=r"RoPE1D.theta must be a finite number > 0.*got 0"):
        RoPE1D(head_dim=4, theta=0)
    with pytest.raises(ValueError, match=r"got inf"):
        RoPE1D(head_dim=4, theta=float("inf"))


@given(nxst.layouts())
def test_positions_are_token_index(layout):
    pos = RoPE1D(head_dim=4).positions(layout)
    assert pos.dtype == torch.float32
    assert torch.equal(pos[:, 0], torch.arange(layout.length, dtype=torch.float32))


def test_rotation_matches_the_formula():
    enc = RoPE1D(head_dim=4, theta=100.0)
    layout = SequenceLayout.of(TextSpan(3))
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    out = enc.apply(x, enc.positions(layout))
    freqs = torch.tensor([1.0, 0.1])
    for n in range(3):
        for p in range(2):
            a = n * freqs[p]
            x1, x2 = x[..., n, p], x[..., n, p + 2]
            torch.testing.assert_close(out[..., n, p], x1 * math.cos(a) - x2 * math.sin(a))
            torch.testing.assert_close(out[..., n, p + 2], x2 * math.cos(a) + x1 * math.sin(a))
    assert torch.equal(out, apply_rope_reference(x, *_cos_sin(enc, 3)))


def _cos_sin(enc, seq):
    inv_freq = rope_inv_freq(enc.head_dim, enc.theta)
    angles = torch.arange(seq, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat((angles, angles), -1)
    return angles.cos(), angles.sin()


@given(st.integers(1, 40), st.integers(-20, 20), st.sampled_from([2, 8, 32]))
def test_scores_depend_only_on_offset(n, shift, head_dim):
    enc = RoPE1D(head_dim=head_dim)
    gen = torch.Generator().manual_seed(n)
    q, k = torch.randn(2, 1, head_dim, generator=gen)
    def score(m, j):
        qr = enc.apply(q, torch.tensor([[float(m)]]))
        kr = enc.apply(k, torch.tensor([[float(j)]]))
        return float((qr * kr).sum())
    assert score(n, 0) == pytest.approx(score(n + shift, shift), rel=1e-4, abs=1e-4)


def test_conformance_on_a_mixed_layout():
    layout = SequenceLayout.of(TextSpan(2), DiscreteImage(Schedule(steps=((1, 1), (2, 2)))))
    for enc in RoPE1D.examples():
        check_rotary_encoder(enc, layout)


def test_apply_rejects_mismatched_inputs():
    enc = RoPE1D(head_dim=8)
    pos = enc.positions(SequenceLayout.of(TextSpan(5)))
    with pytest.raises(ValueError, match=r"head_dim = 8 \(RoPE1D.head_dim\), got \(5, 6\)"):
        enc.apply(torch.randn(5, 6), pos)
    with pytest.raises(ValueError, match=r"positions must be \[5, 1\]"):
        enc.apply(torch.randn(5, 8), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"positions has shape \(5, 1\) but x has seq = 4"):
        enc.apply(torch.randn(4, 8), pos)
    with pytest.raises(ValueError, match=r"positions is on meta but x is on cpu"):
        enc.apply(torch.randn(5, 8), pos.to("meta"))


def test_positions_on_a_device():
    pos = RoPE1D(head_dim=2).positions(SequenceLayout.of(TextSpan(3)), device="meta")
    assert pos.device.type == "meta" and pos.shape == (3, 1)


def test_inv_freq_fast_path_still_refuses_what_validation_refuses():
    assert rope_inv_freq(8, 1) is rope_inv_freq(8, 1)  # memoised (validated once)
    with pytest.raises(ValueError, match=r"theta must be a finite number > 0.*got True"):
        rope_inv_freq(8, True)  # True == 1 must not hit the memo of theta = 1


def test_a_prepared_rotation_is_apply_and_steps_aside_for_autograd():
    from nxcore.position import MultiscaleRoPE3D, Rotation

    g = torch.Generator().manual_seed(0)
    for enc, axes in ((RoPE1D(head_dim=8, theta=100.0), 1), (MultiscaleRoPE3D(head_dim=8, theta=100.0), 3)):
        pos = 5 * torch.rand(6, axes, generator=g)
        rotation = enc.rotation(pos)
        assert isinstance(rotation, Rotation)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(2, 3, 6, 8, generator=g).to(dtype)
            with torch.no_grad():
                assert torch.equal(rotation(x), enc.apply(x, pos))
                assert torch.equal(rotation(x[:1]), enc.apply(x[:1], pos))  # another batch: same kernel
        x = torch.randn(2, 6, 8, requires_grad=True)
        rotation(x).sum().backward()  # with gradients: through apply (the custom op)
        assert x.grad is not None
        with torch.no_grad(), pytest.raises(ValueError, match="x must be"):
            rotation(torch.randn(2, 6, 4))
