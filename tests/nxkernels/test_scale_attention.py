"""scale_attention / decode_attention: the per-scale split (and flex forward on CPU) against the
dense-mask reference on outputs and the gradients of q, k, v over random next-scale layouts (text
before/between/after images, continuous images, GQA 1/2/4, L = 1, fp32/bf16/fp16/fp64); the
reference against textbook attention; decode steps against rows of the full attention; the plan's
invariants and its memory bound (no seq x seq tensor); opcheck of the xformers custom ops with the
xformers call emulated; torch.compile; dispatch; input errors. GPU checks run under ``-m gpu``."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, note, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from nxkernels import dispatch
from nxkernels.scale_attention import (
    DECODE_ATTENTION,
    SCALE_ATTENTION,
    ScaleBlocks,
    attention_math,
    bottom_right_mask,
    decode_attention,
    scale_attention,
    scale_attention_reference,
)
from nxkernels.scale_attention import blocks as blocks_mod
from nxkernels.scale_attention import xformers as xf

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# ------------------------------------------------------------------------------------------------
# layouts and inputs


@st.composite
def layouts(draw, max_segments=3, max_side=10):
    """(lengths, causal) of a random sequence: text spans, discrete images (a block per scale, up to
    4 scales), continuous images (one causal block, up to 12 x 12: more than one causal chunk)."""
    lengths, causal = [], []
    for _ in range(draw(st.integers(1, max_segments))):
        kind = draw(st.sampled_from(["text", "image", "continuous"]))
        if kind == "text":
            lengths.append(draw(st.integers(1, 40)))
            causal.append(True)
        elif kind == "continuous":
            lengths.append(draw(st.integers(1, 12)) * draw(st.integers(1, 12)))
            causal.append(True)
        else:
            for _ in range(draw(st.integers(1, 4))):
                lengths.append(draw(st.integers(1, max_side)) * draw(st.integers(1, max_side)))
                causal.append(False)
    return lengths, causal


@st.composite
def cases(draw, dtypes=DTYPES, max_segments=3, max_side=10):
    lengths, causal = draw(layouts(max_segments, max_side))
    case = {
        "lengths": lengths,
        "causal": causal,
        "batch": draw(st.integers(1, 2)),
        "kv_heads": draw(st.integers(1, 2)),
        "group": draw(st.sampled_from([1, 2, 4])),
        "head_dim": draw(st.sampled_from([8, 16, 32])),
        "dtype": draw(st.sampled_from(dtypes)),
        "scale": draw(st.sampled_from([None, 0.3])),
        "layout": draw(st.sampled_from(["bhld", "blhd"])),
        "seed": draw(st.integers(0, 2**16)),
    }
    note(repr(case))
    return case


def make_qkv(batch, heads, kv_heads, seq, head_dim, dtype, seed=0, layout="bhld", grad=True):
    """q [batch, heads, seq, head_dim], k, v [batch, kv_heads, ...]; ``blhd``: transposed views."""
    gen = torch.Generator().manual_seed(seed)

    def randn(h):
        if layout == "blhd":  # [batch, seq, heads, head_dim] as a model's projection gives it
            t = torch.randn(batch, seq, h, head_dim, generator=gen).transpose(1, 2)
        else:
            t = torch.randn(batch, h, seq, head_dim, generator=gen)
        return t.to(device=DEVICE, dtype=dtype).requires_grad_(grad)

    q, k, v = randn(heads), randn(kv_heads), randn(kv_heads)
    dy = torch.randn(batch, heads, seq, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
    return q, k, v, dy


def from_case(case, grad=True):
    blocks = ScaleBlocks.from_lengths(case["lengths"], case["causal"])
    heads = case["kv_heads"] * case["group"]
    q, k, v, dy = make_qkv(case["batch"], heads, case["kv_heads"], blocks.length, case["head_dim"],
                           case["dtype"], case["seed"], case["layout"], grad)
    return blocks, q, k, v, dy


def assert_close(name, got, want, tol, relative_to_max=False):
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape)
    got, want = got.double(), want.double()
    if relative_to_max:  # k/v gradients sum over many queries: compare relative to their scale
        top = want.abs().max().clamp_min(1e-12)
        got, want = got / top, want / top
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


def check_against_reference(backend, blocks, q, k, v, dy, scale, grads=True):
    tol = SCALE_ATTENTION.backend(backend).tolerance(q.dtype)
    out = scale_attention(q, k, v, blocks, scale=scale, backend=backend)
    ref = scale_attention_reference(q, k, v, blocks, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close("out", out, ref, tol)
    if not grads:
        return
    got = torch.autograd.grad(out, (q, k, v), dy)
    want = torch.autograd.grad(ref, (q, k, v), dy)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, g, w, tol, relative_to_max=name != "dq")


# ------------------------------------------------------------------------------------------------
# parity


@given(cases())
def test_split_matches_reference_on_outputs_and_grads(case):
    blocks, q, k, v, dy = from_case(case)
    check_against_reference("torch", blocks, q, k, v, dy, case["scale"])


@settings(max_examples=4)  # eager flex on CPU: a BlockMask per schedule costs ~1 s here
@given(cases(dtypes=(torch.float32, torch.bfloat16), max_segments=2, max_side=6))
def test_flex_forward_matches_reference_on_cpu(case):
    on_cuda = torch.cuda.is_available()  # flex has no backward on CPU
    blocks, q, k, v, dy = from_case(case, grad=on_cuda)
    check_against_reference("triton", blocks, q, k, v, dy, case["scale"], grads=on_cuda)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_a_single_token_is_its_own_value(dtype, causal):
    blocks = ScaleBlocks.from_lengths([1], [causal])
    q, k, v, dy = make_qkv(1, 4, 2, 1, 8, dtype)
    out = scale_attention(q, k, v, blocks)
    assert torch.equal(out, v.repeat_interleave(2, dim=1))
    check_against_reference("torch", blocks, q, k, v, dy, None)


def test_long_causal_blocks_and_tiny_scales_exercise_every_kind_of_chunk():
    # text 300 (three causal pieces), 1x1..5x5 (merged), a 1-token text between images, 20x20 scale
    lengths = [300, 1, 4, 9, 16, 25, 1, 400, 7]
    causal = [True, False, False, False, False, False, True, False, True]
    blocks = ScaleBlocks.from_lengths(lengths, causal)
    kinds = {(c.masked, len(c.pieces) > 1) for c in blocks.plan}
    assert kinds == {(True, False), (True, True), (False, False)}, blocks.plan
    for dtype in (torch.float64, torch.bfloat16):
        q, k, v, dy = make_qkv(2, 4, 1, blocks.length, 16, dtype, seed=3)
        check_against_reference("torch", blocks, q, k, v, dy, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_reference_is_textbook_attention(dtype):
    blocks = ScaleBlocks.from_lengths([5, 1, 4, 9, 3], [True, False, False, False, True])
    q, k, v, _ = make_qkv(2, 4, 2, blocks.length, 16, dtype, seed=1, grad=False)
    want = attention_math(q, k, v, blocks.mask(DEVICE), 0.2)
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else \
        {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    assert_close("reference", scale_attention_reference(q, k, v, blocks, 0.2), want, tol)


def test_mask_follows_the_definition():
    blocks = ScaleBlocks.from_lengths([3, 1, 4, 2], [True, False, False, True])
    sid = [0, 0, 0, 1, 2, 2, 2, 2, 3, 3]
    want = torch.tensor([[sid[j] < sid[i] or (sid[j] == sid[i] and (j <= i or not blocks.causal[sid[i]]))
                          for j in range(10)] for i in range(10)])
    assert torch.equal(blocks.mask(), want)
    assert blocks.kv_end().tolist() == [1, 2, 3, 4, 8, 8, 8, 8, 9, 10]


@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_every_row_with_exactly_its_keys(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 4, 9, 30, 150, 300]) for _ in range(rng.randint(1, 12))]
    causal = [rng.random() < 0.4 for _ in lengths]
    blocks = ScaleBlocks.from_lengths(lengths, causal)
    kv_end = blocks.kv_end()
    rows = 0
    for c in blocks.plan:
        assert c.q0 == rows and c.q1 > c.q0
        rows = c.q1
        assert torch.equal(c.kv_end(), kv_end[c.q0:c.q1])
        assert c.kv == int(kv_end[c.q1 - 1])
        assert c.masked == bool((kv_end[c.q0:c.q1] != c.kv).any())
        assert torch.equal(c.mask(), blocks.mask()[c.q0:c.q1, :c.kv])
        assert not c.masked or c.q1 - c.q0 <= max(blocks_mod.MAX_MERGED_ROWS, blocks_mod.CAUSAL_CHUNK)
    assert rows == blocks.length


# ------------------------------------------------------------------------------------------------
# decode


@given(cases(dtypes=(torch.float32, torch.bfloat16, torch.float64)), st.data())
def test_decode_torch_matches_reference(case, data):
    cache = sum(case["lengths"])
    seq = data.draw(st.integers(1, cache), label="seq")
    causal = data.draw(st.booleans(), label="causal")
    heads = case["kv_heads"] * case["group"]
    q, k, v, dy = make_qkv(case["batch"], heads, case["kv_heads"], cache, case["head_dim"], case["dtype"],
                           case["seed"], case["layout"])
    q, dy = q[:, :, -seq:], dy[:, :, -seq:]
    kw = {"causal": causal, "scale": case["scale"]}
    out = decode_attention(q, k, v, backend="torch", **kw)
    ref = decode_attention(q, k, v, backend="reference", **kw)
    mask = bottom_right_mask(seq, cache, DEVICE) if causal else None
    tol = DECODE_ATTENTION.backend("torch").tolerance(case["dtype"])
    assert_close("out", out, ref, tol)
    assert_close("math", ref, attention_math(q, k, v, mask, case["scale"]),
                 {"atol": 2e-2, "rtol": 2e-2} if case["dtype"] == torch.bfloat16 else tol)
    got = torch.autograd.grad(out, (q, k, v), dy)
    want = torch.autograd.grad(ref, (q, k, v), dy)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, g, w, tol, relative_to_max=name != "dq")


@pytest.mark.parametrize("group", [1, 4])
def test_decode_a_scale_or_a_token_at_a_time_equals_rows_of_the_full_attention(group):
    # prefill: text prompt + first scales; then scale by scale, then text token by token, then
    # a continuous image and a last scale (a causal step of several tokens: bottom-right aligned)
    lengths = [6, 1, 4, 9, 16, 1, 1, 1, 6, 25]
    causal = [True, False, False, False, False, True, True, True, True, False]
    blocks = ScaleBlocks.from_lengths(lengths, causal)
    q, k, v, _ = make_qkv(2, 2 * group, 2, blocks.length, 16, torch.float64, seed=5, grad=False)
    full = scale_attention(q, k, v, blocks)
    prefill = blocks.ends[2]
    got = [scale_attention(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                           ScaleBlocks.from_lengths(lengths[:3], causal[:3]))]
    for s, e, c in zip(blocks.starts[3:], blocks.ends[3:], blocks.causal[3:], strict=True):
        if c and e - s > 1:  # one token at a time, and the whole step at once
            for i in range(s, e):
                step = decode_attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], causal=True)
                torch.testing.assert_close(step, full[:, :, i:i + 1], atol=1e-12, rtol=1e-12)
        got.append(decode_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], causal=c))
    torch.testing.assert_close(torch.cat(got, dim=2), full, atol=1e-12, rtol=1e-12)


def test_decode_never_uses_is_causal_when_lengths_differ(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], kw.get("is_causal", False), kw.get("attn_mask") is not None))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v, _ = make_qkv(1, 2, 2, 12, 8, torch.float32, grad=False)
    for seq in (1, 5, 12):
        for causal in (False, True):
            decode_attention(q[:, :, -seq:], k, v, causal=causal, backend="torch")
    assert calls == [(1, 12, False, False), (1, 12, False, False), (5, 12, False, False),
                     (5, 12, False, True), (12, 12, False, False), (12, 12, True, False)]


# ------------------------------------------------------------------------------------------------
# memory: the split never makes a seq x seq tensor


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_split_never_allocates_a_seq_by_seq_tensor_forward_or_backward():
    lengths = [30] + [s * s for s in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)] + [20]
    blocks = ScaleBlocks.from_lengths(lengths, [True] + [False] * 10 + [True])
    seq = blocks.length  # 730
    q, k, v, dy = make_qkv(1, 1, 1, seq, 8, torch.float32, seed=2)
    sizes = {}
    for backend in ("torch", "reference"):
        with _LargestTensor() as probe:
            scale_attention(q, k, v, blocks, backend=backend).backward(dy)
        sizes[backend] = probe.largest
    assert sizes["reference"] >= seq * seq  # the probe sees the dense mask
    assert sizes["torch"] <= blocks_mod.MAX_MERGED_ROWS * seq < seq * seq, sizes


# ------------------------------------------------------------------------------------------------
# the xformers backend's packing and custom ops, with xformers' kernel emulated by SDPA


def _sequences(q_seqlen, kv_seqlen, causal, device):
    """(query slice, key slice, bool mask) of each packed sequence, as xformers' bias defines them."""
    q0 = k0 = 0
    for nq, nk in zip(q_seqlen, kv_seqlen, strict=True):
        mask = bottom_right_mask(nq, nk, device) if causal else torch.ones(nq, nk, dtype=torch.bool)
        yield slice(q0, q0 + nq), slice(k0, k0 + nk), mask
        q0, k0 = q0 + nq, k0 + nk


