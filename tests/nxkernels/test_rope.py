"""RoPE: the cos/sin reference against an independent complex-number formulation; the public
positions-based op (``apply_rope``, ``apply_rope_qk``) with both backends against the cos/sin
autograd oracle (outputs and x gradients, odd shapes, 1 and 3 axes, fractional positions,
non-contiguous x, fp32/fp16/bf16 with the Backend's tolerances); opcheck; torch.compile; dispatch;
input errors. Triton runs under the interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1)."""

import math

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

from nxcore.testing import strategies as nxst
from nxkernels import dispatch
from nxkernels.rope import (
    ROPE,
    apply_rope,
    apply_rope_qk,
    apply_rope_reference,
    rope_cos_sin,
    rotate_half,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_runs_here() -> bool:
    if dispatch.importlib.util.find_spec("triton") is None:
        return False
    if DEVICE == "cuda":
        return True
    from nxkernels.rope import triton as rope_triton  # imported after conftest set the interpreter

    return rope_triton.INTERPRETED


needs_triton = pytest.mark.skipif(
    not _triton_runs_here(),
    reason="triton is missing, or nxkernels.rope.triton was compiled for a GPU (imported before "
    "TRITON_INTERPRET=1) and there is no CUDA device",
)
BACKENDS = ["reference", pytest.param("triton", marks=needs_triton)]


def oracle(x, positions, inv_freq, sections=None):
    """The cos/sin form, differentiated by autograd."""
    return apply_rope_reference(x, *rope_cos_sin(positions, inv_freq, sections))


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


# --- the cos/sin reference ------------------------------------------------------------------------


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
    assert torch.equal(apply_rope(x, positions, inv_freq, sections), out)


def test_rotate_half_is_quarter_turn():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)


def test_single_pair_rotates_by_position_times_frequency():
    x = torch.tensor([[1.0, 0.0]])
    out = apply_rope(x, torch.tensor([[0.75]]), torch.tensor([2.0]))
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
    assert torch.equal(apply_rope(x.to(dtype), pos, inv_freq), out)
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
    out = apply_rope(x, pos, inv_freq)
    assert out.shape == x.shape
    angles = loop_angles(pos, inv_freq, (head_dim // 2,))
    torch.testing.assert_close(out.double(), complex_rope(x, angles), rtol=1e-5, atol=1e-5)


def test_rotation_preserves_norm_and_zero_is_identity():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 9, 10, generator=gen)
    inv_freq = torch.rand(5, generator=gen)
    out = apply_rope(x, torch.randn(9, 1, generator=gen) * 100, inv_freq)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(apply_rope(x, torch.zeros(9, 1), inv_freq), x)


# --- the public op, both backends, against the cos/sin autograd oracle --------------------------


def nextflow_positions(seq: int, gen: torch.Generator) -> torch.Tensor:
    """3D (scale, row, col) positions with fractional row/col = C / sqrt(HW) * (i + 0.5)."""
    side = max(1, math.isqrt(seq))
    i = torch.arange(seq, dtype=torch.float32)
    unit = 8.0 / side
    rows = unit * (torch.div(i, side, rounding_mode="floor") + 0.5)
    cols = unit * (torch.remainder(i, side) + 0.5)
    level = torch.randint(0, 4, (seq,), generator=gen).float()
    return torch.stack((level, rows, cols), dim=1)


@st.composite
def op_cases(draw, dtypes=DTYPES):
    pairs = draw(st.sampled_from([1, 2, 3, 5, 9, 64]), label="pairs")
    axes = draw(st.sampled_from([1, 3]), label="axes")
    if axes == 3:
        if pairs == 64 and draw(st.booleans(), label="qwen_sections"):
            sections = (16, 24, 24)
        else:
            cuts = sorted(draw(st.lists(st.integers(0, pairs), min_size=2, max_size=2)))
            sections = (cuts[0], cuts[1] - cuts[0], pairs - cuts[1])
    else:
        sections = None
    return {
        "batch": tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3), label="batch")),
        "seq": draw(st.integers(1, 9) | st.just(123), label="seq"),
        "pairs": pairs,
        "sections": sections,
        "positions": "3d" if axes == 3 else draw(st.sampled_from(["index", "offset", "fractional"])),
        "layout": draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"])),
        "dtype": draw(st.sampled_from(dtypes), label="dtype"),
        "seed": draw(st.integers(0, 2**16), label="seed"),
    }


