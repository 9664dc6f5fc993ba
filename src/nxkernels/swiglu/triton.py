"""SwiGLU in Triton: a forward kernel and a backward kernel, launched by the raw (autograd-free)
functions in ``KERNELS`` that the custom ops ``nxkernels::swiglu_fwd``/``swiglu_bwd`` call.

Rows (all leading dimensions) are flattened; each program owns a ``BLOCK_ROWS x BLOCK_COLS`` tile of
the ``[rows, hidden]`` matrix, with masks for sizes that are not multiples of the block. Loads are
upcast to fp32 before any arithmetic (the interpreter's bf16 arithmetic is wrong, and it is also what
we want on GPU); results are stored in the input dtype. Only ``gate`` and ``up`` are saved for the
backward, which recomputes the sigmoid (as Liger does) instead of saving ``silu(gate)``:

    y  = silu(g) * u,   silu(g) = g * s,  s = sigmoid(g)
    du = dy * silu(g)
    dg = dy * u * s * (1 + g * (1 - s))

Importing this module imports triton; set ``TRITON_INTERPRET=1`` first to run on CPU tensors.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["KERNELS", "SUPPORTED_DTYPES", "swiglu_backward_triton", "swiglu_forward_triton"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TILE = 4096  # elements per program tile (BLOCK_ROWS * BLOCK_COLS)
_MAX_COLS = 1024


@triton.jit
def _swiglu_fwd_kernel(
    g_ptr, u_ptr, y_ptr, n_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    dy_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    du = dy * silu
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    tl.store(dg_ptr + offs, dg.to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int, tuple[int, int]]:
    block_cols = min(triton.next_power_of_2(max(n_cols, 1)), _MAX_COLS)
    block_rows = max(1, min(triton.next_power_of_2(max(n_rows, 1)), _TILE // block_cols))
    grid = (triton.cdiv(n_rows, block_rows), triton.cdiv(n_cols, block_cols))
    return block_rows, block_cols, grid


def _check_dtype(t: Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton SwiGLU supports {[str(d) for d in SUPPORTED_DTYPES]}, got {t.dtype}; "
            "use backend='reference' for it"
        )


def _rows(t: Tensor) -> Tensor:
    """``t`` as a contiguous ``[rows, hidden]`` matrix (zero rows allowed)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1]).contiguous()


def swiglu_forward_triton(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` in gate's dtype, contiguous, for ``[*batch, hidden]`` input of any strides."""
    _check_dtype(gate)
    g, u = _rows(gate), _rows(up)
    n_rows, n_cols = g.shape
    y = torch.empty_like(g)
    if g.numel():
        br, bc, grid = _blocks(n_rows, n_cols)
        _swiglu_fwd_kernel[grid](g, u, y, n_rows, n_cols, BLOCK_ROWS=br, BLOCK_COLS=bc)
    return y.view(gate.shape)


def swiglu_backward_triton(dy: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. ``gate`` and ``up`` (contiguous); the sigmoid is recomputed."""
    _check_dtype(gate)
    g, u, d = _rows(gate), _rows(up), _rows(dy.to(gate.dtype))
    n_rows, n_cols = g.shape
    dg = torch.empty_like(g)
    du = torch.empty_like(u)
    if g.numel():
        br, bc, grid = _blocks(n_rows, n_cols)
        _swiglu_bwd_kernel[grid](d, g, u, dg, du, n_rows, n_cols, BLOCK_ROWS=br, BLOCK_COLS=bc)
    return dg.view(gate.shape), du.view(up.shape)


KERNELS = {"forward": swiglu_forward_triton, "backward": swiglu_backward_triton}
