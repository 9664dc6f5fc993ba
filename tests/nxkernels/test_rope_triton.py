"""The Triton RoPE against the reference: outputs and x gradients, 1D and 3-section multiscale
(fractional positions), odd shapes, non-contiguous views, fp32/fp16/bf16 with the backend's
declared tolerances. On CPU the kernel runs under the Triton interpreter at tiny shapes."""

# tests/conftest.py sets TRITON_INTERPRET=1 when there is no CUDA, before triton is imported.
import math  # noqa: E402
import os

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton")

from nxkernels.rope import triton as rope_triton  # noqa: E402
from nxkernels.rope.triton import (  # noqa: E402
    ATOL,
    RTOL,
    RoPETriton,
    apply_rope_qk_triton,
    apply_rope_triton,
    rope_reference_from_positions,
    section_index,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not rope_triton.INTERPRETED,
    reason="nxkernels.rope.triton was imported before TRITON_INTERPRET=1 was set (or it is set "
    "to 0), so its kernel is compiled for a GPU and there is no CUDA device; run this file alone "
    "or with TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def fractional_positions(seq: int, gen: torch.Generator) -> torch.Tensor:
    """NextFlow-like 3D positions: (scale, row, col) with row/col = C / sqrt(HW) * (i + 0.5)."""
    side = max(1, math.isqrt(seq))
    i = torch.arange(seq, dtype=torch.float32)
    scale = 8.0 / math.sqrt(side * side)
    rows = scale * (torch.div(i, side, rounding_mode="floor") + 0.5)
    cols = scale * (torch.remainder(i, side) + 0.5)
    level = torch.randint(0, 4, (seq,), generator=gen).float()
    return torch.stack((level, rows, cols), dim=1)


@st.composite
def rope_case(draw):
    pairs = draw(st.integers(1, 9), label="pairs")
    axes = draw(st.sampled_from([1, 3]), label="axes")
    if axes == 3:
        cuts = sorted(draw(st.lists(st.integers(0, pairs), min_size=2, max_size=2)))
        sections = (cuts[0], cuts[1] - cuts[0], pairs - cuts[1])
    else:
        sections = None
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3), label="batch"))
    seq = draw(st.integers(1, 9), label="seq")
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]), label="layout")
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    head_dim = 2 * pairs
    if layout == "transposed" and len(batch) >= 1:
        # [*b, seq, h, d] -> transpose -> [*b, h, seq, d] (the usual [B, S, H, D] projection view)
        *outer, heads = batch
        x = torch.randn((*outer, seq, heads, head_dim), generator=gen).transpose(-3, -2)
    elif layout == "strided":
        x = torch.randn((*batch, seq, 2 * head_dim), generator=gen)[..., ::2]
    else:
        x = torch.randn((*batch, seq, head_dim), generator=gen)
    x = (x * 2).to(dtype)
    if axes == 3:
        positions = fractional_positions(seq, gen)
    elif draw(st.booleans(), label="fractional"):
        positions = torch.rand(seq, 1, generator=gen) * 50
    else:
        positions = torch.arange(seq, dtype=torch.float32)[:, None] + draw(st.integers(0, 4000))
    inv_freq = 10000.0 ** (-torch.arange(pairs, dtype=torch.float32) / pairs)
    return x.to(DEVICE), positions.to(DEVICE), inv_freq.to(DEVICE), sections


def _close(actual, expected, dtype):
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=ATOL[dtype], rtol=RTOL[dtype]
    )


