"""AdaLN modulate and gated residual: the Triton forward/backward (under TRITON_INTERPRET=1 on CPU)
against the reference on outputs and all gradients (x, shift, scale; x, gate, h), over odd shapes,
broadcast and non-contiguous modulation, fp32/fp16/bf16; plus the reference and its errors."""

import os
import sys

# The interpreter is chosen when a @triton.jit function is decorated: triton.language's own helpers
# when triton is first imported, our kernels when their module is. Set the variable before any
# import that might pull triton in, and remember whether something imported it earlier without it.
_TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
# tests/conftest.py sets TRITON_INTERPRET=1 when there is no CUDA, before triton is imported.

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nxkernels.adaln import (  # noqa: E402
    ATOL,
    RTOL,
    adaln_modulate,
    adaln_modulate_reference,
    adaln_modulate_triton,
    gated_residual,
    gated_residual_reference,
    gated_residual_triton,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "transposed", "sliced"]


def _triton_skip_reason() -> str | None:
    if _TRITON_PREIMPORTED:
        return ("triton was imported before this module could set TRITON_INTERPRET=1, so its kernels "
                "would be compiled for a GPU driver; run this file on its own or set the variable")
    try:
        from nxkernels.adaln import triton as kernels
    except ImportError as err:
        return f"triton is not importable: {err}"
    if type(kernels._adaln_fwd_kernel).__name__ != "InterpretedFunction":
        return ("the AdaLN kernels were compiled for a GPU driver (their module was imported before "
                "TRITON_INTERPRET=1 was set); run this file on its own")
    return None


