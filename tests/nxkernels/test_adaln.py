"""adaln_modulate and gated_residual: both backends of the public functions (Triton under
TRITON_INTERPRET=1 on CPU, set by tests/conftest.py) against the plain-autograd oracles on outputs
and every gradient (x, shift, scale; x, gate, h), over odd shapes, broadcast and non-contiguous
modulation, fp32/fp16/bf16; opcheck of the custom ops; torch.compile; fp64; input errors."""

import importlib.util

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

from nxkernels import dispatch
from nxkernels.adaln import (
    ADALN_MODULATE,
    GATED_RESIDUAL,
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual,
    gated_residual_reference,
)
from nxkernels.adaln.reference import as_broadcast

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "sliced")
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
BACKENDS = [pytest.param("triton", marks=needs_triton), "reference"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: intra-op threads only add OpenMP hand-offs, which cost 100x on a shared box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(shape, dtype, layout, seed, scale=1.0, offset=0.0):
    """A leaf of ``shape``: contiguous, a transposed view, or a strided slice of a wider one."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return (torch.randn(*s, generator=gen) * scale + offset).to(device=DEVICE, dtype=dtype)

    if layout == "transposed" and len(shape) >= 2:
        t = randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
    elif layout == "sliced":
        t = randn(*shape[:-1], 2 * shape[-1] + 1)[..., 1::2]
    else:
        t = randn(*shape)
    assert t.shape == tuple(shape)
    return t.requires_grad_(True)


def mod_shape(x_shape, kind):
    """Shapes a modulation tensor may take against ``x``."""
    d = x_shape[-1]
    if kind == "per_sample":  # [B, D] against [B, T, D] (read as [B, 1, D]); [N, D] against [N, D]
        return (x_shape[0], d)
    if kind == "per_token":
        return tuple(x_shape)
    if kind == "shared":
        return (d,)
    if kind == "keepdim":  # [B, 1, D]
        return (x_shape[0], *([1] * (len(x_shape) - 2)), d)
    if kind == "per_position":  # [1, T, D]: broadcast over the batch, not over tokens
        return (1, *x_shape[1:])
    raise AssertionError(kind)


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([1, 2, 3]))
    shape = (*[draw(st.integers(1, 5)) for _ in range(ndim - 1)], draw(st.sampled_from([1, 7, 64, 123, 160])))
    kinds = ["shared"] + (["per_sample", "per_token"] if ndim >= 2 else [])
    kinds += ["keepdim", "per_position"] if ndim == 3 else []
    case = {
        "x_shape": shape,
        "m_shape": mod_shape(shape, draw(st.sampled_from(kinds))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layouts": tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)),
        "seed": draw(st.integers(0, 2**16)),
    }
    note(repr(case))
    return case


def tolerance(op, dtype):
    # The reference backend's outputs are the oracle's, bit for bit (checked below); its analytic
    # backward differs from autograd's only in fp32 rounding order, the contract Triton declares.
    return op.backend("triton").tolerance(dtype)


def assert_all_close(got, want, tol, names):
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        # compared in fp32: half-precision isclose is slow on CPU
        torch.testing.assert_close(g.float(), w.float(), **tol, msg=lambda m, name=name: f"{name}: {m}")


def check_adaln(backend, x_shape, m_shape, dtype, layouts=("contiguous",) * 3, seed=0, m_dtype=None):
    x = make(x_shape, dtype, layouts[0], seed, scale=2.0, offset=0.5)
    shift = make(m_shape, m_dtype or dtype, layouts[1], seed + 1, scale=0.5)
    scale = make(m_shape, m_dtype or dtype, layouts[2], seed + 2, scale=0.5)
    dy = make(x_shape, dtype, "contiguous", seed + 3).detach()
    out = adaln_modulate(x, shift, scale, backend=backend)
    ref = adaln_modulate_reference(x, shift, scale)
    if backend == "reference":
        assert torch.equal(out, ref)
    got = torch.autograd.grad(out, (x, shift, scale), dy)
    want = torch.autograd.grad(ref, (x, shift, scale), dy)
    assert_all_close(
        (out, *got),
        (ref, *want),
        tolerance(ADALN_MODULATE, dtype),
        ("out", "grad x", "grad shift", "grad scale"),
    )


def check_gated(backend, x_shape, m_shape, dtype, layouts=("contiguous",) * 3, seed=0, m_dtype=None):
    x = make(x_shape, dtype, layouts[0], seed)
    gate = make(m_shape, m_dtype or dtype, layouts[1], seed + 1)
    h = make(x_shape, dtype, layouts[2], seed + 2)
    dy = make(x_shape, dtype, "contiguous", seed + 3).detach()
    out = gated_residual(x, gate, h, backend=backend)
    ref = gated_residual_reference(x, gate, h)
    if backend == "reference":
        assert torch.equal(out, ref)
    got = torch.autograd.grad(out, (x, gate, h), dy)
    want = torch.autograd.grad(ref, (x, gate, h), dy)
    assert_all_close(
        (out, *got), (ref, *want), tolerance(GATED_RESIDUAL, dtype), ("out", "grad x", "grad gate", "grad h")
    )


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12)
@given(case=cases())
def test_adaln_modulate_matches_oracle(backend, case):
    check_adaln(backend, **case)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12)
@given(case=cases())
def test_gated_residual_matches_oracle(backend, case):
    check_gated(backend, **case)


EDGE = [
    ((1, 1, 1), (1, 1)),  # length 1, width 1
    ((1, 1, 1536), (1, 1536)),  # NextStep-1 flow-head width, one token
    ((5, 123, 123), (5, 123)),  # odd sizes, 123 rows per group walked in chunks of 64
    ((2, 37, 9), (2, 1, 9)),  # rows in a group not a multiple of the row block
    ((3, 1025), (1025,)),  # d one past a power of two, shared modulation
    ((2, 2, 3, 8), (2, 2, 8)),  # 4-d x, [B, H, D] modulation read as [B, H, 1, D]
    ((3, 4, 5), (1, 4, 5)),  # broadcast over the batch only: expanded, reduced by sum_to_size
    ((0, 3, 8), (0, 8)),  # no rows
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fp16: in the hypothesis tests
@pytest.mark.parametrize(("x_shape", "m_shape"), EDGE)
def test_edge_shapes(x_shape, m_shape, dtype, backend):
    check_adaln(backend, x_shape, m_shape, dtype, ("transposed", "sliced", "contiguous"))
    check_gated(backend, x_shape, m_shape, dtype, ("sliced", "contiguous", "transposed"))


@needs_triton
@pytest.mark.parametrize(
    ("x_shape", "m_shape", "split"),
    [
        ((2, 37, 300), (2, 300), True),  # 37 rows per group, chunks of 16 rows, 2 programs per group
        ((3, 11, 700), (700,), True),  # one group of 33 rows, chunks of 8 rows
        ((4, 5, 6), (4, 5, 6), False),  # one row per group: nothing to split
        ((3, 4, 5), (1, 4, 5), False),  # broadcast over the batch: expanded, reduced by sum_to_size
    ],
)
def test_several_programs_per_group(monkeypatch, x_shape, m_shape, split):
    # CUDA splits a group's rows over several programs and sums their partial gradients; force it
    from nxkernels.adaln import triton as kernels

    monkeypatch.setattr(kernels, "CPU_TARGET_PROGRAMS", 8)
    mod = as_broadcast("shift", torch.empty(m_shape), torch.empty(x_shape))
    plan = kernels._Plan(torch.Size(x_shape), [mod.shape], torch.device(DEVICE))
    if DEVICE == "cpu":
        assert (plan.p > 1) == split, vars(plan)
    check_adaln("triton", x_shape, m_shape, torch.float32, seed=5)
    check_gated("triton", x_shape, m_shape, torch.float32, seed=6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaln_constant_row_is_finite(backend):
    x = torch.full((2, 3, 16), 7.0, device=DEVICE, requires_grad=True)  # zero variance: rstd = 1/sqrt(eps)
    shift = torch.randn(2, 16, device=DEVICE, requires_grad=True)
    scale = torch.randn(2, 16, device=DEVICE, requires_grad=True)
    out = adaln_modulate(x, shift, scale, backend=backend)
    torch.testing.assert_close(out, adaln_modulate_reference(x, shift, scale))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, shift, scale))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_modulation_of_bf16_x_keeps_its_dtype(backend):
    check_adaln(backend, (2, 3, 20), (2, 20), torch.bfloat16, m_dtype=torch.float32)
    check_gated(backend, (2, 3, 20), (2, 20), torch.bfloat16, m_dtype=torch.float32)


def test_fp64_runs_on_the_reference_and_triton_rejects_it_with_a_reason():
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=True)

    x, shift, scale, h = rand(2, 3, 6), rand(2, 6), rand(6), rand(2, 3, 6)
    assert torch.autograd.gradcheck(lambda *a: adaln_modulate(*a, backend="reference"), (x, shift, scale))
    assert torch.autograd.gradcheck(lambda *a: gated_residual(*a, backend="reference"), (x, shift, h))
    with pytest.raises(ValueError, match="triton: dtype float64 is not supported"):
        adaln_modulate(x, shift, scale, backend="triton")
    with pytest.raises(ValueError, match="triton: an input has dtype torch.float64"):
        gated_residual(x.float(), shift, h.float(), backend="triton")
    assert torch.equal(adaln_modulate(x, shift, scale), adaln_modulate_reference(x, shift, scale))


@pytest.mark.parametrize(
    ("backend", "m_shape"),
    [
        pytest.param("triton", (3, 1, 10), marks=needs_triton),  # per sample: one program per group
        ("reference", (3, 2, 10)),  # per token: a gradient with no reduction must still be a new tensor
    ],
)
def test_opcheck(backend, m_shape):
    x = make((3, 2, 10), torch.float32, "transposed", 0)
    shift = make(m_shape, torch.float32, "contiguous", 1)
    scale = make(m_shape, torch.float32, "sliced", 2)
    h = make((3, 2, 10), torch.float32, "contiguous", 3)
    dy = torch.randn(3, 2, 10, device=DEVICE)
    torch.library.opcheck(torch.ops.nxkernels.adaln_modulate_fwd.default, (x, shift, scale, 1e-6, backend))
    with torch.no_grad():
        _, mean, rstd = torch.ops.nxkernels.adaln_modulate_fwd(x, shift, scale, 1e-6, backend)
    torch.library.opcheck(
        torch.ops.nxkernels.adaln_modulate_bwd.default,
        (dy, x.detach(), scale.detach(), mean, rstd, list(m_shape), torch.float32, backend),
    )
    torch.library.opcheck(torch.ops.nxkernels.gated_residual_fwd.default, (x, shift, h, backend))
    torch.library.opcheck(
        torch.ops.nxkernels.gated_residual_bwd.default, (dy, shift.detach(), h.detach(), backend)
    )


@pytest.mark.parametrize(("compiler", "backend"), [("eager", None), ("inductor", None), ("eager", "triton")])
def test_torch_compile_fullgraph_forward_and_backward(compiler, backend):
    if backend == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    torch._dynamo.reset()
    x = make((4, 3, 32), torch.float32, "contiguous", 0)
    shift, scale, gate = (make((4, 32), torch.float32, "contiguous", i, scale=0.5) for i in (1, 2, 3))
    inputs = (x, shift, scale, gate)

    def block(x, shift, scale, gate, modulate=adaln_modulate, residual=gated_residual, **kw):
        h = modulate(x, shift, scale, 1e-5, **kw)
        return (residual(x, gate, h * 2, **kw) ** 2).sum()

    got = torch.compile(block, backend=compiler, fullgraph=True)(*inputs, backend=backend)
    got_grads = torch.autograd.grad(got, inputs)
    want = block(*inputs, modulate=adaln_modulate_reference, residual=gated_residual_reference)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)  # a sum of 384 terms
    for a, b in zip(got_grads, want_grads, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_reference_matches_layer_norm_module():
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    shift, scale = torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    ln = torch.nn.LayerNorm(12, eps=1e-6, elementwise_affine=False, dtype=torch.float64)
    expected = ln(x) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(adaln_modulate(x, shift, scale), expected)
    gate, h = torch.randn(2, 12, dtype=torch.float64), torch.randn_like(x)
    torch.testing.assert_close(gated_residual(x, gate, h), x + gate[:, None] * h)
    for dtype in DTYPES:
        assert adaln_modulate(x.to(dtype), shift.to(dtype), scale.to(dtype)).dtype == dtype


def test_auto_takes_triton_on_cuda_only_and_the_interpreter_when_asked_for():
    x, m = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 1, 8, device=DEVICE)
    for op, args in ((ADALN_MODULATE, (x, m, m, 1e-6)), (GATED_RESIDUAL, (x, m, x))):
        assert op.select(*args).name == ("triton" if DEVICE == "cuda" else "reference")
        with dispatch.use_backend("reference"):
            assert op.select(*args).name == "reference"
        if HAS_TRITON:
            with dispatch.use_backend("triton"):
                assert op.select(*args).name == "triton"


X, GOOD = torch.randn(2, 3, 8), torch.randn(2, 8)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "error", "match"),
    [
        (
            adaln_modulate,
            (X, torch.randn(2, 7), GOOD),
            {},
            ValueError,
            r"shift has shape \(2, 7\) but x has shape \(2, 3, 8\); shift must be \[B, D\]",
        ),
        (
            adaln_modulate,
            (X, GOOD, torch.randn(3, 8)),
            {},
            ValueError,
            r"scale of shape \(3, 8\) \(read as \(3, 1, 8\)\) does not broadcast to x of shape \(2, 3, 8\); give",
        ),
        (
            adaln_modulate,
            (X, torch.randn(2, 5, 3, 8), GOOD),
            {},
            ValueError,
            r"shift has shape \(2, 5, 3, 8\)",
        ),
        (
            adaln_modulate,
            (torch.randn(1, 3, 8), GOOD, GOOD),
            {},
            ValueError,
            r"shift of shape \(2, 8\) \(read as \(2, 1, 8\)\) would enlarge x of shape \(1, 3, 8\)",
        ),
        (adaln_modulate, (X, GOOD, GOOD), {"eps": -1.0}, ValueError, "eps must be a float >= 0, got -1.0"),
        (
            adaln_modulate,
            (X.long(), GOOD, GOOD),
            {},
            TypeError,
            r"x must have a floating-point dtype, got torch.int64; convert it with \.float\(\)",
        ),
        (
            adaln_modulate,
            (X, GOOD, GOOD),
            {"backend": "fast"},
            ValueError,
            "backend='fast' is not understood",
        ),
        (
            gated_residual,
            (X, GOOD, torch.randn(2, 3, 9)),
            {},
            ValueError,
            r"h has shape \(2, 3, 9\) but x has shape \(2, 3, 8\); they must match",
        ),
        (gated_residual, (X, 1.0, X), {}, TypeError, "gate must be a torch.Tensor, got float"),
        (gated_residual, (X, GOOD, X.int()), {}, TypeError, "h must have a floating-point dtype"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("x_shape", "m_shape"), [((4, 1024, 1536), (4, 1536)), ((4096, 1536), (4096, 1536))])
def test_triton_matches_oracle_at_real_shapes_on_cuda(x_shape, m_shape, dtype):
    # gradients of [B, D] modulation sum 1024 rows: compare them relative to their scale
    x = make(x_shape, dtype, "contiguous", 0, scale=2.0, offset=0.5)
    shift, scale, gate = (make(m_shape, dtype, "contiguous", i, scale=0.5) for i in (1, 2, 3))
    dy = make(x_shape, dtype, "contiguous", 4).detach()
    tol = ADALN_MODULATE.backend("triton").tolerance(dtype)
    for fn, ref, args in (
        (adaln_modulate, adaln_modulate_reference, (x, shift, scale)),
        (gated_residual, gated_residual_reference, (x, gate, x.detach() * 0.5)),
    ):
        out, want = fn(*args, backend="triton"), ref(*args)
        torch.testing.assert_close(out, want, **tol)
        got_grads = torch.autograd.grad(out, args[:2], dy)
        want_grads = torch.autograd.grad(want, args[:2], dy)
        for g, w in zip(got_grads, want_grads, strict=True):
            s = w.float().abs().max()
            torch.testing.assert_close(g.float() / s, w.float() / s, **tol)