@SETTINGS
@given(rope_case())
def test_forward_and_grad_match_reference(case):
    x, positions, inv_freq, sections = case
    x = x.detach().requires_grad_(True)
    out = apply_rope_triton(x, positions, inv_freq, sections)
    ref = rope_reference_from_positions(x, positions, inv_freq, sections)
    assert out.shape == x.shape and out.dtype == x.dtype
    _close(out, ref, x.dtype)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(ref, x, grad)
    assert gx.dtype == x.dtype
    _close(gx, gr, x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "sections"),
    [((1, 1, 1, 2), None), ((2, 3, 5, 10), None), ((2, 3, 5, 16), (2, 3, 3)), ((7, 16), (2, 3, 3))],
)
def test_fixed_shapes(shape, sections, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype).to(DEVICE).requires_grad_(True)
    seq, pairs = shape[-2], shape[-1] // 2
    positions = (
        fractional_positions(seq, gen) if sections else torch.arange(seq, dtype=torch.float32)[:, None]
    ).to(DEVICE)
    inv_freq = (1e4 ** (-torch.arange(pairs, dtype=torch.float32) / pairs)).to(DEVICE)
    out = apply_rope_triton(x, positions, inv_freq, sections)
    ref = rope_reference_from_positions(x, positions, inv_freq, sections)
    _close(out, ref, dtype)
    out.float().square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    ref.float().square().sum().backward()
    _close(gx, x.grad, dtype)


def test_backward_is_inverse_rotation():
    x = torch.randn(2, 3, 4, 8, device=DEVICE)
    positions = torch.rand(4, 1, device=DEVICE) * 7
    inv_freq = torch.rand(4, device=DEVICE)
    index = section_index(None, 4, device=DEVICE)
    y = RoPETriton.apply(x, positions, inv_freq, index)
    back = rope_triton._launch(y, positions, inv_freq, index, backward=True)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


def test_qk_together():
    q = torch.randn(1, 4, 3, 8, device=DEVICE)
    k = torch.randn(1, 2, 3, 8, device=DEVICE)
    positions = torch.rand(3, 3, device=DEVICE)
    inv_freq = torch.rand(4, device=DEVICE)
    qo, ko = apply_rope_qk_triton(q, k, positions, inv_freq, (1, 1, 2))
    _close(qo, rope_reference_from_positions(q, positions, inv_freq, (1, 1, 2)), torch.float32)
    _close(ko, rope_reference_from_positions(k, positions, inv_freq, (1, 1, 2)), torch.float32)


def test_empty_batch():
    x = torch.randn(0, 3, 4, device=DEVICE)
    out = apply_rope_triton(x, torch.zeros(3, 1, device=DEVICE), torch.ones(2, device=DEVICE))
    assert out.shape == x.shape


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sections": (1, 1)}, "sections"),
        ({"sections": (1, 1, 1)}, "sum to"),
        ({"positions": torch.zeros(5, 3)}, "rows"),
        ({"inv_freq": torch.ones(3)}, "inv_freq"),
        ({"x": torch.randn(2, 4, 7)}, "even head_dim"),
        ({"x": torch.randn(2, 4, 8, dtype=torch.float64)}, "dtype"),
        ({"inv_freq": torch.ones(4, requires_grad=True)}, "x only"),
    ],
)
def test_errors(kwargs, match):
    args = {
        "x": torch.randn(2, 4, 8),
        "positions": torch.zeros(4, 3),
        "inv_freq": torch.ones(4),
        "sections": (1, 1, 2),
    }
    args.update(kwargs)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        apply_rope_triton(args["x"], args["positions"], args["inv_freq"], args["sections"])


def test_tolerances_declared_for_every_dtype():
    for dtype in rope_triton.DTYPES:
        assert ATOL[dtype] > 0 and RTOL[dtype] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_shape_on_gpu(dtype):
    x = torch.randn(1, 28, 4096, 128, device="cuda", dtype=dtype, requires_grad=True)
    positions = torch.rand(4096, 3, device="cuda") * 64
    inv_freq = 1e6 ** (-torch.arange(64, device="cuda", dtype=torch.float32) / 64)
    out = apply_rope_triton(x, positions, inv_freq, (16, 24, 24))
    ref = rope_reference_from_positions(x, positions, inv_freq, (16, 24, 24))
    _close(out, ref, dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message without CUDA")
def test_cpu_without_interpreter_says_why():
    import subprocess
    import sys

    code = (
        "import torch; from nxkernels.rope.triton import not_supported_reasons, INTERPRETED; "
        "assert not INTERPRETED; print(not_supported_reasons(torch.randn(2, 4)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TRITON_INTERPRET=1" in done.stdout