_REASON = _triton_skip_reason()
needs_triton = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def make(shape, dtype, layout, seed, scale=1.0, offset=0.0):
    """A tensor of ``shape``: contiguous, a transposed view, or a strided slice of a wider one."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen) * scale + offset
        t = base.to(dtype).transpose(-1, -2)
    elif layout == "sliced":
        base = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=gen) * scale + offset
        t = base.to(dtype)[..., 1::2]
    else:
        t = (torch.randn(*shape, generator=gen) * scale + offset).to(dtype)
    assert t.shape == tuple(shape)
    return t.requires_grad_(True)


def mod_shape(x_shape, kind):
    """Shapes a modulation tensor may take against ``x``."""
    d = x_shape[-1]
    if kind == "per_sample":  # [B, D] against [B, T, D]; [N, D] against [N, D]
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
    ndim = draw(st.sampled_from([2, 3]))
    lead = [draw(st.integers(1, 5)) for _ in range(ndim - 1)]
    shape = (*lead, draw(st.integers(1, 160)))
    kinds = ["per_sample", "per_token", "shared"] + (["keepdim", "per_position"] if ndim == 3 else [])
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(DTYPES))
    layouts = tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3))
    seed = draw(st.integers(0, 2**16))
    note(f"x={shape} mod={mod_shape(shape, kind)} dtype={dtype} layouts={layouts} seed={seed}")
    return shape, mod_shape(shape, kind), dtype, layouts, seed


def assert_all_close(got, want, dtype, names):
    tol = dict(atol=ATOL[dtype], rtol=RTOL[dtype])
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


def check_adaln(x_shape, m_shape, dtype, layouts=("contiguous",) * 3, seed=0):
    x = make(x_shape, dtype, layouts[0], seed, scale=2.0, offset=0.5)
    shift = make(m_shape, dtype, layouts[1], seed + 1, scale=0.5)
    scale = make(m_shape, dtype, layouts[2], seed + 2, scale=0.5)
    out = adaln_modulate_triton(x, shift, scale)
    ref = adaln_modulate_reference(x, shift, scale)
    assert out.dtype == dtype and out.shape == x.shape
    dy = torch.randn(x_shape, generator=torch.Generator().manual_seed(seed + 3)).to(dtype)
    got = torch.autograd.grad(out, (x, shift, scale), dy)
    want = torch.autograd.grad(ref, (x, shift, scale), dy)
    assert_all_close((out, *got), (ref, *want), dtype, ("out", "grad x", "grad shift", "grad scale"))


def check_gated(x_shape, m_shape, dtype, layouts=("contiguous",) * 3, seed=0):
    x = make(x_shape, dtype, layouts[0], seed)
    gate = make(m_shape, dtype, layouts[1], seed + 1)
    h = make(x_shape, dtype, layouts[2], seed + 2)
    out = gated_residual_triton(x, gate, h)
    ref = gated_residual_reference(x, gate, h)
    assert out.dtype == dtype and out.shape == x.shape
    dy = torch.randn(x_shape, generator=torch.Generator().manual_seed(seed + 3)).to(dtype)
    got = torch.autograd.grad(out, (x, gate, h), dy)
    want = torch.autograd.grad(ref, (x, gate, h), dy)
    assert_all_close((out, *got), (ref, *want), dtype, ("out", "grad x", "grad gate", "grad h"))


@needs_triton
@given(cases())
def test_adaln_triton_matches_reference(case):
    check_adaln(*case)


@needs_triton
@given(cases())
def test_gated_residual_triton_matches_reference(case):
    check_gated(*case)


EDGE = [
    ((1, 1, 1), (1, 1)),        # length 1, width 1
    ((1, 1, 1536), (1, 1536)),  # NextStep-1 flow-head width, one token
    ((5, 3, 123), (5, 123)),    # odd sizes
    ((2, 37, 9), (2, 9)),       # rows in a group not a multiple of the row block
    ((3, 1025), (1025,)),       # d one past a power of two, shared modulation
    ((2, 2, 3, 8), (2, 2, 8)),  # 4-d x, [B, H, D] modulation
    ((2, 9, 1536), (2, 1536)),  # 9 rows per group walked in chunks of 4 rows
]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("x_shape", "m_shape"), EDGE)
def test_edge_shapes(x_shape, m_shape, dtype):
    check_adaln(x_shape, m_shape, dtype)
    check_gated(x_shape, m_shape, dtype)


@needs_triton
@pytest.mark.parametrize(("x_shape", "m_shape", "split"), [
    ((2, 37, 300), (2, 300), True),   # 37 rows per group, chunks of 16 rows, 2 programs per group
    ((3, 11, 700), (700,), True),     # one group of 33 rows, chunks of 8 rows
    ((4, 5, 6), (4, 5, 6), False),    # one row per group: nothing to split
    ((3, 4, 5), (1, 4, 5), False),    # broadcast over the batch: expanded, reduced by sum_to_size
])
def test_several_programs_per_group(monkeypatch, x_shape, m_shape, split):
    # CUDA splits a group's rows over several programs and sums their partial gradients; force it
    from nxkernels.adaln import triton as kernels

    monkeypatch.setattr(kernels, "CPU_TARGET_PROGRAMS", 8)
    x = torch.empty(x_shape)
    plan = kernels._Plan(x, [kernels.as_broadcast("shift", torch.empty(m_shape), x)])
    assert (plan.p > 1) == split, vars(plan)
    check_adaln(x_shape, m_shape, torch.float32, seed=5)
    check_gated(x_shape, m_shape, torch.float32, seed=6)


@needs_triton
def test_adaln_constant_row_is_finite():
    x = torch.full((2, 3, 16), 7.0, requires_grad=True)  # zero variance: rstd = 1/sqrt(eps)
    shift = torch.randn(2, 16, requires_grad=True)
    scale = torch.randn(2, 16, requires_grad=True)
    out = adaln_modulate_triton(x, shift, scale)
    torch.testing.assert_close(out, adaln_modulate_reference(x, shift, scale))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, shift, scale))


@needs_triton
def test_triton_mixed_modulation_dtype():
    x = make((2, 3, 20), torch.bfloat16, "contiguous", 0)
    shift = make((2, 20), torch.float32, "contiguous", 1)
    scale = make((2, 20), torch.float32, "contiguous", 2)
    out = adaln_modulate_triton(x, shift, scale)
    ref = adaln_modulate_reference(x, shift, scale)
    torch.testing.assert_close(out, ref, atol=ATOL[torch.bfloat16], rtol=RTOL[torch.bfloat16])
    got = torch.autograd.grad(out.float().sum(), (shift, scale))
    want = torch.autograd.grad(ref.float().sum(), (shift, scale))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


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


def test_reference_input_errors():
    x = torch.randn(2, 3, 8)
    good = torch.randn(2, 8)
    with pytest.raises(ValueError, match="shift has shape"):
        adaln_modulate(x, torch.randn(2, 7), good)
    with pytest.raises(ValueError, match="scale of shape"):
        adaln_modulate(x, good, torch.randn(3, 8))
    with pytest.raises(ValueError, match="eps"):
        adaln_modulate(x, good, good, eps=-1.0)
    with pytest.raises(ValueError, match="h has shape"):
        gated_residual(x, good, torch.randn(2, 3, 9))
    with pytest.raises(TypeError, match="gate must be a torch.Tensor"):
        gated_residual(x, 1.0, x)