def build(case):
    gen = torch.Generator().manual_seed(case["seed"])
    batch, seq, head_dim = case["batch"], case["seq"], 2 * case["pairs"]
    if case["layout"] == "transposed" and batch:
        # [*b, seq, heads, d] -> [*b, heads, seq, d]: the usual view of a [B, S, H, D] projection
        *outer, heads = batch
        x = torch.randn((*outer, seq, heads, head_dim), generator=gen).transpose(-3, -2)
    elif case["layout"] == "strided":  # every other channel of a wider tensor
        x = torch.randn((*batch, seq, 2 * head_dim), generator=gen)[..., ::2]
    elif case["layout"] == "expanded" and batch:  # stride 0 along the first dimension
        x = torch.randn((1, *batch[1:], seq, head_dim), generator=gen).expand(*batch, seq, head_dim)
    else:
        x = torch.randn((*batch, seq, head_dim), generator=gen)
    x = (2 * x).to(device=DEVICE, dtype=case["dtype"]).requires_grad_()
    kind = case["positions"]
    if kind == "3d":
        positions = nextflow_positions(seq, gen)
    elif kind == "fractional":
        positions = torch.rand(seq, 1, generator=gen) * 50
    else:
        start = 0 if kind == "index" else int(torch.randint(1, 4000, (), generator=gen))
        positions = torch.arange(start, start + seq, dtype=torch.float32)[:, None]
    pairs = case["pairs"]
    inv_freq = 1e4 ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
    dy = torch.randn(x.shape, generator=gen).to(device=DEVICE, dtype=case["dtype"])
    return x, positions.to(DEVICE), inv_freq.float().to(DEVICE), case["sections"], dy


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25)
@given(case=op_cases())
def test_apply_rope_matches_the_cos_sin_oracle(backend, case):
    note(repr(case))
    x, positions, inv_freq, sections, dy = build(case)
    tol = ROPE.backend(backend).tolerance(case["dtype"])
    got = apply_rope(x, positions, inv_freq, sections, backend=backend)
    want = oracle(x, positions, inv_freq, sections)
    assert got.shape == x.shape and got.dtype == x.dtype and got.is_contiguous()
    torch.testing.assert_close(got.float(), want.float(), **tol)
    (got_dx,) = torch.autograd.grad(got, x, dy)
    (want_dx,) = torch.autograd.grad(want, x, dy)
    assert got_dx.dtype == x.dtype and got_dx.shape == x.shape
    torch.testing.assert_close(got_dx.float(), want_dx.float(), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qk_rotates_queries_and_keys_with_different_head_counts(backend):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 5, 16, generator=gen).to(DEVICE).requires_grad_()  # 6 query heads
    k = torch.randn(2, 2, 5, 16, generator=gen).to(DEVICE).requires_grad_()  # 2 key-value heads
    positions, inv_freq = nextflow_positions(5, gen).to(DEVICE), torch.rand(8, generator=gen).to(DEVICE)
    tol = ROPE.backend(backend).tolerance(torch.float32)
    qo, ko = apply_rope_qk(q, k, positions, inv_freq, (2, 3, 3), backend=backend)
    want_q, want_k = (oracle(t, positions, inv_freq, (2, 3, 3)) for t in (q, k))
    torch.testing.assert_close(qo, want_q, **tol)
    torch.testing.assert_close(ko, want_k, **tol)
    got = torch.autograd.grad((qo * qo).sum() + 3 * ko.sum(), (q, k))
    want = torch.autograd.grad((want_q * want_q).sum() + 3 * want_k.sum(), (q, k))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **{k: 10 * v for k, v in tol.items()})  # a squared loss


def test_fp64_gradcheck_and_gradgradcheck_through_the_custom_op():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    positions = torch.rand(3, 3, generator=gen, dtype=torch.float64) * 10
    inv_freq = torch.rand(3, generator=gen, dtype=torch.float64)

    def fn(t):
        return apply_rope(t, positions, inv_freq, (1, 0, 2), backend="reference")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("inverse", "layout"), [(False, "contiguous"), (True, "transposed")])
