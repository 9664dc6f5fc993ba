"""SwiGLU: the Triton forward/backward (under TRITON_INTERPRET=1 on CPU) against the reference on
outputs and both gradients, over odd shapes, non-contiguous views and fp32/fp16/bf16; plus the
reference itself and its input errors."""

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

from nxkernels.swiglu import ATOL, RTOL, swiglu, swiglu_reference, swiglu_triton  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _triton_skip_reason() -> str | None:
    if _TRITON_PREIMPORTED:
        return ("triton was imported before this module could set TRITON_INTERPRET=1, so its kernels "
                "would be compiled for a GPU driver; run this file on its own or set the variable")
    try:
        from nxkernels.swiglu import triton as kernels
    except ImportError as err:
        return f"triton is not importable: {err}"
    if type(kernels._swiglu_fwd_kernel).__name__ != "InterpretedFunction":
        return ("the SwiGLU kernels were compiled for a GPU driver (their module was imported before "
                "TRITON_INTERPRET=1 was set); run this file on its own")
    return None


_REASON = _triton_skip_reason()
needs_triton = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def make(shape, dtype, layout, seed, scale=3.0):
    """A tensor of ``shape``: contiguous, a transposed view, or a strided slice of a wider one."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen) * scale
        t = base.to(dtype).transpose(-1, -2)
    elif layout == "sliced":
        base = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=gen) * scale
        t = base.to(dtype)[..., 1::2]
    else:
        t = (torch.randn(*shape, generator=gen) * scale).to(dtype)
    assert t.shape == tuple(shape)
    return t.requires_grad_(True)


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 5)) for _ in range(ndim - 1)] + [draw(st.integers(1, 300))]
    dtype = draw(st.sampled_from(DTYPES))
    layouts = (draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
               draw(st.sampled_from(["contiguous", "transposed", "sliced"])))
    seed = draw(st.integers(0, 2**16))
    note(f"shape={shape} dtype={dtype} layouts={layouts} seed={seed}")
    return tuple(shape), dtype, layouts, seed


def check_parity(shape, dtype, layouts=("contiguous", "contiguous"), seed=0):
    gate = make(shape, dtype, layouts[0], seed)
    up = make(shape, dtype, layouts[1], seed + 1)
    out = swiglu_triton(gate, up)
    ref = swiglu_reference(gate, up)
    assert out.dtype == dtype and out.shape == gate.shape
    tol = dict(atol=ATOL[dtype], rtol=RTOL[dtype])
    torch.testing.assert_close(out, ref, **tol)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    got = torch.autograd.grad(out, (gate, up), dy)
    want = torch.autograd.grad(ref, (gate, up), dy)
    for name, g, w in zip(("gate", "up"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


@needs_triton
@given(cases())
def test_triton_matches_reference(case):
    check_parity(*case)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 1024), (5, 3, 123), (3, 1025), (2, 1, 1, 7)])
def test_triton_edge_shapes(shape, dtype):
    # length 1, d one past the column block (1025 > 1024), exactly one block, 4-d
    check_parity(shape, dtype)


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_triton_extreme_values_are_finite():
    gate = torch.tensor([[-100.0, -20.0, 0.0, 20.0, 100.0]], requires_grad=True)
    up = torch.ones_like(gate, requires_grad=True)
    out = swiglu_triton(gate, up)
    torch.testing.assert_close(out, swiglu_reference(gate, up))
    out.sum().backward()
    assert torch.isfinite(gate.grad).all() and torch.isfinite(up.grad).all()


@needs_triton
def test_triton_rejects_fp64_with_a_reason():
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="swiglu_reference"):
        swiglu_triton(x, x)


def test_reference_formula_and_dtypes():
    gate = torch.linspace(-4, 4, 9)
    up = torch.arange(9.0)
    expected = gate / (1 + torch.exp(-gate)) * up
    torch.testing.assert_close(swiglu_reference(gate, up), expected)
    for dtype in DTYPES:
        out = swiglu(gate.to(dtype), up.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected.to(dtype), atol=ATOL[dtype], rtol=RTOL[dtype])


def test_reference_input_errors():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="gate has shape"):
        swiglu(x, torch.randn(2, 5))
    with pytest.raises(TypeError, match="dtype"):
        swiglu_reference(x, x.half())
    with pytest.raises(TypeError, match="floating-point"):
        swiglu_reference(x.long(), x.long())
