"""linear_cross_entropy: every backend (torch, triton under the interpreter, the reference custom op)
against the autograd reference on the loss and the gradients of hidden, weight and bias; no [N, V]
tensor and no matmul rows for ignored rows; opcheck; torch.compile; input errors."""

import os

import torch

# Without CUDA the Triton kernel runs under the interpreter at tiny shapes. This must be set before
# anything imports nxkernels.linear_cross_entropy.triton: triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from nxkernels import dispatch  # noqa: E402
from nxkernels.linear_cross_entropy import (  # noqa: E402
    LINEAR_CROSS_ENTROPY,
    chunked,
    linear_cross_entropy,
    linear_cross_entropy_reference,
)

HAS_TRITON = dispatch.importlib.util.find_spec("triton") is not None
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OPTIONS = ("ignore_index", "label_smoothing", "z_loss", "reduction", "vocab_range")


@st.composite
def cases(draw, dtypes=DTYPES):
    vocab = draw(st.sampled_from([2, 5, 127, 130, 300]))
    start = draw(st.sampled_from([0, 0, vocab // 3]))
    end = draw(st.sampled_from([vocab, vocab, max(start + 1, vocab - 3)]))
    return {
        "n": draw(st.sampled_from([1, 2, 7, 12])),
        "dim": draw(st.sampled_from([1, 3, 16])),
        "vocab": vocab,
        "vocab_range": None if (start, end) == (0, vocab) else (start, end),
        "dtype": draw(st.sampled_from(dtypes)),
        "bias": draw(st.booleans()),
        "weights": draw(st.sampled_from(["none", "random", "some zero", "all zero"])),
        "ignored": draw(st.sampled_from(["none", "some", "all"])),
        "ignore_index": draw(st.sampled_from([-100, 0])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
        "z_loss": draw(st.sampled_from([0.0, 1e-3])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "grad_out": draw(st.sampled_from(["one", "random"])),
        "chunk_rows": draw(st.sampled_from([None, 1, 3])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, dim, vocab, dtype = case["n"], case["dim"], case["vocab"], case["dtype"]

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype).requires_grad_()

    hidden = leaf(n, dim)
    weight = leaf(vocab, dim, scale=2 / dim**0.5)
    bias = leaf(vocab) if case["bias"] else None
    start, end = case["vocab_range"] or (0, vocab)
    targets = torch.randint(start, end, (n,), generator=g)
    if case["ignore_index"] == 0 and start == 0:  # id 0 is the ignore marker here: keep real targets off it
        targets = targets.clamp_min(1) if end > 1 else targets
    if case["ignored"] == "all":
        targets[:] = case["ignore_index"]
    elif case["ignored"] == "some":
        targets[torch.rand(n, generator=g) < 0.4] = case["ignore_index"]
    token_weights = None
    if case["weights"] != "none":
        token_weights = torch.rand(n, generator=g) * 2
        if case["weights"] == "some zero":
            token_weights[torch.rand(n, generator=g) < 0.4] = 0.0
        elif case["weights"] == "all zero":
            token_weights.zero_()
        token_weights = token_weights.to(DEVICE)
    if case["reduction"] == "none":
        grad_out = torch.randn(n, generator=g)
    else:
        grad_out = torch.tensor(1.0 if case["grad_out"] == "one" else 0.7)
    kwargs = {k: case[k] for k in OPTIONS}
    return (hidden, weight, targets.to(DEVICE)), {"bias": bias, "token_weights": token_weights, **kwargs}, \
        grad_out.to(DEVICE)


def run(fn, args, kwargs, grad_out, chunk=None):
    leaves = [t for t in (*args[:2], kwargs["bias"]) if t is not None]
    for t in leaves:
        t.grad = None
    if chunk is None:
        loss = fn(*args, **kwargs)
    else:
        with chunked.chunk_rows(chunk):
            loss = fn(*args, **kwargs)
    loss.backward(grad_out.to(loss.dtype))
    return loss.detach(), [t.grad for t in leaves]


def assert_matches(got, want, tol, what, floors=(0.0, 0.0, 0.0)):
    """Loss as is; each gradient divided, with the reference's, by its scale: the larger of the
    reference's largest magnitude and ``floor``, the size of one row's term (so that a gradient that
    cancels to almost nothing, e.g. at the label-smoothing optimum, is judged by its terms' size)."""
    (loss, grads), (want_loss, want_grads) = got, want
    assert loss.dtype == want_loss.dtype and loss.shape == want_loss.shape
    assert torch.isfinite(loss).all(), f"{what}: non-finite loss"
    torch.testing.assert_close(loss, want_loss, **tol, msg=lambda m: f"{what} loss: {m}")
    for name, a, b, floor in zip(["dhidden", "dweight", "dbias"], grads, want_grads, floors, strict=False):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        scale = max(float(b.float().abs().max()), float(floor), torch.finfo(torch.float32).tiny)
        torch.testing.assert_close(a.float() / scale, b.float() / scale, **tol,
                                   msg=lambda m, n=name: f"{what} {n}: {m}")


def term_sizes(args, kwargs, grad_out):
    """One row's contribution to each gradient: max |c_i| times max |weight| / |hidden| / 1, with
    c_i = d(output)/d(ℓ_i) the row's scale."""
    hidden, weight, targets = args
    c = (targets != kwargs["ignore_index"]).double()
    if kwargs["token_weights"] is not None:
        c = c * kwargs["token_weights"].double()
    if kwargs["reduction"] == "mean":
        c = c / c.sum().clamp_min(1e-30)
    c = (c * grad_out.double()).abs().max()
    return float(c * weight.detach().abs().max()), float(c * hidden.detach().abs().max()), float(c)


def check_backend(backend, case):
    note(repr(case))
    args, kwargs, grad_out = build(case)
    want = run(linear_cross_entropy_reference, args, kwargs, grad_out)
    got = run(lambda *a, **k: linear_cross_entropy(*a, backend=backend, **k), args, kwargs, grad_out,
              chunk=case["chunk_rows"])
    tol = LINEAR_CROSS_ENTROPY.backend(backend).tolerance(case["dtype"])
    assert_matches(got, want, tol, backend, term_sizes(args, kwargs, grad_out))
    if case["ignored"] == "all" or case["weights"] == "all zero":  # nothing carries loss: exact zeros
        assert not got[0].any() and not any(g.any() for g in got[1])


@settings(max_examples=60)
@given(cases())
def test_torch_backend_matches_reference(case):
    check_backend("torch", case)


@settings(max_examples=30)
@given(cases())
def test_reference_custom_op_matches_reference_autograd(case):
    check_backend("reference", case)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@settings(max_examples=20)
@given(cases())
def test_triton_backend_matches_reference(case):
    check_backend("triton", case)


def test_torch_backend_gradcheck_in_float64():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, -100, 5, 7, 3])
    weights = torch.tensor([1.0, 2.0, 0.0, 0.5, 1.5], dtype=torch.float64)
    for reduction in ("mean", "none"):
        def f(h, w, b, reduction=reduction):
            with chunked.chunk_rows(2):
                return linear_cross_entropy(h, w, targets, bias=b, token_weights=weights, label_smoothing=0.2,
                                            z_loss=0.01, reduction=reduction, vocab_range=(2, 8), backend="torch")

        assert torch.autograd.gradcheck(f, (hidden, weight, bias))


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nothing_carries_loss_gives_zero_not_nan(backend, reduction):
    if backend == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    hidden = torch.randn(4, 6, requires_grad=True)
    weight = torch.randn(11, 6, requires_grad=True)
    for targets, weights in ((torch.full((4,), -100), None), (torch.tensor([1, 2, 3, 4]), torch.zeros(4))):
        hidden.grad = weight.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, token_weights=weights, reduction=reduction,
                                    label_smoothing=0.1, z_loss=1e-3, backend=backend)
        loss.sum().backward()
        assert torch.equal(loss, torch.zeros_like(loss))
        assert torch.equal(hidden.grad, torch.zeros_like(hidden))
        assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_vocab_range_scores_only_the_slice_and_leaves_other_rows_without_gradient():
    hidden = torch.randn(6, 5, requires_grad=True)
    weight = torch.randn(20, 5, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    targets = torch.tensor([12, 15, -100, 19, 12, 13])
    loss = linear_cross_entropy(hidden, weight, targets, bias=bias, vocab_range=(12, 20), backend="torch")
    loss.backward()
    logits = hidden @ weight[12:20].T + bias[12:20]
    keep = targets != -100
    want = torch.nn.functional.cross_entropy(logits[keep], targets[keep] - 12)
    torch.testing.assert_close(loss, want)
    assert not weight.grad[:12].any() and not bias.grad[:12].any()
    assert weight.grad[12:].abs().sum() > 0 and bias.grad[12:].abs().sum() > 0


def test_bf16_grad_weight_is_accumulated_in_fp32_across_chunks():
    # (the triton backend shares this accumulation code: chunked._accumulate)
    g = torch.Generator().manual_seed(0)
    n, chunk = 256, 2  # 128 chunk products added into every grad_weight row
    hidden = torch.randn(n, 8, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(6, 8, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 6, (n,), generator=g)
    with chunked.chunk_rows(chunk):
        linear_cross_entropy(hidden, weight, targets, reduction="sum", backend="torch").backward()
    h64 = hidden.detach().double()
    dz = (h64 @ weight.detach().double().T).softmax(-1)
    dz[torch.arange(n), targets] -= 1
    want = dz.T @ h64
    # dlogits stay fp32 for grad_weight; the sum is fp32, rounded to bf16 once
    err = (weight.grad.double() - want).abs().max() / want.abs().max()
    assert err < 2**-7, float(err)
    # a bf16 running sum of the same chunk products misses that bound (so the test can fail)
    running = torch.zeros(6, 8, dtype=torch.bfloat16)
    for first in range(0, n, chunk):
        running += (dz[first : first + chunk].T @ h64[first : first + chunk]).bfloat16()
    assert (running.double() - want).abs().max() / want.abs().max() > 2**-7


# ------------------------------------------------------------------------------------------------
# memory and work: no [N, V] tensor, ignored rows never reach a matmul


class _Record(TorchDispatchMode):
    """Every op's floating-point output shapes, and the rows of each matmul whose output is V' wide."""

    def __init__(self, width):
        super().__init__()
        self.width, self.shapes, self.logit_rows = width, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():  # (the interpreter copies bytes)
                self.shapes.append(tuple(t.shape))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and out.shape[-1] == self.width:
            self.logit_rows.append(out.shape[0])
        return out


def _kernels(backend):
    return LINEAR_CROSS_ENTROPY.backend(backend).load()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_path_never_builds_n_by_v_and_skips_rows_without_loss(backend, reduction):
    if backend == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    n, dim, vocab, chunk = 48, 4, 150, 8  # chunk * vocab > vocab * dim
    hidden, weight, bias = torch.randn(n, dim), torch.randn(vocab, dim), torch.randn(vocab)
    targets = torch.randint(0, vocab, (n,))
    targets[::3] = -100  # 16 ignored rows
    weights = torch.rand(n) + 0.5
    weights[1::6] = 0.0  # 8 more rows (not already ignored) without loss
    carrying = int(((targets != -100) & (weights != 0)).sum())
    assert carrying == 24
    kernels = _kernels(backend)
    record = _Record(vocab)
    with chunked.chunk_rows(chunk), record:
        kernels["forward"](hidden, weight, targets, bias, weights, -100, 0.1, 1e-3, reduction, 0, vocab,
                           True, True, True)
        if reduction == "none":
            kernels["backward"](torch.randn(n), hidden, weight, targets, bias, weights, -100, 0.1, 1e-3, 0,
                                vocab, True, True, True)
    passes = 2 if reduction == "none" else 1
    assert sum(record.logit_rows) == passes * carrying  # ignored and zero-weight rows skip the matmul
    assert max(record.logit_rows) == chunk
    numel = [int(torch.Size(s).numel()) for s in record.shapes]
    assert max(numel) == chunk * vocab < n * vocab  # one chunk of logits is the largest tensor
    assert all(s[0] <= chunk for s in record.shapes if len(s) == 2 and s[1] == vocab)


# ------------------------------------------------------------------------------------------------
# custom ops, compile, dispatch


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(backend, reduction):
    if backend == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=g, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, requires_grad=True)
    bias = torch.randn(9, generator=g, requires_grad=True)
    targets = torch.tensor([3, -100, 4, 7, 5])
    weights = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.5])
    torch.library.opcheck(
        torch.ops.nxkernels.linear_cross_entropy_fwd.default,
        (hidden, weight, targets, bias, weights, -100, 0.1, 1e-3, reduction, 2, 8, True, True, True, backend),
    )
    torch.library.opcheck(
        torch.ops.nxkernels.linear_cross_entropy_bwd.default,
        (torch.randn(5, generator=g), hidden.detach(), weight.detach(), targets, bias.detach(), weights, -100,
         0.1, 1e-3, 2, 8, True, True, True, backend),
    )


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(compiler):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    targets = torch.tensor([1, 5, -100, 29, 3, 0])
    weights = torch.tensor([1.0, 0.5, 1.0, 2.0, 0.0, 1.0])

    def step(h, w, fn):
        mean = fn(h, w, targets, token_weights=weights, label_smoothing=0.1, z_loss=1e-3)
        rows = fn(h * 2, w, targets, reduction="none", vocab_range=(0, 30))
        return mean * 3 + (rows * torch.arange(6.0)).sum()

    compiled = torch.compile(lambda h, w: step(h, w, linear_cross_entropy), backend=compiler, fullgraph=True)
    got = compiled(hidden, weight)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    want = step(hidden, weight, linear_cross_entropy_reference)
    want_grads = torch.autograd.grad(want, (hidden, weight))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_takes_triton_on_cuda_only_and_the_interpreter_when_asked_for():
    args = (torch.randn(2, 4, device=DEVICE), torch.randn(7, 4, device=DEVICE),
            torch.zeros(2, dtype=torch.long, device=DEVICE))
    assert LINEAR_CROSS_ENTROPY.select(*args).name == ("triton" if DEVICE == "cuda" else "torch")
    if HAS_TRITON:
        with dispatch.use_backend("triton"):  # TRITON_INTERPRET=1 is set above on a CPU-only box
            assert LINEAR_CROSS_ENTROPY.select(*args).name == "triton"
    with dispatch.use_backend("reference"):
        assert LINEAR_CROSS_ENTROPY.select(*args).name == "reference"
    double = [a.double() if a.is_floating_point() else a for a in args]
    assert LINEAR_CROSS_ENTROPY.select(*double).name == "torch"
    with pytest.raises(ValueError, match="triton: dtype float64 is not supported"):
        linear_cross_entropy(*double, backend="triton")


def test_inference_computes_no_gradients():
    hidden, weight = torch.randn(3, 4, requires_grad=True), torch.randn(7, 4, requires_grad=True)
    targets = torch.tensor([1, 2, 3])
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    assert not loss.requires_grad
    _, gh, gw, gb = torch.ops.nxkernels.linear_cross_entropy_fwd(
        hidden.detach(), weight.detach(), targets, None, None, -100, 0.0, 0.0, "mean", 0, 7, False, False,
        False, "torch")
    assert gh.numel() == gw.numel() == gb.numel() == 0
    torch.testing.assert_close(loss, linear_cross_entropy_reference(hidden, weight, targets))


def _bad(**overrides):
    args = {"hidden": torch.randn(3, 4), "weight": torch.randn(10, 4), "targets": torch.tensor([1, 2, -100])}
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "match"),
    [
        (_bad(hidden=torch.randn(2, 3, 4)), {}, ValueError, r"hidden must be \[tokens, dim\].*reshape\(-1, 4\)"),
        (_bad(weight=torch.randn(10, 5)), {}, ValueError, r"weight has shape \(10, 5\) but hidden has width 4"),
        (_bad(weight=torch.randn(10, 4).double()), {}, TypeError, "weight has dtype torch.float64 but hidden"),
        (_bad(targets=torch.tensor([1, 2])), {}, ValueError, r"targets has shape \(2,\).*must be \[3\]"),
        (_bad(targets=torch.tensor([1.0, 2.0, 3.0])), {}, TypeError, "targets must hold integer class ids"),
        (_bad(targets=torch.tensor([1, 10, 2])), {}, ValueError, r"targets contains 10, outside \[0, 10\)"),
        (_bad(targets=torch.tensor([1, -5, 2])), {}, ValueError, r"targets contains -5.*ignore_index \(-100\)"),
        (_bad(targets=torch.tensor([6, 3, 2])), {"vocab_range": (4, 8)}, ValueError,
         r"targets contains 3, outside the vocab_range \[4, 8\)"),
        (_bad(), {"vocab_range": (8, 4)}, ValueError, r"vocab_range must be \(start, end\) with 0 <= start"),
        (_bad(), {"vocab_range": (0, 11)}, ValueError, r"end <= vocab \(10\), got \(0, 11\)"),
        (_bad(), {"reduction": "avg"}, ValueError, "reduction='avg' is not one of 'mean', 'sum', 'none'"),
        (_bad(), {"label_smoothing": 1.5}, ValueError, r"label_smoothing must be a float in \[0, 1\], got 1.5"),
        (_bad(), {"z_loss": -1e-4}, ValueError, "z_loss must be a finite float >= 0"),
        (_bad(), {"bias": torch.randn(9)}, ValueError, r"bias has shape \(9,\) but weight has 10 rows"),
        (_bad(), {"token_weights": torch.ones(4)}, ValueError, r"token_weights has shape \(4,\).*must be \[3\]"),
        (_bad(), {"token_weights": torch.tensor([1.0, -1.0, 1.0])}, ValueError,
         "token_weights must be finite and >= 0"),
        (_bad(), {"token_weights": torch.tensor([1.0, float("nan"), 1.0])}, ValueError,
         "token_weights must be finite and >= 0"),
        (_bad(hidden=torch.ones(3, 4, dtype=torch.long)), {}, TypeError, "hidden must be floating point"),
        (_bad(), {"backend": "fast"}, ValueError, "backend='fast' is not understood"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(inputs, kwargs, error, match):
    with pytest.raises(error, match=match):
        linear_cross_entropy(inputs["hidden"], inputs["weight"], inputs["targets"], **kwargs)


def test_chunk_rows_rejects_a_bad_count():
    with pytest.raises(ValueError, match="chunk_rows takes a row count >= 1, got 0"), chunked.chunk_rows(0):
        pass


# ------------------------------------------------------------------------------------------------
# CUDA: the real NextFlow-7B head


NEXTFLOW_DIM, NEXTFLOW_VOCAB = 3584, 152064 + 16384 + 16


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_reference_at_the_nextflow_shape_on_cuda(backend, dtype):
    case = {"n": 1024, "dim": NEXTFLOW_DIM, "vocab": NEXTFLOW_VOCAB, "vocab_range": None, "dtype": dtype,
            "bias": False, "weights": "some zero", "ignored": "some", "ignore_index": -100,
            "label_smoothing": 0.1, "z_loss": 1e-4, "reduction": "mean", "grad_out": "random",
            "chunk_rows": None, "seed": 0}
    check_backend(backend, case)


@pytest.mark.gpu
def test_triton_peak_memory_is_an_eighth_of_the_plain_path_on_cuda():
    n = 16384  # the target: the NextFlow-7B head at N = 16384, fused <= 1/8 of plain
    hidden = torch.randn(n, NEXTFLOW_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(NEXTFLOW_VOCAB, NEXTFLOW_DIM, device="cuda", dtype=torch.bfloat16) / 60).requires_grad_()
    targets = torch.randint(0, NEXTFLOW_VOCAB, (n,), device="cuda")

    def peak(fn):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    plain = peak(lambda: torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets))
    fused = peak(lambda: linear_cross_entropy(hidden, weight, targets, backend="triton"))
    # analytic (benchmarks/linear_cross_entropy.py): plain ~12 N V bytes = 33.1 GB; fused 3.7 GB =
    # grad_weight's fp32 accumulator and its bf16 cast + grad_hidden (one chunk is freed before the cast)
    assert fused <= plain / 8, (fused / 2**20, plain / 2**20)
