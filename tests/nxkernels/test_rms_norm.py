"""rms_norm: Triton (under the interpreter) and the custom-op reference against the plain-torch
reference, on outputs and every gradient; opcheck; torch.compile; input errors."""

import os

import torch

# Without CUDA the Triton kernels run under the interpreter at tiny shapes. This must be set before
# anything imports nxkernels.rms_norm.triton: triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nxkernels import dispatch  # noqa: E402
from nxkernels.rms_norm import RMS_NORM, rms_norm, rms_norm_reference  # noqa: E402

pytestmark = pytest.mark.skipif(
    dispatch.importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@st.composite
def cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=2)))
    dim = draw(st.sampled_from([1, 2, 7, 64, 123, 130]))
    return {
        "lead": lead,
        "dim": dim,
        "dtype": draw(st.sampled_from(DTYPES)),
        "residual": draw(st.sampled_from(["none", "full", "broadcast"])),
        "layout": draw(st.sampled_from(["contiguous", "strided", "expanded"])),
        "eps": draw(st.sampled_from([1e-6, 1e-5, 0.1])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case):
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = (*case["lead"], case["dim"]), case["dtype"]

    def randn(*s):
        return torch.randn(*s, generator=g).to(device=DEVICE, dtype=dtype)

    if case["layout"] == "strided":  # every other column of a wider tensor
        x = randn(*shape[:-1], 2 * shape[-1])[..., ::2]
    elif case["layout"] == "expanded" and shape[:-1]:  # stride 0 along the first dimension
        x = randn(1, *shape[1:]).expand(shape)
    else:
        x = randn(*shape)
    x = x.detach().requires_grad_()
    w = (1 + 0.5 * randn(case["dim"])).detach().requires_grad_()
    r = None
    if case["residual"] == "full":
        r = randn(*shape).requires_grad_()
    elif case["residual"] == "broadcast":
        r = randn(case["dim"]).requires_grad_()
    return x, w, r, randn(*shape), randn(*shape)


def run(fn, x, w, r, eps, dy, dh):
    for t in (x, w, r):
        if t is not None:
            t.grad = None
    out = fn(x, w, eps, residual=r) if r is not None else fn(x, w, eps)
    outs = (out,) if r is None else out
    loss = (outs[0].float() * dy.float()).sum()
    if r is not None:
        loss = loss + (outs[1].float() * dh.float()).sum()
    loss.backward()
    grads = tuple(t.grad for t in (x, w, r) if t is not None)
    return outs, grads


def assert_matches(case, got, want, tol, names):
    assert len(got) == len(want)
    for name, a, b in zip(names[: len(got)], got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m, n=name: f"{n}: {m}")


@given(cases())
def test_triton_matches_reference(case):
    note(repr(case))
    x, w, r, dy, dh = build(case)
    tol = RMS_NORM.backend("triton").tolerance(case["dtype"])
    want_out, want_grads = run(rms_norm_reference, x, w, r, case["eps"], dy, dh)
    got_out, got_grads = run(
        lambda *a, **k: rms_norm(*a, backend="triton", **k), x, w, r, case["eps"], dy, dh
    )
    assert_matches(case, got_out, want_out, tol, ["y", "h"])
    assert_matches(case, got_grads, want_grads, tol, ["dx", "dweight", "dresidual"])


@given(cases())
def test_reference_custom_op_matches_reference_autograd(case):
    note(repr(case))
    x, w, r, dy, dh = build(case)
    want_out, want_grads = run(rms_norm_reference, x, w, r, case["eps"], dy, dh)
    got_out, got_grads = run(
        lambda *a, **k: rms_norm(*a, backend="reference", **k), x, w, r, case["eps"], dy, dh
    )
    for a, b in zip(got_out, want_out, strict=True):
        assert torch.equal(a, b)
    # the analytic backward vs autograd through the reference: fp32 rounding order only
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[case["dtype"]]
    assert_matches(case, got_grads, want_grads, {"atol": tol, "rtol": tol},
                   ["dx", "dweight", "dresidual"])


def test_fp64_reference_is_exactish_and_triton_rejects_it_with_a_reason():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, backend="reference"), (x, w))
    with pytest.raises(ValueError, match="triton: dtype float64 is not supported"):
        rms_norm(x, w, backend="triton")
    assert torch.equal(rms_norm(x, w), rms_norm_reference(x, w))  # auto falls back


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("residual", [False, True])
def test_opcheck(backend, residual):
    x = torch.randn(3, 2, 10, requires_grad=True)
    w = torch.randn(10, requires_grad=True)
    r = torch.randn(3, 2, 10, requires_grad=True) if residual else None
    torch.library.opcheck(torch.ops.nxkernels.rms_norm_fwd.default, (x, w, r, 1e-6, backend))
    h = x.detach() + (0 if r is None else r.detach())
    rstd = torch.rsqrt(h.pow(2).mean(-1) + 1e-6)
    torch.library.opcheck(torch.ops.nxkernels.rms_norm_bwd.default,
                          (torch.randn(3, 2, 10), h, w.detach(), rstd, backend))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(compiler):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, generator=gen).requires_grad_()
    w = torch.randn(32, generator=gen).requires_grad_()
    r = torch.randn(32, generator=gen).requires_grad_()

    def block(x, w, r):
        y, h = rms_norm(x, w, 1e-5, residual=r)
        return (y * 2).sum() + h.sum()

    compiled = torch.compile(block, backend=compiler, fullgraph=True)
    got = compiled(x, w, r)
    got_grads = torch.autograd.grad(got, (x, w, r))
    y, h = rms_norm_reference(x, w, 1e-5, residual=r)
    want = (y * 2).sum() + h.sum()
    want_grads = torch.autograd.grad(want, (x, w, r))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)  # a sum of 400 terms: order differs
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_takes_triton_on_cuda_only_and_the_interpreter_when_asked_for():
    x, w = torch.randn(2, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    assert RMS_NORM.select(x, w, 1e-6).name == ("triton" if DEVICE == "cuda" else "reference")
    with dispatch.use_backend("triton"):  # TRITON_INTERPRET=1 is set above on a CPU-only box
        assert RMS_NORM.select(x, w, 1e-6).name == "triton"
    with dispatch.use_backend("reference"):
        assert RMS_NORM.select(x, w, 1e-6).name == "reference"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_pinned_triton_without_the_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.clear_cache()
    x, w = torch.randn(2, 8), torch.randn(8)
    try:
        with pytest.raises(ValueError, match=r"(?s)'triton' \(backend='triton'\).*TRITON_INTERPRET=1"):
            rms_norm(x, w, backend="triton")
        assert RMS_NORM.select(x, w, 1e-6).name == "reference"
    finally:
        dispatch.clear_cache()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.randn(2, 4), torch.randn(5)), {}, ValueError, r"weight has shape \(5,\).*must be \[4\]"),
        ((torch.randn(2, 4), torch.randn(4)), {"residual": torch.randn(3, 4)}, ValueError,
         "does not broadcast to x's shape"),
        ((torch.randn(2, 4), torch.randn(4)), {"residual": torch.randn(2, 4).double()}, TypeError,
         "residual has dtype torch.float64 but x has torch.float32"),
        ((torch.randn(2, 4), torch.randn(4), -1.0), {}, ValueError, "eps must be a float >= 0"),
        ((torch.ones(2, 4, dtype=torch.long), torch.randn(4)), {}, TypeError, "x must be floating"),
        ((torch.randn(2, 4), torch.randn(4)), {"backend": "fast"}, ValueError, "not understood"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        rms_norm(*args, **kwargs)


def test_autograd_function_is_usable_on_its_own():
    from nxkernels.rms_norm.triton import RMSNormTriton

    x = torch.randn(3, 17, requires_grad=True)
    w = torch.randn(17, requires_grad=True)
    y = RMSNormTriton.apply(x, w, None, 1e-6)
    y.sum().backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    rms_norm_reference(x, w).sum().backward()
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, w.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [3584, 5120])
def test_triton_matches_reference_at_real_shapes_on_cuda(dtype, hidden):
    case = {"lead": (2, 1024), "dim": hidden, "dtype": dtype, "residual": "full",
            "layout": "contiguous", "eps": 1e-6, "seed": 0}
    x, w, r, dy, dh = build(case)
    tol = RMS_NORM.backend("triton").tolerance(dtype)
    want_out, want_grads = run(rms_norm_reference, x, w, r, 1e-6, dy, dh)
    got_out, got_grads = run(lambda *a, **k: rms_norm(*a, backend="triton", **k), x, w, r, 1e-6, dy, dh)
    assert_matches(case, got_out, want_out, tol, ["y", "h"])
    # dweight sums 2048 rows: compare it relative to its scale
    assert_matches(case, got_grads[::2], want_grads[::2], tol, ["dx", "dresidual"])
    scale = want_grads[1].float().abs().max()
    torch.testing.assert_close(got_grads[1].float() / scale, want_grads[1].float() / scale, **tol)
