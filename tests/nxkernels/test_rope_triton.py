"""The Triton RoPE kernels themselves (``nxkernels.rope.triton.KERNELS``) and the op pinned to them at
fixed shapes: the backward is the inverse rotation, odd and empty shapes, batch dims that cannot be
viewed, the cached section index; real Qwen2.5-VL / NextStep-1 shapes on CUDA (``gpu``). The
hypothesis parity of both backends lives in test_rope.py. On CPU the kernel runs under the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported) at tiny shapes."""

import math

import pytest
import torch

pytest.importorskip("triton")

from nxkernels.rope import ROPE, apply_rope, apply_rope_qk, apply_rope_reference, rope_cos_sin  # noqa: E402
from nxkernels.rope import triton as rope_triton  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not rope_triton.INTERPRETED,
    reason="nxkernels.rope.triton was imported before TRITON_INTERPRET=1 was set (or it is set "
    "to 0), so its kernel is compiled for a GPU and there is no CUDA device; run this file alone "
    "or with TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def oracle(x, positions, inv_freq, sections=None):
    return apply_rope_reference(x, *rope_cos_sin(positions, inv_freq, sections))


def grid_positions(seq: int, gen: torch.Generator) -> torch.Tensor:
    """(scale, row, col) with fractional row/col, as NextFlow's multiscale 3D RoPE gives them."""
    side = max(1, math.isqrt(seq))
    i = torch.arange(seq, dtype=torch.float32)
    rows = 8.0 / side * (torch.div(i, side, rounding_mode="floor") + 0.5)
    cols = 8.0 / side * (torch.remainder(i, side) + 0.5)
    return torch.stack((torch.randint(0, 4, (seq,), generator=gen).float(), rows, cols), dim=1)


def inv_freq_for(pairs: int, theta: float = 1e4) -> torch.Tensor:
    return (theta ** (-torch.arange(pairs, dtype=torch.float64) / pairs)).float()


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual.float(), expected.float(), **ROPE.backend("triton").tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "sections"),
    [((1, 1, 2), None), ((5, 123, 18), None), ((2, 3, 5, 16), (2, 3, 3)), ((7, 16), (0, 5, 3)),
     ((1, 2, 9, 128), (16, 24, 24))],
)
def test_fixed_shapes_forward_and_grad(shape, sections, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype).requires_grad_()
    seq, pairs = shape[-2], shape[-1] // 2
    if sections:
        positions = grid_positions(seq, gen)
    else:
        positions = torch.arange(seq, dtype=torch.float32)[:, None] + 1000.25
    positions, inv_freq = positions.to(DEVICE), inv_freq_for(pairs).to(DEVICE)
    out = apply_rope(x, positions, inv_freq, sections, backend="triton")
    ref = oracle(x, positions, inv_freq, sections)
    _close(out, ref, dtype)
    dy = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    _close(torch.autograd.grad(out, x, dy)[0], torch.autograd.grad(ref, x, dy)[0], dtype)


def test_backward_kernel_is_the_inverse_rotation():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 8, generator=gen).to(DEVICE)
    positions = (torch.rand(4, 1, generator=gen) * 7).to(DEVICE)
    inv_freq = torch.rand(4, generator=gen).to(DEVICE)
    kernels = ROPE.backend("triton").load()
    assert kernels is rope_triton.KERNELS
    y = kernels["forward"](x, positions, inv_freq, [4])
    assert not torch.allclose(y, x)
    torch.testing.assert_close(kernels["backward"](y, positions, inv_freq, [4]), x, atol=1e-5, rtol=1e-5)


def test_non_viewable_batch_dims_and_stride_zero_rows():
    gen = torch.Generator().manual_seed(2)
    # 5-D with a permuted batch: the kernel's [outer, inner] view needs a copy, which must be right
    x = torch.randn(3, 2, 2, 5, 6, generator=gen).permute(1, 0, 2, 3, 4).to(DEVICE)
    positions, inv_freq = torch.rand(5, 1, generator=gen).to(DEVICE), torch.rand(3, generator=gen).to(DEVICE)
    _close(apply_rope(x, positions, inv_freq, backend="triton"), oracle(x, positions, inv_freq), torch.float32)
    e = torch.randn(1, 5, 6, generator=gen).to(DEVICE).expand(4, 5, 6)
    _close(apply_rope(e, positions, inv_freq, backend="triton"), oracle(e, positions, inv_freq), torch.float32)


def test_empty_batch():
    x = torch.randn(0, 3, 4, device=DEVICE)
    out = apply_rope(x, torch.zeros(3, 1, device=DEVICE), torch.ones(2, device=DEVICE), backend="triton")
    assert out.shape == x.shape


def test_section_index_is_the_axis_of_each_pair_and_is_cached():
    index = rope_triton.section_index((1, 0, 3), 4, DEVICE)
    assert index.dtype == torch.int32 and index.tolist() == [0, 2, 2, 2]
    assert rope_triton.section_index([1, 0, 3], 4, DEVICE) is index
    with pytest.raises(ValueError, match=r"sections \(1, 1\) sum to 2 but there are 4 pairs"):
        rope_triton.section_index((1, 1), 4, DEVICE)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "sections"), [(28, 4, (16, 24, 24)), (40, 8, None)], ids=["qwen2.5-vl", "nextstep-1"]
)
def test_real_shapes_on_cuda(dtype, heads, kv_heads, sections):
    gen = torch.Generator().manual_seed(3)
    tokens = 4096
    q = torch.randn(1, tokens, heads, 128, generator=gen).to("cuda", dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(1, kv_heads, tokens, 128, generator=gen).to("cuda", dtype).requires_grad_()
    positions = (grid_positions(tokens, gen) * 8 if sections else torch.arange(tokens)[:, None].float())
    positions, inv_freq = positions.to("cuda"), inv_freq_for(64, 1e6).to("cuda")
    assert ROPE.select(q, positions, inv_freq, sections).name == "triton"
    qo, ko = apply_rope_qk(q, k, positions, inv_freq, sections)
    want_q, want_k = oracle(q, positions, inv_freq, sections), oracle(k, positions, inv_freq, sections)
    _close(qo, want_q, dtype)
    _close(ko, want_k, dtype)
    dq, dk = torch.randn_like(qo), torch.randn_like(ko)
    got = torch.autograd.grad((qo, ko), (q, k), (dq, dk))
    want = torch.autograd.grad((want_q, want_k), (q, k), (dq, dk))
    for a, b in zip(got, want, strict=True):
        _close(a, b, dtype)