def test_opcheck(backend, inverse, layout):
    gen = torch.Generator().manual_seed(5)
    if layout == "transposed":
        x = torch.randn(2, 3, 2, 8, generator=gen).transpose(1, 2)
    else:
        x = torch.randn(2, 2, 3, 8, generator=gen)
    x = x.to(DEVICE).requires_grad_()
    positions = nextflow_positions(3, gen).to(DEVICE)
    inv_freq = torch.rand(4, generator=gen).to(DEVICE)
    torch.library.opcheck(torch.ops.nxkernels.rope.default,
                          (x, positions, inv_freq, [1, 2, 1], inverse, backend))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(compiler):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(1, 4, 6, 16, generator=gen).to(DEVICE).requires_grad_()
    k = torch.randn(1, 2, 6, 16, generator=gen).to(DEVICE).requires_grad_()
    v = torch.randn(1, 4, 6, 16, generator=gen).to(DEVICE).requires_grad_()
    positions = nextflow_positions(6, gen).to(DEVICE)
    inv_freq = torch.rand(8, generator=gen).to(DEVICE)

    def block(q, k, v):
        qr, kr = apply_rope_qk(q, k, positions, inv_freq, (2, 3, 3))
        vr = apply_rope(v, positions, inv_freq, (2, 3, 3))
        return (qr * 2).sum() + (kr * kr).sum() + vr.sum()

    compiled = torch.compile(block, backend=compiler, fullgraph=True)
    got = compiled(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v))
    qr, kr, vr = (oracle(t, positions, inv_freq, (2, 3, 3)) for t in (q, k, v))
    want = (qr * 2).sum() + (kr * kr).sum() + vr.sum()
    want_grads = torch.autograd.grad(want, (q, k, v))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)  # sums of ~400 terms: order differs
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --- dispatch -------------------------------------------------------------------------------------


def _args(dtype=torch.float32, positions_dtype=torch.float32):
    return (torch.randn(2, 3, 8, device=DEVICE, dtype=dtype),
            torch.rand(3, 1, device=DEVICE, dtype=positions_dtype), torch.rand(4, device=DEVICE))


def test_auto_picks_reference_on_cpu_and_triton_on_cuda_and_the_interpreter_when_asked_for():
    x, positions, inv_freq = _args()
    auto = ROPE.select(x, positions, inv_freq)
    assert auto.name == ("triton" if DEVICE == "cuda" else "reference")
    with dispatch.use_backend("reference"):
        assert ROPE.select(x, positions, inv_freq).name == "reference"
    if _triton_runs_here():
        with dispatch.use_backend("triton"):  # TRITON_INTERPRET=1 on a CPU-only box
            assert ROPE.select(x, positions, inv_freq).name == "triton"


def test_triton_declares_what_it_cannot_run_and_auto_falls_back():
    x, positions, inv_freq = _args(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"(?s)backend 'triton'.*dtype float64 is not supported"):
        apply_rope(x, positions, inv_freq, backend="triton")
    assert torch.equal(apply_rope(x, positions, inv_freq), oracle(x, positions, inv_freq))
    x, positions, inv_freq = _args(positions_dtype=torch.float64)
    with pytest.raises(ValueError, match=r"positions dtype torch.float64 is not supported"):
        apply_rope(x, positions, inv_freq, backend="triton")
    assert ROPE.select(x, positions, inv_freq).name == "reference"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_pinned_triton_without_the_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.clear_cache()
    x, positions, inv_freq = _args()
    try:
        with pytest.raises(ValueError, match=r"(?s)'triton' \(backend='triton'\).*TRITON_INTERPRET=1"):
            apply_rope(x, positions, inv_freq, backend="triton")
        assert ROPE.select(x, positions, inv_freq).name == "reference"
    finally:
        dispatch.clear_cache()


# --- input errors ---------------------------------------------------------------------------------

