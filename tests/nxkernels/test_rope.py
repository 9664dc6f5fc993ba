"""The RoPE reference against an independent complex-number formulation, plus dtypes, odd shapes
and input errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.testing import strategies as nxst
from nxkernels.rope import apply_rope, apply_rope_reference, rope_cos_sin, rotate_half


def complex_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE as complex multiplication: z_p = x_p + i x_{p+P}, z_p * exp(i angle_p)."""
    pairs = x.shape[-1] // 2
    z = torch.complex(x[..., :pairs].double(), x[..., pairs:].double())
    z = z * torch.polar(torch.ones_like(angles, dtype=torch.float64), angles.double())
    return torch.cat((z.real, z.imag), dim=-1)


def loop_angles(positions, inv_freq, sections):
    """angles[n, p] = positions[n, axis of p] * inv_freq[p], by plain Python loops in fp64."""
    axis_of = [a for a, count in enumerate(sections) for _ in range(count)]
    seq, pairs = positions.shape[0], inv_freq.shape[0]
    out = torch.empty(seq, pairs, dtype=torch.float64)
    for n in range(seq):
        for p in range(pairs):
            out[n, p] = float(positions[n, axis_of[p]]) * float(inv_freq[p])
    return out


@st.composite
def rope_inputs(draw):
    pairs = draw(st.integers(1, 6))
    axes = draw(st.integers(1, 3))
    cuts = sorted(draw(st.lists(st.integers(0, pairs), min_size=axes - 1, max_size=axes - 1)))
    sections = tuple(b - a for a, b in zip([0, *cuts], [*cuts, pairs], strict=True))
    (x, pos) = draw(nxst.named_tensors(
        "batch seq head_dim", "seq axes", sizes={"head_dim": 2 * pairs, "axes": axes}, scale=3.0
    ))
    inv_freq = torch.rand(pairs, generator=torch.Generator().manual_seed(pairs)) + 0.01
    return x, pos, inv_freq, sections


@given(rope_inputs())
def test_reference_matches_complex_formulation(inputs):
    x, positions, inv_freq, sections = inputs
    cos, sin = rope_cos_sin(positions, inv_freq, sections)
    angles = loop_angles(positions, inv_freq, sections)
    torch.testing.assert_close(cos.double(), torch.cat((angles, angles), -1).cos(),
                               rtol=0, atol=1e-5)
    out = apply_rope_reference(x, cos, sin)
    torch.testing.assert_close(out.double(), complex_rope(x, angles), rtol=1e-5, atol=1e-5)
    assert torch.equal(apply_rope(x, cos, sin), out)


def test_rotate_half_is_quarter_turn():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)


def test_single_pair_rotates_by_position_times_frequency():
    x = torch.tensor([[1.0, 0.0]])
    cos, sin = rope_cos_sin(torch.tensor([[0.75]]), torch.tensor([2.0]))
    out = apply_rope_reference(x, cos, sin)
    torch.testing.assert_close(out, torch.tensor([[math.cos(1.5), math.sin(1.5)]]))


def test_fractional_positions_need_no_table():
    pos = torch.tensor([[0.25], [1.5], [2.125]])
    cos, sin = rope_cos_sin(pos, torch.tensor([1.0, 0.5]))
    expected = pos * torch.tensor([1.0, 0.5])
    torch.testing.assert_close(cos, torch.cat((expected, expected), -1).cos())
    torch.testing.assert_close(sin, torch.cat((expected, expected), -1).sin())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_result_keeps_input_dtype_and_math_is_fp32(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 16, generator=gen)
    pos = torch.rand(7, 1, generator=gen) * 50
    inv_freq = 10000.0 ** -(torch.arange(0, 16, 2) / 16)
    cos, sin = rope_cos_sin(pos, inv_freq)
    out = apply_rope_reference(x.to(dtype), cos, sin)
    assert out.dtype == dtype
    exact = apply_rope_reference(x.to(dtype).double(), cos.double(), sin.double()).to(dtype)
    if dtype in (torch.bfloat16, torch.float16):
        # fp32 math, one rounding at the end: (nearly) every element is the correctly rounded one;
        # doing the math in the half dtype would round the products and the sum as well
        assert (out == exact).float().mean() > 0.99
    torch.testing.assert_close(out, exact, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)