def _probs(q, k, mask, scale):  # [heads, nq, nk] in fp64, from [nq, heads, d] slices
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    return s.masked_fill(~mask, float("-inf")).softmax(-1)


def _emulated_forward(q, k, v, q_seqlen, kv_seqlen, causal, scale):
    """memory_efficient_attention with BlockDiagonal[CausalFromBottomRight]Mask, in plain torch."""
    out = torch.empty_like(q)
    for qs, ks, mask in _sequences(q_seqlen, kv_seqlen, causal, q.device):
        p = _probs(q[0, qs], k[0, ks], mask, scale)
        out[0, qs] = torch.einsum("hqk,khd->qhd", p, v[0, ks].double()).to(q.dtype)
    return out


def _emulated_backward(dout, q, k, v, q_seqlen, kv_seqlen, causal, scale):
    """The analytic attention gradients (no autograd: this runs inside a custom op)."""
    dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
    for qs, ks, mask in _sequences(q_seqlen, kv_seqlen, causal, q.device):
        qq, kk, vv, do = q[0, qs].double(), k[0, ks].double(), v[0, ks].double(), dout[0, qs].double()
        p = _probs(qq, kk, mask, scale)
        dv[0, ks] = torch.einsum("hqk,qhd->khd", p, do).to(v.dtype)
        dp = torch.einsum("qhd,khd->hqk", do, vv)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale
        dq[0, qs] = torch.einsum("hqk,khd->qhd", ds, kk).to(q.dtype)
        dk[0, ks] = torch.einsum("hqk,qhd->khd", ds, qq).to(k.dtype)
    return dq, dk, dv


