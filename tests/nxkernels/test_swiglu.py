"""swiglu: both backends of the public function (Triton under TRITON_INTERPRET=1 on CPU, set by
tests/conftest.py) against the plain-autograd oracle on the output and both gradients, over odd
shapes, non-contiguous views and fp32/fp16/bf16; opcheck of the custom ops; torch.compile; fp64;
input errors."""

import importlib.util

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

from nxkernels import dispatch
from nxkernels.swiglu import SWIGLU, swiglu, swiglu_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "reference"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: intra-op threads only add OpenMP hand-offs, which cost 100x on a shared box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(shape, dtype, layout, seed, scale=3.0):
    """A leaf of ``shape``: contiguous, a transposed view, a strided slice, or stride-0 rows."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return (torch.randn(*s, generator=gen) * scale).to(device=DEVICE, dtype=dtype)

    if layout == "transposed" and len(shape) >= 2:
        t = randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
    elif layout == "sliced":
        t = randn(*shape[:-1], 2 * shape[-1] + 1)[..., 1::2]
    elif layout == "expanded" and len(shape) >= 2:
        t = randn(1, *shape[1:]).expand(shape)
    else:
        t = randn(*shape)
    assert t.shape == tuple(shape)
    return t.requires_grad_(True)


@st.composite
def cases(draw):
    lead = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 2)))]
    shape = (*lead, draw(st.sampled_from([1, 2, 7, 64, 123, 130, 300])))
    case = {
        "shape": shape,
        "dtype": draw(st.sampled_from(DTYPES)),
        "layouts": (draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))),
        "seed": draw(st.integers(0, 2**16)),
    }
    note(repr(case))
    return case


def tolerance(backend, dtype):
    # The reference backend's output is the oracle's, bit for bit (checked below); its analytic
    # backward differs from autograd's only in fp32 rounding order, the contract Triton declares.
    return SWIGLU.backend("triton").tolerance(dtype)


def check_parity(backend, shape, dtype, layouts=("contiguous", "contiguous"), seed=0):
    gate = make(shape, dtype, layouts[0], seed)
    up = make(shape, dtype, layouts[1], seed + 1)
    dy = make(shape, dtype, "contiguous", seed + 2, scale=1.0).detach()
    out = swiglu(gate, up, backend=backend)
    ref = swiglu_reference(gate, up)
    assert out.dtype == dtype and out.shape == gate.shape
    tol = tolerance(backend, dtype)
    if backend == "reference":
        assert torch.equal(out, ref)
    torch.testing.assert_close(out.float(), ref.float(), **tol)  # fp32: half isclose is slow on CPU
    got = torch.autograd.grad(out, (gate, up), dy)
    want = torch.autograd.grad(ref, (gate, up), dy)
    for name, g, w in zip(("gate", "up"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.float(), w.float(), **tol, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15)
@given(case=cases())
def test_backend_matches_oracle(backend, case):
    check_parity(backend, case["shape"], case["dtype"], case["layouts"], case["seed"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 1024), (5, 123, 123), (3, 1025), (2, 1, 1, 7), (0, 5)])
def test_edge_shapes(shape, dtype, backend):
    # length 1, exactly one column block, odd sizes, one past the column block, 4-d, no rows
    check_parity(backend, shape, dtype, ("transposed", "sliced"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_extreme_values_are_finite(backend):
    gate = torch.tensor([[-100.0, -20.0, 0.0, 20.0, 100.0]], device=DEVICE, requires_grad=True)
    up = torch.ones_like(gate, requires_grad=True)
    out = swiglu(gate, up, backend=backend)
    torch.testing.assert_close(out, swiglu_reference(gate, up))
    out.sum().backward()
    assert torch.isfinite(gate.grad).all() and torch.isfinite(up.grad).all()


def test_fp64_runs_on_the_reference_and_triton_rejects_it_with_a_reason():
    gate = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, u: swiglu(g, u, backend="reference"), (gate, up))
    with pytest.raises(ValueError, match="triton: dtype float64 is not supported"):
        swiglu(gate, up, backend="triton")
    assert torch.equal(swiglu(gate, up), swiglu_reference(gate, up))  # auto falls back


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_opcheck(backend, layout):
    gate = make((3, 2, 10), torch.float32, layout, 0)
    up = make((3, 2, 10), torch.float32, layout, 1)
    torch.library.opcheck(torch.ops.nxkernels.swiglu_fwd.default, (gate, up, backend))
    dy = torch.randn(3, 2, 10, device=DEVICE)
    torch.library.opcheck(torch.ops.nxkernels.swiglu_bwd.default, (dy, gate.detach(), up.detach(), backend))


@pytest.mark.parametrize(("compiler", "backend"), [("eager", None), ("inductor", None), ("eager", "triton")])
def test_torch_compile_fullgraph_forward_and_backward(compiler, backend):
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    torch._dynamo.reset()
    gate = make((4, 3, 32), torch.float32, "contiguous", 0)
    up = make((4, 3, 32), torch.float32, "contiguous", 1)

    def mlp(g, u):
        return (swiglu(g, u, backend=backend) * 2).sum()

    got = torch.compile(mlp, backend=compiler, fullgraph=True)(gate, up)
    got_grads = torch.autograd.grad(got, (gate, up))
    want = (swiglu_reference(gate, up) * 2).sum()
    want_grads = torch.autograd.grad(want, (gate, up))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)  # a sum of 384 terms
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reference_formula_and_dtypes():
    gate = torch.linspace(-4, 4, 9, device=DEVICE)
    up = torch.arange(9.0, device=DEVICE)
    expected = gate / (1 + torch.exp(-gate)) * up
    torch.testing.assert_close(swiglu_reference(gate, up), expected)
    for dtype in DTYPES:
        out = swiglu(gate.to(dtype), up.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected.to(dtype), **SWIGLU.backend("triton").tolerance(dtype))


def test_auto_takes_triton_on_cuda_only_and_the_interpreter_when_asked_for():
    g = torch.randn(2, 8, device=DEVICE)
    assert SWIGLU.select(g, g).name == ("triton" if DEVICE == "cuda" else "reference")
    with dispatch.use_backend("reference"):
        assert SWIGLU.select(g, g).name == "reference"
    if importlib.util.find_spec("triton") is not None:
        with dispatch.use_backend("triton"):
            assert SWIGLU.select(g, g).name == "triton"


@pytest.mark.parametrize(
    ("gate", "up", "kwargs", "error", "match"),
    [
        (
            torch.randn(2, 4),
            torch.randn(2, 5),
            {},
            ValueError,
            r"gate has shape \(2, 4\) but up has shape \(2, 5\).*\.chunk\(2, dim=-1\)",
        ),
        (
            torch.randn(2, 4),
            torch.randn(2, 4).half(),
            {},
            TypeError,
            r"gate has dtype torch.float32 but up has dtype torch.float16; cast one",
        ),
        (
            torch.ones(2, 4, dtype=torch.long),
            torch.ones(2, 4, dtype=torch.long),
            {},
            TypeError,
            r"gate must have a floating-point dtype, got torch.int64; convert it with \.float\(\)",
        ),
        (torch.randn(2, 4), [1.0], {}, TypeError, "up must be a torch.Tensor, got list"),
        (torch.tensor(1.0), torch.tensor(1.0), {}, ValueError, "gate must have at least one dimension"),
        (
            torch.randn(2, 4),
            torch.randn(2, 4),
            {"backend": "fast"},
            ValueError,
            "backend='fast' is not understood",
        ),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(gate, up, kwargs, error, match):
    with pytest.raises(error, match=match):
        swiglu(gate, up, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [13824, 18944])
def test_triton_matches_oracle_at_real_shapes_on_cuda(dtype, hidden):
    check_parity("triton", (2, 1024, hidden), dtype)
