"""The eager-inference kernels (``*_inference_kernel``, the reference backends' ``inference`` entries)
and the dispatcher's cache: the same numbers as the ops, bit for bit, on every dtype."""

import pytest
import torch

from nxkernels import dispatch
from nxkernels.rms_norm import RMS_NORM, rms_norm, rms_norm_inference_kernel
from nxkernels.rms_norm.reference import rms_norm_forward_reference, rms_norm_inference_reference
from nxkernels.rope import apply_rope, rope_inference_kernel
from nxkernels.rope.reference import _TABLES, rope_forward_reference, rope_inference_reference
from nxkernels.scale_attention import decode_attention, decode_attention_kernel
from nxkernels.swiglu import swiglu, swiglu_inference_kernel

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("NX_KERNELS", raising=False)
    dispatch.clear_cache()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 128, 333])
def test_reference_rms_norm_inference_is_the_forward_bit_for_bit(dtype, dim):
    """On CPU the inference form is one F.rms_norm call: ATen's composite of the forward's ops."""
    g = torch.Generator().manual_seed(dim)
    x = (3 * torch.randn(5, 3, dim, generator=g)).to(dtype)
    r = torch.randn(5, 3, dim, generator=g).to(dtype)
    w = (1 + torch.randn(dim, generator=g)).to(dtype)
    for residual in (None, r):
        y, h = rms_norm_inference_reference(x, w, residual, 1e-6)
        h_ref = x if residual is None else x + residual
        y_ref = rms_norm_forward_reference(h_ref.reshape(-1, dim), w, None, 1e-6)[0].view(x.shape)
        assert torch.equal(y, y_ref) and y.is_contiguous()
        assert (h is None) == (residual is None) and (h is None or torch.equal(h, h_ref))
    # weights of another dtype take the forward's ops (F.rms_norm would warn and may round otherwise)
    y, _ = rms_norm_inference_reference(x, w.float(), None, 1e-6)
    assert torch.equal(y, rms_norm_forward_reference(x.reshape(-1, dim), w.float(), None, 1e-6)[0].view(x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_kernels_are_what_the_ops_run(dtype):
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(2, 3, 16, generator=g).to(dtype), torch.randn(2, 3, 16, generator=g).to(dtype)
    w = torch.rand(16, generator=g).to(dtype)
    gate, up = torch.randn(4, 24, generator=g).to(dtype), torch.randn(4, 24, generator=g).to(dtype)
    q = torch.randn(2, 6, 3, 8, generator=g).to(dtype)
    pos, inv = torch.arange(3.0)[:, None] + 5, torch.rand(4, generator=g)
    kc, vc = torch.randn(2, 3, 7, 8, generator=g).to(dtype), torch.randn(2, 3, 7, 8, generator=g).to(dtype)
    with torch.no_grad():
        rms = rms_norm_inference_kernel(x, w, 1e-5, residual=r)
        y, h = rms(x, w, r, 1e-5)
        y_op, h_op = rms_norm(x, w, 1e-5, residual=r)
        assert torch.equal(y, y_op) and torch.equal(h, h_op)
        assert torch.equal(rms_norm_inference_kernel(x, w)(x, w, None, 1e-6)[0], rms_norm(x, w))
        assert torch.equal(swiglu_inference_kernel(gate, up)(gate, up), swiglu(gate, up))
        kernel, sections = rope_inference_kernel(q, pos, inv)
        assert sections == (4,) and torch.equal(kernel(q, pos, inv, sections), apply_rope(q, pos, inv))
        decode = decode_attention_kernel(q, kc, vc)
        assert torch.equal(decode(q, kc, vc, True, None), decode_attention(q, kc, vc, causal=True))
    with pytest.raises(ValueError, match="weight has shape"):
        rms_norm_inference_kernel(x, w[:3])
    with pytest.raises(ValueError, match="gate has shape"):
        swiglu_inference_kernel(gate, up[:2])


def test_a_backend_without_an_inference_kernel_runs_its_forward(monkeypatch):
    reference = RMS_NORM.backend("reference")
    kernels = {k: v for k, v in reference.load().items() if k != "inference"}
    monkeypatch.setitem(reference._loaded, "impl", kernels)
    x, w, r = torch.randn(3, 5, 8), torch.rand(8), torch.randn(3, 5, 8)
    with torch.no_grad():
        y, h = rms_norm_inference_kernel(x, w, residual=r)(x, w, r, 1e-6)
        y_op, h_op = rms_norm(x, w, residual=r)
    assert torch.equal(y, y_op) and torch.equal(h, h_op)
    expected = rms_norm_forward_reference(x.reshape(-1, 8), w, r.reshape(-1, 8), 1e-6)[0].view(x.shape)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sections", [None, (2, 1, 1)])
def test_reference_rope_inference_is_the_forward_bit_for_bit(dtype, sections):
    g = torch.Generator().manual_seed(2)
    axes = 1 if sections is None else 3
    x = torch.randn(2, 5, 4, 8, generator=g).to(dtype)[:, ::2]  # strided input
    pos = 10 * torch.rand(4, axes, generator=g)
    inv = torch.rand(4, generator=g)
    resolved = (4,) if sections is None else sections
    want = rope_forward_reference(x, pos, inv, resolved)
    for _ in range(2):  # the second call reads the memoised table
        got = rope_inference_reference(x, pos, inv, resolved)
        assert torch.equal(got, want) and got.is_contiguous() and got.dtype == dtype


def test_the_rope_table_memo_follows_the_positions():
    x, inv = torch.randn(2, 3, 8), torch.rand(4)
    pos = torch.arange(3.0)[:, None]
    first = rope_inference_reference(x, pos, inv, (4,))
    pos.add_(7)  # in place: the memo must not serve the old table
    assert torch.equal(rope_inference_reference(x, pos, inv, (4,)), rope_forward_reference(x, pos, inv, (4,)))
    assert not torch.equal(first, rope_inference_reference(x, pos, inv, (4,)))
    for _ in range(20):  # bounded
        rope_inference_reference(x, torch.rand(3, 1), inv, (4,))
    assert len(_TABLES) <= 8
    with torch.inference_mode():  # inference tensors have no version counter: not memoised
        p, v = torch.arange(3.0)[:, None], torch.rand(4)
        assert torch.equal(rope_inference_reference(x, p, v, (4,)), rope_forward_reference(x, p, v, (4,)))


def test_the_dispatch_cache_is_per_request_and_env_reads_stay_live(monkeypatch):
    x, w = torch.randn(2, 8), torch.rand(8)
    assert RMS_NORM.select(x, w) is RMS_NORM.backend("reference")
    monkeypatch.setenv("NX_KERNELS", "triton")  # read at every call: the cached auto choice is not reused
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="NX_KERNELS / use_backend='triton'"):
        RMS_NORM.select(x, w)
    monkeypatch.setenv("NX_KERNELS", " Reference ")
    assert RMS_NORM.select(x, w).name == "reference"
    monkeypatch.setenv("NX_KERNELS", "fast")
    with pytest.raises(ValueError, match="NX_KERNELS='fast' is not understood"):
        RMS_NORM.select(x, w)