X, POS, POS3, FREQ = torch.randn(2, 5, 8), torch.zeros(5, 1), torch.zeros(5, 3), torch.ones(4)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.randn(5, 7), POS, torch.ones(3)), {}, ValueError, r"x has head_dim 7.*must be even"),
        ((torch.randn(8), POS, FREQ), {}, ValueError, r"x must have at least 2 dimensions"),
        ((torch.ones(5, 8, dtype=torch.int64), POS, FREQ), {}, TypeError,
         r"x must have a floating-point dtype, got torch.int64; convert it with .float\(\)"),
        ((X, 1.0, FREQ), {}, TypeError, r"positions must be a torch.Tensor, got float"),
        ((X, torch.zeros(5, 1, dtype=torch.int64), FREQ), {}, TypeError,
         r"positions must have a floating-point dtype"),
        ((X, torch.zeros(5), FREQ), {}, ValueError, r"positions must have 2 dimensions"),
        ((X, torch.zeros(4, 1), FREQ), {}, ValueError,
         r"positions has shape \(4, 1\) but x .* \(2, 5, 8\).*must be \[5, axes\]"),
        ((X, POS, torch.ones(3)), {}, ValueError, r"inv_freq has shape \(3,\) but x has head_dim 8.*\[4\]"),
        ((X, POS.to("meta"), FREQ), {}, ValueError,
         r"positions is on meta but x is on cpu; move it with \.to\(x\.device\)"),
        ((X, POS, FREQ.to("meta")), {}, ValueError, r"inv_freq is on meta but x is on cpu"),
        ((X, POS.clone().requires_grad_(), FREQ), {}, ValueError,
         r"positions requires grad.*gradients for x only.*pass positions.detach\(\)"),
        ((X, POS, FREQ.clone().requires_grad_()), {}, ValueError, r"pass inv_freq.detach\(\)"),
        ((X, POS3, FREQ), {}, ValueError, r"positions has 3 axes but sections is None"),
        ((X, POS3, FREQ, (2, 1)), {}, ValueError, r"sections \(2, 1\) has 2 entries but positions has 3"),
        ((X, POS3, FREQ, (2, 1, 0)), {}, ValueError, r"sections \(2, 1, 0\) sum to 3.*4 pairs"),
        ((X, POS3, FREQ, (5, -1, 0)), {}, ValueError, r"sections must be ints >= 0"),
        ((X, POS, FREQ), {"backend": "fast"}, ValueError, r"backend='fast' is not understood"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        apply_rope(*args, **kwargs)


def test_qk_errors_name_q_or_k():
    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"inv_freq has shape \(4,\) but k has head_dim 6"):
        apply_rope_qk(q, torch.randn(2, 5, 6), POS, FREQ)
    with pytest.raises(ValueError, match=r"positions has shape \(5, 1\) but k .* \(1, 4, 8\)"):
        apply_rope_qk(q, torch.randn(1, 4, 8), POS, FREQ)
    with pytest.raises(TypeError, match=r"k has dtype torch.float16 but q has torch.float32"):
        apply_rope_qk(q, q.half(), POS, FREQ)
    with pytest.raises(ValueError, match=r"q has head_dim 7"):
        apply_rope_qk(torch.randn(5, 7), q, POS, FREQ)


def test_cos_sin_errors_name_the_argument_and_the_fix():
    x = torch.randn(2, 5, 8)
    cos, sin = rope_cos_sin(torch.zeros(5, 1), torch.ones(4))
    with pytest.raises(ValueError, match=r"head_dim 7.*even"):
        apply_rope_reference(torch.randn(5, 7), torch.zeros(5, 7), torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"cos has shape \(4, 8\).*must be \[5, 8\]"):
        apply_rope_reference(x, cos[:4], sin[:4])
    with pytest.raises(TypeError, match=r"cos must be a torch.Tensor"):
        apply_rope_reference(x, 1.0, sin)
    with pytest.raises(ValueError, match=r"cos is on meta but x is on cpu"):
        apply_rope_reference(x, cos.to("meta"), sin)
    with pytest.raises(ValueError, match=r"sections \(2, 1\) sum to 3.*4 pairs"):
        rope_cos_sin(torch.zeros(5, 2), torch.ones(4), (2, 1))
    with pytest.raises(ValueError, match=r"sections \(4,\) has 1 entries but positions has 3 axes"):
        rope_cos_sin(torch.zeros(5, 3), torch.ones(4), (4,))
    with pytest.raises(TypeError, match=r"positions must have a floating-point dtype"):
        rope_cos_sin(torch.zeros(5, 1, dtype=torch.int64), torch.ones(4))
    with pytest.raises(ValueError, match=r"inv_freq is empty"):
        rope_cos_sin(torch.zeros(5, 1), torch.ones(0))