@pytest.fixture
def emulated_xformers(monkeypatch):
    monkeypatch.setitem(xf.KERNELS, "forward", _emulated_forward)
    monkeypatch.setitem(xf.KERNELS, "backward", _emulated_backward)


@pytest.mark.parametrize("group", [1, 2])
def test_xformers_packing_matches_reference_with_the_kernel_emulated(emulated_xformers, group):
    blocks = ScaleBlocks.from_lengths([5, 1, 4, 9, 2, 16], [True, False, False, False, True, False])
    q, k, v, dy = make_qkv(2, 2 * group, 2, blocks.length, 8, torch.float64, seed=4, layout="blhd")
    out = xf.scale_attention_xformers(q, k, v, blocks)
    ref = scale_attention_reference(q, k, v, blocks)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), dy), torch.autograd.grad(ref, (q, k, v), dy),
                    strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_opcheck_xformers_custom_ops_with_the_kernel_emulated(emulated_xformers):
    blocks = ScaleBlocks.from_lengths([3, 1, 4, 2], [True, False, False, True])
    q, k, v, dy = make_qkv(2, 4, 2, blocks.length, 8, torch.float32, seed=6)
    args = (list(blocks.starts), list(blocks.ends), list(blocks.causal), 0.25)
    torch.library.opcheck(torch.ops.nxkernels.scale_attention_xformers.default, (q, k, v, *args))
    torch.library.opcheck(torch.ops.nxkernels.scale_attention_xformers_bwd.default,
                          (dy, q.detach(), k.detach(), v.detach(), *args))


