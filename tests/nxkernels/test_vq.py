"""vq_nearest: the torch (chunked) and Triton (interpreter on CPU) backends against the reference, bit
for bit; the distance definition against fp64; ties; the screen's bound; memory; opcheck;
torch.compile; input errors."""

import os

import torch

# Without CUDA the Triton kernel runs under the interpreter at tiny shapes. This must be set before
# anything imports nxkernels.vq.triton: triton.jit reads it at decoration time.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from hypothesis import example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from nxkernels import dispatch  # noqa: E402
from nxkernels.vq import TRITON_MAX_K, VQ, VQResult, vq_nearest  # noqa: E402
from nxkernels.vq import chunked as chunked_mod  # noqa: E402
from nxkernels.vq.reference import fixed_order_sq_dist, prepare  # noqa: E402

HAS_TRITON = dispatch.importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@st.composite
def cases(draw, max_codes=70):
    n_codes = draw(st.integers(1, max_codes))
    pix_dim = draw(st.sampled_from([None, 1, 5, 8]))
    w_sem = draw(st.sampled_from([1.0, 0.3, 2.5, 0.0]))
    w_pix = None if pix_dim is None else draw(st.sampled_from([1.0, 0.7, 3.0, 0.0]))
    if w_sem == 0 and (pix_dim is None or w_pix == 0):
        w_sem = 1.0
    k = draw(st.sampled_from([1, 2, 5, "all"]))
    return {
        "n": draw(st.integers(1, 48)),
        "codes": n_codes,
        "sem_dim": draw(st.sampled_from([1, 3, 8, 9, 32])),
        "pix_dim": pix_dim,
        "w_sem": w_sem,
        "w_pix": w_pix,
        "normalize": draw(st.booleans()),
        "k": n_codes if k == "all" else min(k, n_codes),
        "dtype": draw(st.sampled_from(DTYPES)),
        "chunk": draw(st.sampled_from([None, 1, 3, 16, 64])),
        # duplicated codewords (some / all), a coarse grid (many exact ties between distinct
        # codewords), a large common offset (the matmul screen cancels badly)
        "data": draw(st.sampled_from(["randn", "duplicates", "all_equal", "grid", "offset"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, n_codes = case["n"], case["codes"]
    dims = [case["sem_dim"]] + ([] if case["pix_dim"] is None else [case["pix_dim"]])
    zs = [torch.randn(n, d, generator=g) for d in dims]
    es = [torch.randn(n_codes, d, generator=g) for d in dims]
    data = case["data"]
    if data == "duplicates" and n_codes > 1:
        src = torch.randint(0, n_codes, (max(1, n_codes // 3),), generator=g)
        dst = torch.randint(0, n_codes, src.shape, generator=g)
        hit = torch.randint(0, n_codes, (n,), generator=g)
        for z, e in zip(zs, es, strict=True):
            e[dst] = e[src]
            z[: n // 2] = e[hit[: n // 2]]  # rows sitting exactly on a (possibly duplicated) codeword
    elif data == "all_equal":
        for e in es:
            e[:] = e[0].clone()
    elif data == "grid":
        zs = [z.mul(2).round() for z in zs]
        es = [e.mul(2).round() for e in es]
    elif data == "offset":
        zs = [z * 0.01 + 50 for z in zs]
        es = [e * 0.01 + 50 for e in es]
    zs = [z.to(device=DEVICE, dtype=case["dtype"]) for z in zs]
    es = [e.to(device=DEVICE, dtype=case["dtype"]) for e in es]
    if len(dims) == 1:
        return zs[0], es[0], None, None
    return zs[0], es[0], zs[1], es[1]


def search(case, backend, chunk=None):
    z_sem, cb_sem, z_pix, cb_pix = build(case)
    return vq_nearest(z_sem, cb_sem, z_pix, cb_pix, w_sem=case["w_sem"], w_pix=case["w_pix"],
                      normalize=case["normalize"], k=case["k"], chunk=chunk, backend=backend)


def assert_identical(got: VQResult, want: VQResult):
    assert got.indices.dtype == torch.int64 and got.distances.dtype == torch.float32
    assert torch.equal(got.indices, want.indices), (got.indices, want.indices)
    # bitwise: equal as float and as bits (so +0/-0 or NaN payloads would show)
    assert torch.equal(got.distances.view(torch.int32), want.distances.view(torch.int32))


ONE_ROW = {"n": 1, "codes": 37, "sem_dim": 3, "pix_dim": 5, "w_sem": 0.3, "w_pix": 1.0, "normalize": True,
           "k": 37, "dtype": torch.bfloat16, "chunk": 16, "data": "duplicates", "seed": 1}


@settings(max_examples=60)
@given(cases())
@example(ONE_ROW)
def test_torch_backend_matches_reference_bit_for_bit(case):
    note(repr(case))
    assert_identical(search(case, "torch", case["chunk"]), search(case, "reference"))


@needs_triton
@settings(max_examples=10)
@given(cases())
@example(ONE_ROW)
def test_triton_matches_reference_bit_for_bit(case):
    case["k"] = min(case["k"], TRITON_MAX_K)
    note(repr(case))
    assert_identical(search(case, "triton"), search(case, "reference"))


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_definition_agrees_with_exact_arithmetic_except_near_ties(dual, normalize):
    g = torch.Generator().manual_seed(1 + dual + 2 * normalize)
    n, n_codes, dims = 300, 500, ([32, 8] if dual else [32])
    zs = [torch.randn(n, d, generator=g) for d in dims]
    es = [torch.randn(n_codes, d, generator=g) for d in dims]
    weights = [1.0, 0.5][: len(dims)]
    got = vq_nearest(zs[0], es[0], *(zs[1:] + es[1:]) if dual else (), w_pix=0.5 if dual else None,
                     normalize=normalize, k=2, backend="torch")
    halves = prepare(zs[0], es[0], zs[1] if dual else None, es[1] if dual else None, 1.0,
                     0.5 if dual else 0.0, normalize)
    exact = sum(w * torch.cdist(z.double(), e.double()).square() for (z, e, _), w in
                zip(halves, weights, strict=True))
    best2, idx2 = exact.topk(2, dim=1, largest=False)
    rel_err = (sum(dims) + 6) * 2.0**-24
    assert torch.all((got.distances[:, 0].double() - best2[:, 0]).abs() <= 2 * rel_err * best2[:, 0] + 1e-30)
    clear = (best2[:, 1] - best2[:, 0]) > 4 * rel_err * best2[:, 1]
    assert clear.float().mean() > 0.97  # near-ties are rare, so the check below covers most rows
    assert torch.equal(got.indices[clear, 0], idx2[clear, 0])


def _backends():
    return ["reference", "torch", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dual", [False, True])
def test_duplicated_codewords_resolve_to_the_lowest_index(backend, dual):
    g = torch.Generator().manual_seed(7)
    n_codes, copies = 50, [3, 17, 31, 49]  # across chunk boundaries for chunk=16
    halves = []
    for d in ([9, 5] if dual else [9]):
        e = torch.randn(n_codes, d, generator=g) * 3
        e[copies] = e[3].clone()
        z = e[3] + 1e-3 * torch.randn(20, d, generator=g)
        z[0] = e[3]  # exactly on the duplicated codeword: distance 0 four times
        halves += [z.to(DEVICE), e.to(DEVICE)]
    zs, es = halves[0::2], halves[1::2]
    for chunk in ([None, 1, 16] if backend == "torch" else [None]):
        top1 = vq_nearest(zs[0], es[0], *zs[1:], *es[1:], chunk=chunk, backend=backend)
        assert top1.indices.tolist() == [3] * 20
        assert top1.distances[0].item() == 0.0
        top5 = vq_nearest(zs[0], es[0], *zs[1:], *es[1:], k=5, chunk=chunk, backend=backend)
        assert top5.indices[:, :4].tolist() == [copies] * 20
        assert torch.equal(top5.distances[:, :4], top5.distances[:, :1].expand(20, 4))
        assert torch.all(top5.distances[:, 4] > top5.distances[:, 3])


@pytest.mark.parametrize("backend", _backends())
def test_an_all_equal_codebook_returns_the_first_k_indices(backend):
    e = torch.randn(1, 6).expand(40, 6).contiguous().to(DEVICE)
    z = torch.randn(9, 6).to(DEVICE)
    got = vq_nearest(z, e, k=7, backend=backend)
    assert got.indices.tolist() == [list(range(7))] * 9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_inputs_are_searched_in_fp32(dtype):
    g = torch.Generator().manual_seed(3)
    z, e = torch.randn(30, 7, generator=g).to(dtype), torch.randn(60, 7, generator=g).to(dtype)
    for backend in ("torch", "reference"):
        assert_identical(vq_nearest(z, e, k=3, backend=backend), vq_nearest(z.float(), e.float(), k=3))


def test_zero_pixel_weight_is_the_single_codebook_exactly():
    g = torch.Generator().manual_seed(4)
    zs, es = torch.randn(25, 8, generator=g), torch.randn(90, 8, generator=g)
    zp, ep = torch.randn(25, 3, generator=g), torch.randn(90, 3, generator=g)
    single = vq_nearest(zs, es, w_sem=0.7, k=4)
    assert_identical(vq_nearest(zs, es, zp, ep, w_sem=0.7, w_pix=0.0, k=4), single)
    assert_identical(vq_nearest(zs, es, w_sem=0.7, w_pix=0, k=4), single)
    pix_only = vq_nearest(zp, ep, k=4)
    assert_identical(vq_nearest(zs, es, zp, ep, w_sem=0.0, k=4), pix_only)


def test_screen_bound_holds_and_the_rescoring_is_what_makes_results_exact(monkeypatch):
    """The margin bounds the matmul estimate's error on data built to cancel; with a zero margin the
    same search goes wrong, so the bit-for-bit tests above can fail."""
    g = torch.Generator().manual_seed(5)
    z, e = 40 + 0.02 * torch.randn(64, 16, generator=g), 40 + 0.02 * torch.randn(400, 16, generator=g)
    halves = prepare(z, e, None, None, 1.0, 0.0, False)
    exact = fixed_order_sq_dist(halves[0][0][:, None, :], halves[0][1][None, :, :])
    z_aug, e_aug, zz, delta = chunked_mod.screen_setup(halves)
    approx = -2 * (z_aug @ e_aug.T)
    err = (approx - (exact - zz[:, None])).abs()
    assert torch.all(err <= delta[:, None])
    assert err.max() > 0.005 * delta.max()  # the bound is not vacuous here (generous by ~60x)
    want = vq_nearest(z, e, k=3, backend="reference")
    assert_identical(vq_nearest(z, e, k=3, chunk=50, backend="torch"), want)
    monkeypatch.setattr(chunked_mod, "screen_margin", lambda *a: torch.zeros(()))
    wrong = vq_nearest(z, e, k=3, chunk=50, backend="torch")
    assert not torch.equal(wrong.indices, want.indices)


def test_reduced_precision_matmuls_widen_the_screen_and_results_stay_exact():
    assert chunked_mod.matmul_unit_roundoff("cpu") == chunked_mod.U32
    before = torch.backends.fp32_precision
    g = torch.Generator().manual_seed(6)
    z, e = torch.randn(50, 12, generator=g), torch.randn(300, 12, generator=g)
    want = vq_nearest(z, e, k=5, backend="reference")
    try:
        torch.backends.fp32_precision = "bf16"
        assert chunked_mod.matmul_unit_roundoff("cpu") == chunked_mod.U_REDUCED
        assert chunked_mod.matmul_unit_roundoff("cuda") == chunked_mod.U_REDUCED
        assert_identical(vq_nearest(z, e, k=5, chunk=64, backend="torch"), want)
    finally:
        torch.backends.fp32_precision = before
    assert chunked_mod.matmul_unit_roundoff("cpu") == chunked_mod.U32


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("data", ["randn", "all_equal"])
@pytest.mark.parametrize("k", [1, 5])
def test_chunked_search_never_allocates_all_distances(data, k):
    g = torch.Generator().manual_seed(8)
    n, n_codes, chunk = 64, 1000, 32
    zs, es = torch.randn(n, 6, generator=g), torch.randn(n_codes, 6, generator=g)
    zp, ep = torch.randn(n, 2, generator=g), torch.randn(n_codes, 2, generator=g)
    if data == "all_equal":  # every pair is a candidate: the rescoring works in slices
        es[:], ep[:] = es[0].clone(), ep[0].clone()
    halves = prepare(zs, es, zp, ep, 1.0, 0.5, True)
    with _LargestTensor() as mode:
        got = chunked_mod.nearest_chunked(halves, k, chunk)
    want = vq_nearest(zs, es, zp, ep, w_pix=0.5, normalize=True, k=k, backend="reference")
    assert torch.equal(got[0].view(want.indices.shape), want.indices)
    # [N, chunk] steps, rescoring slices of 1024 x D pairs, and the [K, D + 1] screening codebook
    allowed = max(2 * n * (chunk + k), 1024 * 8, n_codes * (8 + 1))
    assert mode.numel <= allowed < n * n_codes // 4, (mode.numel, allowed)


@pytest.mark.parametrize("backend", _backends())
def test_shapes_batch_dims_empty_rows_and_no_gradient(backend):
    z = torch.randn(2, 3, 5, device=DEVICE, requires_grad=True)
    e = torch.randn(11, 5, device=DEVICE, requires_grad=True)
    one = vq_nearest(z, e, backend=backend)
    assert one.indices.shape == one.distances.shape == (2, 3)
    assert not one.distances.requires_grad and not one.indices.requires_grad
    four = vq_nearest(z, e, k=4, backend=backend)
    assert four.indices.shape == (2, 3, 4)
    assert torch.equal(four.indices[..., 0], one.indices)
    empty = vq_nearest(z[:0], e, k=2, backend=backend)
    assert empty.indices.shape == (0, 3, 2) and empty.distances.dtype == torch.float32


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dual", [False, True])
def test_opcheck(backend, dual):
    g = torch.Generator().manual_seed(9)
    args = [torch.randn(6, 5, generator=g), torch.randn(13, 5, generator=g)]
    args += [torch.randn(6, 3, generator=g), torch.randn(13, 3, generator=g)] if dual else [None, None]
    torch.library.opcheck(torch.ops.nxkernels.vq_nearest.default,
                          (*args, 1.0, 0.5 if dual else 0.0, dual, 3, 0, backend))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(10)
    zs, es = torch.randn(2, 7, 8, generator=g), torch.randn(40, 8, generator=g)
    zp, ep = torch.randn(2, 7, 3, generator=g), torch.randn(40, 3, generator=g)

    def quantize(zs, es, zp, ep):
        idx, dist = vq_nearest(zs, es, zp, ep, w_pix=0.5, normalize=True, k=3)
        quantized = es[idx[..., 0]] * 2  # the caller's straight-through / lookup continues in-graph
        return idx, dist, quantized

    compiled = torch.compile(quantize, backend=compiler, fullgraph=True)
    for got, want in zip(compiled(zs, es, zp, ep), quantize(zs, es, zp, ep), strict=True):
        assert torch.equal(got, want)


def test_auto_choice_and_declared_reasons():
    z, e = torch.randn(4, 3, device=DEVICE), torch.randn(80, 3, device=DEVICE)
    auto = "triton" if DEVICE == "cuda" else "torch"
    assert VQ.select(z, e, None, None, k=1, chunk=None).name == auto
    assert VQ.select(z, e, None, None, k=TRITON_MAX_K + 1, chunk=None).name == "torch"
    assert VQ.select(z, e, None, None, k=1, chunk=8).name == "torch"
    with pytest.raises(ValueError, match=rf"triton: k={TRITON_MAX_K + 1} exceeds the kernel's"):
        vq_nearest(z, e, k=TRITON_MAX_K + 1, backend="triton")
    with pytest.raises(ValueError, match="reference: chunk=8 sets the torch backend's step"):
        vq_nearest(z, e, chunk=8, backend="reference")
    if HAS_TRITON:
        with dispatch.use_backend("triton"):  # the interpreter on a CPU-only box
            assert VQ.select(z, e, None, None, k=1, chunk=None).name == "triton"


_Z, _E = torch.randn(4, 6), torch.randn(10, 6)
_ZP, _EP = torch.randn(4, 2), torch.randn(10, 2)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((_Z, _E, _ZP, torch.randn(9, 2)), {}, ValueError,
         "codebook_pix has 9 codewords but codebook_sem has 10; the two codebooks share one index space"),
        ((_Z, _E), {"k": 11}, ValueError, r"k=11 must be between 1 and the number of codewords \(10\)"),
        ((_Z, _E), {"k": 0}, ValueError, "k=0 must be between 1"),
        ((_Z, _E, _ZP), {}, ValueError, "z_pix is given but codebook_pix is None; pass both pixel halves"),
        ((_Z, _E, None, _EP), {}, ValueError, "codebook_pix is given but z_pix is None"),
        ((_Z, torch.randn(10, 5)), {}, ValueError, "z_sem has 6 channels but codebook_sem has 5"),
        ((_Z, _E, torch.randn(3, 2), _EP), {}, ValueError, r"z_pix has shape \(3, 2\) but z_sem has \(4, 6\)"),
        ((_Z, _E, _ZP, torch.randn(10, 3)), {}, ValueError, "z_pix has 2 channels but codebook_pix has 3"),
        ((_Z, _E), {"w_pix": 0.5}, ValueError, "w_pix=0.5 is given without a pixel half"),
        ((_Z, _E), {"w_sem": -1.0}, ValueError, "w_sem must be a finite float >= 0, got -1.0"),
        ((_Z, _E, _ZP, _EP), {"w_pix": float("nan")}, ValueError, "w_pix must be a finite float >= 0"),
        ((_Z, _E, _ZP, _EP), {"w_sem": 0.0, "w_pix": 0.0}, ValueError, "w_sem and w_pix are both 0"),
        ((_Z, _E), {"chunk": 0}, ValueError, "chunk must be None or an int >= 1"),
        ((_Z.long(), _E), {}, TypeError, "z_sem must be floating point, got torch.int64"),
        ((_Z, _E.numpy()), {}, TypeError, "codebook_sem must be a torch.Tensor, got ndarray"),
        ((_Z, torch.randn(0, 6)), {}, ValueError, r"codebook_sem must be 2-D \[codes, sem_dim\]"),
        ((_Z, _E), {"k": 2.0}, TypeError, r"k must be an int, got float \(2.0\)"),
        ((_Z, _E), {"backend": "fast"}, ValueError, "not understood"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        vq_nearest(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# GPU: the Triton kernel compiled (FMA contraction off) at TokenFlow's shapes


@pytest.mark.gpu
@pytest.mark.parametrize(("n_codes", "dims"), [(16384, (32, 8)), (32768, (32, 8)), (32768, (8,))])
@pytest.mark.parametrize("normalize", [False, True])
def test_triton_matches_torch_and_reference_at_real_shapes_on_cuda(n_codes, dims, normalize):
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 16 * 4096
    zs = [torch.randn(n, d, device="cuda", generator=g) for d in dims]
    es = [torch.randn(n_codes, d, device="cuda", generator=g) for d in dims]
    es[0][-5:] = es[0][:5]  # duplicates at both ends
    if len(dims) == 2:
        es[1][-5:] = es[1][:5]
    pix = (zs[1], es[1]) if len(dims) == 2 else (None, None)
    kw = {"normalize": normalize, "k": 1}
    triton = vq_nearest(zs[0], es[0], pix[0], pix[1], backend="triton", **kw)
    assert_identical(triton, vq_nearest(zs[0], es[0], pix[0], pix[1], backend="torch", **kw))
    rows = slice(0, 2048)  # the reference's [N, K] matrix: a row subset (rows are independent)
    ref = vq_nearest(zs[0][rows], es[0], None if pix[0] is None else pix[0][rows], pix[1],
                     backend="reference", **kw)
    assert_identical(VQResult(triton.indices[rows], triton.distances[rows]), ref)
    top5 = vq_nearest(zs[0][:4096], es[0], None if pix[0] is None else pix[0][:4096], pix[1],
                      backend="triton", normalize=normalize, k=5)
    assert_identical(top5, vq_nearest(zs[0][:4096], es[0], None if pix[0] is None else pix[0][:4096],
                                      pix[1], backend="torch", normalize=normalize, k=5))
