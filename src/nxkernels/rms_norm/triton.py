"""RMSNorm in Triton: a forward and a backward kernel, behind ``RMSNormTriton`` (autograd).

Rows (all leading dimensions) are flattened to a contiguous ``[rows, dim]`` matrix. A program owns
``BLOCK_M`` whole rows (``BLOCK_N`` = next power of two >= dim, masked), so the row statistics
never leave the program. All arithmetic runs in fp32 after the loads (the interpreter's bf16
arithmetic is wrong, and fp32 is what we want on GPU anyway); results are stored in the input
dtype. The forward saves ``rstd`` [rows] in fp32. The backward runs a fixed number of programs that
stride over row blocks, each accumulating an fp32 partial ``dweight`` row; torch sums the partials.

    n = h * rstd,  y = n * w,  dn = dy * w
    dh = rstd * (dn - n * mean(dn * n)),  dw = sum_rows(dy * n)

Importing this module imports triton; set ``TRITON_INTERPRET=1`` first to run on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["INTERPRETED", "RMSNormTriton", "rms_norm_backward_triton", "rms_norm_forward_triton"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read by triton.jit at decoration
MAX_DIM = 65536
_TILE = 4096  # elements per program tile, BLOCK_M * BLOCK_N (rows are never split)


@triton.jit
def _rms_fwd_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, rstd_ptr, n_rows, n_cols, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = h + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h_low = h.to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + offs, h_low, mask=mask)
        h = h_low.to(tl.float32)  # normalise the rounded residual stream, as the reference does
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    y = h * rstd[:, None] * w[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def _rms_bwd_kernel(dy_ptr, h_ptr, w_ptr, rstd_ptr, dh_ptr, dw_ptr, n_rows, n_cols, n_programs,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(pid * BLOCK_M, n_rows, n_programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows[:, None] * n_cols + cols[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        n = h * rstd[:, None]
        dn = dy * w[None, :]
        dot = tl.sum(dn * n, axis=1) / n_cols
        dh = rstd[:, None] * (dn - n * dot[:, None])
        tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * n, axis=0)
    tl.store(dw_ptr + pid * n_cols + cols, dw, mask=col_mask)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, min(triton.next_power_of_2(max(n_rows, 1)), _TILE // block_n))
    return block_m, block_n


def _num_warps(block_n: int) -> int:
    return 4 if block_n <= 2048 else 8 if block_n <= 8192 else 16


def rms_norm_forward_triton(
    x: Tensor, weight: Tensor, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    """2-D ``[rows, dim]`` contiguous input: ``(y, h or None, rstd [rows] fp32)``."""
    n_rows, n_cols = x.shape
    if n_cols > MAX_DIM:
        raise ValueError(f"rms_norm triton: dim {n_cols} exceeds {MAX_DIM}; use the reference")
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else None
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, h, rstd
    block_m, block_n = _blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_m),)
    _rms_fwd_kernel[grid](
        x, residual.contiguous() if residual is not None else x, weight, y,
        h if h is not None else y, rstd, n_rows, n_cols, eps,
        HAS_RESIDUAL=residual is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=_num_warps(block_n),
    )
    return y, h, rstd


def _backward_programs(device: torch.device, n_blocks: int) -> int:
    if device.type == "cuda":
        return max(1, min(n_blocks, 2 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n_blocks, 4))  # interpreter: few programs, each ~1 ms


def rms_norm_backward_triton(
    dy: Tensor, h: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. the normalised input ``h`` and ``weight`` (2-D ``[rows, dim]``)."""
    n_rows, n_cols = h.shape
    dy, h = dy.contiguous(), h.contiguous()
    dh = torch.empty_like(h)
    if n_rows == 0:
        return dh, torch.zeros_like(weight)
    block_m, block_n = _blocks(n_rows, n_cols)
    programs = _backward_programs(h.device, triton.cdiv(n_rows, block_m))
    partial = torch.empty(programs, n_cols, dtype=torch.float32, device=h.device)
    _rms_bwd_kernel[(programs,)](
        dy, h, weight.contiguous(), rstd.contiguous(), dh, partial, n_rows, n_cols, programs,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return dh, partial.sum(0).to(weight.dtype)


class RMSNormTriton(torch.autograd.Function):
    """``RMSNormTriton.apply(x, weight, residual, eps)`` over the last dimension: ``y``, or
    ``(y, x + residual)`` when ``residual`` is given (it may broadcast to ``x``).

    Usable on its own; the public ``nxkernels.rms_norm`` reaches the same kernels through a
    ``torch.library`` custom op.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, residual: Tensor | None, eps: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        r2 = None if residual is None else residual.expand(shape).reshape(-1, shape[-1])
        y, h, rstd = rms_norm_forward_triton(x2, weight, r2, eps)
        ctx.save_for_backward(x2 if h is None else h, weight, rstd)
        ctx.residual_shape = None if residual is None else residual.shape
        if residual is None:
            return y.view(shape)
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, dy: Tensor, dh_out: Tensor | None = None):
        h, weight, rstd = ctx.saved_tensors
        dh, dw = rms_norm_backward_triton(dy.reshape(h.shape), h, weight, rstd)
        if dh_out is not None:
            dh = dh + dh_out.reshape(h.shape)
        dx = dh.view(dy.shape)
        dres = None
        if ctx.residual_shape is not None and ctx.needs_input_grad[2]:
            dres = dx.sum_to_size(ctx.residual_shape)
        return dx, dw, dres, None


KERNELS = {"forward": rms_norm_forward_triton, "backward": rms_norm_backward_triton}