# ------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_torch_compile_fullgraph_split_forward_and_backward(compiler):
    torch._dynamo.reset()
    blocks = ScaleBlocks.from_lengths([70, 70, 3], [False, False, True])
    assert [c.masked for c in blocks.plan] == [False, True]  # a loop of two calls, one with a mask
    q, k, v, dy = make_qkv(1, 4, 2, blocks.length, 16, torch.float32, seed=7)

    def layer(q, k, v):
        out = scale_attention(q, k, v, blocks)
        if compiler == "eager":  # decode too (inductor: one graph is enough to pay a C++ compile for)
            out = out + decode_attention(q, k, v, causal=True)
        return out

    got = torch.compile(layer, backend=compiler, fullgraph=True)(q, k, v)
    want = layer(q, k, v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got_grads = torch.autograd.grad(got, (q, k, v), dy)
    want_grads = torch.autograd.grad(want, (q, k, v), dy)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tensor_blocks_inside_compile_name_the_fix():
    torch._dynamo.reset()
    blocks = ScaleBlocks.from_lengths([1, 4], [False, False])
    tensors = type("Blocks", (), {"starts": torch.tensor([0, 1]), "ends": torch.tensor([1, 5]),
                                  "causal": torch.tensor([False, False])})()
    q, k, v, _ = make_qkv(1, 2, 2, 5, 8, torch.float32, grad=False)
    compiled = torch.compile(lambda q, k, v: scale_attention(q, k, v, tensors), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=r"convert it once outside the compiled function with ScaleBlocks\.of"):
        compiled(q, k, v)
    torch.testing.assert_close(scale_attention(q, k, v, tensors), scale_attention(q, k, v, blocks))


# ------------------------------------------------------------------------------------------------
# dispatch and blocks from nxcore


def test_auto_picks_the_split_on_cpu_and_flex_needs_no_grad_on_cpu():
    blocks = ScaleBlocks.from_lengths([1, 4], [False, False])
    q, k, v, _ = make_qkv(1, 2, 2, 5, 8, torch.float32)
    if DEVICE == "cpu":
        assert SCALE_ATTENTION.select(q, k, v, blocks).name == "torch"
        with pytest.raises(ValueError, match=r"(?s)'triton'.*no backward on CPU.*backend='torch'"):
            scale_attention(q, k, v, blocks, backend="triton")
        with pytest.raises(ValueError, match="xformers"):
            scale_attention(q, k, v, blocks, backend="xformers")
    with dispatch.use_backend("reference"):
        assert SCALE_ATTENTION.select(q, k, v, blocks).name == "reference"
    q, k, v = (t.detach() for t in (q, k, v))
    torch.testing.assert_close(scale_attention(q, k, v, blocks, backend="triton"),
                               scale_attention(q, k, v, blocks, backend="reference"), atol=1e-5, rtol=1e-5)


def test_blocks_from_a_sequence_layout():
    from nxcore.layout import ContinuousImage, DiscreteImage, SequenceLayout, TextSpan
    from nxcore.schedule import derived_schedule

    layout = SequenceLayout.of(TextSpan(5), DiscreteImage(derived_schedule((4, 4), 3)), TextSpan(2),
                               ContinuousImage(2, 3))
    attention_blocks = layout.attention_blocks()
    blocks = ScaleBlocks.of(attention_blocks)
    assert blocks.starts == tuple(attention_blocks.starts.tolist())
    assert torch.equal(blocks.mask(), layout.attention_mask())
    assert ScaleBlocks.of(blocks) is blocks and hash(blocks) == hash(ScaleBlocks.of(attention_blocks))
    q, k, v, _ = make_qkv(1, 2, 1, layout.length, 8, torch.float64, grad=False)
    torch.testing.assert_close(scale_attention(q, k, v, attention_blocks),
                               attention_math(q, k, v, layout.attention_mask()), atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# input errors


def _qkv(seq=5, heads=2, kv_heads=2, dtype=torch.float32):
    return make_qkv(1, heads, kv_heads, seq, 8, dtype, grad=False)[:3]


BLOCKS5 = ScaleBlocks.from_lengths([1, 4], [False, False])


@pytest.mark.parametrize(
    ("make_blocks", "match"),
    [
        (lambda: ScaleBlocks((0, 2), (1, 5), (False, False)), r"block 1 starts at 2 and block 0 ends at 1"),
        (lambda: ScaleBlocks((1,), (5,), (False,)), r"from 0, but blocks.starts\[0\] = 1"),
        (lambda: ScaleBlocks((0, 3), (3, 3), (False, True)), r"block 1 is \[3, 3\)"),
        (lambda: ScaleBlocks((0,), (5,), (False, True)), "one entry per block, got lengths 1, 1, 2"),
        (lambda: ScaleBlocks((), (), ()), "at least one block"),
        (lambda: ScaleBlocks((0,), (5.0,), (False,)), r"blocks.ends\[0\] must be an int, got 5.0"),
        (lambda: ScaleBlocks((0,), (5,), (2,)), r"blocks.causal\[0\] must be a bool, got 2"),
        (lambda: ScaleBlocks.of(object()), "lacks starts, ends, causal"),
    ],
)
def test_bad_blocks_name_the_problem(make_blocks, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_blocks()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: scale_attention(*_qkv(6), BLOCKS5), ValueError, "blocks cover 5 tokens but q has seq 6"),
        (lambda: scale_attention(*_qkv(heads=3), BLOCKS5), ValueError, "3 heads, not a multiple of the 2"),
        (lambda: scale_attention(_qkv()[0].double(), *_qkv()[1:], BLOCKS5), TypeError,
         r"k has dtype torch.float32 but q has torch.float64"),
        (lambda: scale_attention(_qkv()[0][0], *_qkv()[1:], BLOCKS5), ValueError,
         r"q must be \[batch, heads, seq, head_dim\]"),
        (lambda: scale_attention(*_qkv()[:2], _qkv()[2][..., :4], BLOCKS5), ValueError, "v has shape"),
        (lambda: scale_attention(*_qkv(), BLOCKS5, scale=-1.0), ValueError, "scale must be None"),
        (lambda: scale_attention(*_qkv(), BLOCKS5, scale=1), ValueError, "scale must be None"),
        (lambda: scale_attention(*_qkv(), "1,4"), TypeError, "lacks starts"),
        (lambda: scale_attention(*_qkv(), BLOCKS5, backend="flash"), ValueError, "not understood"),
        (lambda: scale_attention(_qkv()[0].long(), *_qkv()[1:], BLOCKS5), TypeError, "q must be floating"),
        (lambda: decode_attention(*_qkv(seq=3)[:1], *_qkv(seq=2)[1:]), ValueError,
         "q has 3 queries but the cache holds 2 keys"),
        (lambda: decode_attention(*_qkv(), causal=1), TypeError, "causal must be a bool"),
        (lambda: decode_attention(*_qkv(kv_heads=4)), ValueError, "2 heads, not a multiple of the 4"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# GPU (run where a device is lent: -m gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch", "xformers"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backends_match_reference_on_cuda_at_the_256_level(backend, dtype):
    reasons = SCALE_ATTENTION.backend(backend).availability_reasons("cuda")
    if reasons:
        pytest.skip("; ".join(reasons))
    side = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)  # NextFlow Table 14, 1:1, 256 level
    blocks = ScaleBlocks.from_lengths([9] + [s * s for s in side] + [3], [True] + [False] * 12 + [True])
    q, k, v, dy = make_qkv(2, 8, 2, blocks.length, 64, dtype, seed=8)
    check_against_reference(backend, blocks, q, k, v, dy, None)
    assert math.isfinite(float(scale_attention(q, k, v, blocks, backend=backend).float().sum()))


@pytest.mark.gpu
def test_auto_picks_flex_on_cuda_when_triton_is_there():
    blocks = ScaleBlocks.from_lengths([1, 4], [False, False])
    q, k, v, _ = make_qkv(1, 2, 2, 5, 16, torch.bfloat16)
    want = "triton" if importlib.util.find_spec("triton") else "torch"
    assert SCALE_ATTENTION.select(q, k, v, blocks).name == want