def test_fp64_positions_give_fp64_angles():
    cos, _ = rope_cos_sin(torch.tensor([[1e7 + 0.5]], dtype=torch.float64),
                          torch.tensor([1.0], dtype=torch.float64))
    assert cos.dtype == torch.float64
    assert cos[0, 0].item() == pytest.approx(math.cos(1e7 + 0.5), abs=1e-9)


@pytest.mark.parametrize("shape", [(5, 123, 18), (3, 4, 7, 9, 6), (1, 2), (123, 2)])
def test_odd_shapes_and_length_one(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    seq, head_dim = shape[-2], shape[-1]
    pos = torch.randn(seq, 1, generator=gen) * 10
    inv_freq = torch.rand(head_dim // 2, generator=gen)
    cos, sin = rope_cos_sin(pos, inv_freq)
    out = apply_rope(x, cos, sin)
    assert out.shape == x.shape
    angles = loop_angles(pos, inv_freq, (head_dim // 2,))
    torch.testing.assert_close(out.double(), complex_rope(x, angles), rtol=1e-5, atol=1e-5)


def test_rotation_preserves_norm_and_zero_is_identity():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 9, 10, generator=gen)
    inv_freq = torch.rand(5, generator=gen)
    cos, sin = rope_cos_sin(torch.randn(9, 1, generator=gen) * 100, inv_freq)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope_cos_sin(torch.zeros(9, 1), inv_freq)
    assert torch.equal(apply_rope(x, cos0, sin0), x)


def test_errors_name_the_argument_and_the_fix():
    x = torch.randn(2, 5, 8)
    cos, sin = rope_cos_sin(torch.zeros(5, 1), torch.ones(4))
    with pytest.raises(ValueError, match=r"head_dim 7.*even"):
        apply_rope(torch.randn(5, 7), torch.zeros(5, 7), torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"cos has shape \(4, 8\).*must be \[5, 8\]"):
        apply_rope(x, cos[:4], sin[:4])
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions"):
        apply_rope(torch.randn(8), cos, sin)
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype"):
        apply_rope(torch.ones(5, 8, dtype=torch.int64), cos, sin)
    with pytest.raises(TypeError, match=r"cos must be a torch.Tensor"):
        apply_rope(x, 1.0, sin)
    with pytest.raises(ValueError, match=r"cos is on meta but x is on cpu"):
        apply_rope(x, cos.to("meta"), sin)
    with pytest.raises(ValueError, match=r"sections \(2, 1\) sum to 3.*4 pairs"):
        rope_cos_sin(torch.zeros(5, 2), torch.ones(4), (2, 1))
    with pytest.raises(ValueError, match=r"sections \(4,\) has 1 entries but positions has 3 axes"):
        rope_cos_sin(torch.zeros(5, 3), torch.ones(4), (4,))
    with pytest.raises(ValueError, match=r"positions has 3 axes but sections is None"):
        rope_cos_sin(torch.zeros(5, 3), torch.ones(4))
    with pytest.raises(ValueError, match=r"sections must be ints >= 0"):
        rope_cos_sin(torch.zeros(5, 2), torch.ones(4), (5, -1))
    with pytest.raises(TypeError, match=r"positions must have a floating-point dtype"):
        rope_cos_sin(torch.zeros(5, 1, dtype=torch.int64), torch.ones(4))
    with pytest.raises(ValueError, match=r"inv_freq is empty"):
        rope_cos_sin(torch.zeros(5, 1), torch.ones(0))
