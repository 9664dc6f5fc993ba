"""AdaLN modulation and gated residual in Triton, forward and backward, as autograd Functions.

``x`` is flattened to ``[rows, D]``. A modulation tensor (shift, scale, gate) that broadcasts over
trailing token dimensions (``[B, D]`` against ``x`` [B, T, D], ``[D]``, or one row per row of ``x``)
is viewed as ``[M, D]``: rows ``m*G .. m*G+G-1`` of ``x`` share modulation row ``m``. The grid is
``(M, P)``: program ``(m, p)`` loads its modulation row once and walks a contiguous slice of that
group in chunks of ``BLOCK_ROWS`` rows (one whole row of ``D`` per chunk row, as LayerNorm needs).
So the gradient of a broadcast modulation is a per-program partial sum, written to an fp32
``[M, P, D]`` buffer and summed over ``P`` afterwards: deterministic, no atomics, small (``P`` is 1
on CPU and about 4 programs per SM in total on CUDA). Any other broadcast pattern (e.g. ``[1, T, D]``
against [B, T, D]) is expanded to one row per row and reduced with ``sum_to_size``.

Loads are upcast to fp32 before arithmetic; mean and rstd (fp32, one per row) are saved for the
LayerNorm backward:

    xhat = (x - mean) * rstd,   y = xhat * (1 + scale) + shift
    dshift = sum_rows dy,   dscale = sum_rows dy * xhat,   w = dy * (1 + scale)
    dx = rstd * (w - mean_D(w) - xhat * mean_D(w * xhat))

Importing this module imports triton; set ``TRITON_INTERPRET=1`` first to run on CPU tensors.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from nxkernels.adaln.reference import as_broadcast, check_float

__all__ = [
    "MAX_DIM",
    "SUPPORTED_DTYPES",
    "AdaLNModulateTriton",
    "GatedResidualTriton",
    "adaln_modulate_triton",
    "gated_residual_triton",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DIM = 65536  # one row of D lives in one tile
_TILE = 8192  # elements per chunk (BLOCK_ROWS * BLOCK_D)
# programs per launch to aim for off CUDA (the interpreter pays ~1 ms per program); tests raise it
# to exercise the partial-sum path that CUDA takes
CPU_TARGET_PROGRAMS = 1


@triton.jit
def _adaln_fwd_kernel(x_ptr, shift_ptr, scale_ptr, y_ptr, mean_ptr, rstd_ptr,
                      G, D, rows_per_prog, eps,
                      BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    lo = tl.program_id(1).to(tl.int64) * rows_per_prog
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    shift = tl.load(shift_ptr + m * D + cols, mask=cmask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + m * D + cols, mask=cmask, other=0.0).to(tl.float32)
    for i in range(0, rows_per_prog, BLOCK_ROWS):
        local = i + tl.arange(0, BLOCK_ROWS)
        r = lo + local
        rmask = (local < rows_per_prog) & (r < G)
        rows = m * G + r
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        y = xc * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + rows, mean, mask=rmask)
        tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _adaln_bwd_kernel(dy_ptr, x_ptr, scale_ptr, mean_ptr, rstd_ptr, dx_ptr, dshift_ptr, dscale_ptr,
                      G, D, rows_per_prog, P,
                      BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64)
    lo = p * rows_per_prog
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    scale = tl.load(scale_ptr + m * D + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(0, rows_per_prog, BLOCK_ROWS):
        local = i + tl.arange(0, BLOCK_ROWS)
        r = lo + local
        rmask = (local < rows_per_prog) & (r < G)
        rows = m * G + r
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * D + cols[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        acc_shift += tl.sum(dy, axis=0)
        acc_scale += tl.sum(dy * xhat, axis=0)
        w = dy * (1.0 + scale[None, :])
        c1 = tl.sum(w * xhat, axis=1) / D
        c2 = tl.sum(w, axis=1) / D
        dx = (w - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    part = (m * P + p) * D + cols
    tl.store(dshift_ptr + part, acc_shift, mask=cmask)
    tl.store(dscale_ptr + part, acc_scale, mask=cmask)


@triton.jit
def _gated_fwd_kernel(x_ptr, gate_ptr, h_ptr, y_ptr, G, D, rows_per_prog,
                      BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    lo = tl.program_id(1).to(tl.int64) * rows_per_prog
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    gate = tl.load(gate_ptr + m * D + cols, mask=cmask, other=0.0).to(tl.float32)
    for i in range(0, rows_per_prog, BLOCK_ROWS):
        local = i + tl.arange(0, BLOCK_ROWS)
        r = lo + local
        rmask = (local < rows_per_prog) & (r < G)
        mask = rmask[:, None] & cmask[None, :]
        offs = (m * G + r)[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, (x + gate[None, :] * h).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(dy_ptr, gate_ptr, h_ptr, dh_ptr, dgate_ptr, G, D, rows_per_prog, P,
                      BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64)
    lo = p * rows_per_prog
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    gate = tl.load(gate_ptr + m * D + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(0, rows_per_prog, BLOCK_ROWS):
        local = i + tl.arange(0, BLOCK_ROWS)
        r = lo + local
        rmask = (local < rows_per_prog) & (r < G)
        mask = rmask[:, None] & cmask[None, :]
        offs = (m * G + r)[:, None] * D + cols[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(dy * h, axis=0)
        tl.store(dh_ptr + offs, (dy * gate[None, :]).to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_ptr + (m * P + p) * D + cols, acc, mask=cmask)


# ------------------------------------------------------------------------------------------------
# host side


def _check_dtype(name: str, t: Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton AdaLN kernels support {[str(d) for d in SUPPORTED_DTYPES]}, got "
            f"{name}.dtype={t.dtype}; use the reference for it"
        )


def _groups(mod: Tensor, x: Tensor) -> int | None:
    """M (modulation rows) when ``mod`` (already broadcastable to ``x``) broadcasts only over
    trailing row dimensions of ``x``; None for any other pattern."""
    padded = (1,) * (x.ndim - mod.ndim) + tuple(mod.shape)
    m, broadcasting = 1, False
    for ms, xs in zip(padded[:-1], x.shape[:-1], strict=True):
        if xs == 1:
            continue
        if ms == 1:
            broadcasting = True
        elif broadcasting:
            return None
        else:
            m *= xs
    return m


class _Plan:
    """How ``x`` [.., D] and its modulation tensors map onto the kernel grid."""

    def __init__(self, x: Tensor, mods: list[Tensor]):
        self.d = x.shape[-1]
        if self.d > MAX_DIM:
            raise ValueError(f"the Triton AdaLN kernels need dim <= {MAX_DIM}, got x.shape[-1]={self.d}")
        self.rows = x.numel() // max(self.d, 1)
        self.shapes = [m.shape for m in mods]
        ms = {_groups(m, x) for m in mods}
        self.expanded = len(ms) != 1 or None in ms
        self.m = self.rows if self.expanded else ms.pop()
        self.g = self.rows // self.m if self.m else 0
        self.block_d = triton.next_power_of_2(max(self.d, 1))
        self.block_rows = max(1, min(triton.next_power_of_2(max(self.g, 1)), _TILE // self.block_d))
        chunks = triton.cdiv(self.g, self.block_rows) if self.g else 1
        target = CPU_TARGET_PROGRAMS
        if x.is_cuda:
            target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
        self.p = max(1, min(chunks, math.ceil(target / max(self.m, 1))))
        rows_per_prog = triton.cdiv(max(self.g, 1), self.p)
        self.rows_per_prog = triton.cdiv(rows_per_prog, self.block_rows) * self.block_rows
        self.p = triton.cdiv(max(self.g, 1), self.rows_per_prog)
        self.x_shape = x.shape

    @property
    def grid(self) -> tuple[int, int]:
        return (self.m, self.p)

    def flat_mod(self, mod: Tensor) -> Tensor:
        if self.expanded:
            mod = mod.expand(self.x_shape)
        return mod.reshape(-1, self.d).contiguous()

    def mod_grad(self, partial: Tensor, i: int, dtype: torch.dtype) -> Tensor:
        """Sum the fp32 [M, P, D] partials to the i-th modulation tensor's shape and dtype."""
        grad = partial.sum(1)
        shape = self.shapes[i]
        if self.expanded:
            padded = (1,) * (len(self.x_shape) - len(shape)) + tuple(shape)
            grad = grad.view(self.x_shape).sum_to_size(padded)
        return grad.reshape(shape).to(dtype)


class AdaLNModulateTriton(torch.autograd.Function):
    """``LayerNorm(x) * (1 + scale) + shift`` (no affine) with fused Triton forward and backward."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
        check_float("x", x)
        shift_b = as_broadcast("shift", shift, x)
        scale_b = as_broadcast("scale", scale, x)
        for name, t in (("x", x), ("shift", shift), ("scale", scale)):
            _check_dtype(name, t)
        plan = _Plan(x, [shift_b, scale_b])
        xf = x.reshape(-1, plan.d).contiguous()
        sh = plan.flat_mod(shift_b)
        sc = plan.flat_mod(scale_b)
        y = torch.empty_like(xf)
        mean = torch.empty(plan.rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        if xf.numel():
            _adaln_fwd_kernel[plan.grid](
                xf, sh, sc, y, mean, rstd, plan.g, plan.d, plan.rows_per_prog, float(eps),
                BLOCK_ROWS=plan.block_rows, BLOCK_D=plan.block_d,
            )
        ctx.save_for_backward(xf, sc, mean, rstd)
        ctx.plan = plan
        ctx.dtypes = (shift.dtype, scale.dtype)
        ctx.orig_shapes = (shift.shape, scale.shape)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        xf, sc, mean, rstd = ctx.saved_tensors
        plan: _Plan = ctx.plan
        dy = dy.reshape(-1, plan.d).contiguous()
        dx = torch.empty_like(xf)
        parts = torch.zeros(2, plan.m, plan.p, plan.d, device=xf.device, dtype=torch.float32)
        if xf.numel():
            _adaln_bwd_kernel[plan.grid](
                dy, xf, sc, mean, rstd, dx, parts[0], parts[1],
                plan.g, plan.d, plan.rows_per_prog, plan.p,
                BLOCK_ROWS=plan.block_rows, BLOCK_D=plan.block_d,
            )
        dshift = plan.mod_grad(parts[0], 0, ctx.dtypes[0]).reshape(ctx.orig_shapes[0])
        dscale = plan.mod_grad(parts[1], 1, ctx.dtypes[1]).reshape(ctx.orig_shapes[1])
        return dx.view(plan.x_shape), dshift, dscale, None


class GatedResidualTriton(torch.autograd.Function):
    """``x + gate * h`` with Triton forward and backward (``gate`` broadcast like AdaLN's)."""

    @staticmethod
    def forward(ctx, x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
        check_float("x", x)
        check_float("h", h)
        gate_b = as_broadcast("gate", gate, x)
        if h.shape != x.shape:
            raise ValueError(
                f"h has shape {tuple(h.shape)} but x has shape {tuple(x.shape)}; they must match"
            )
        for name, t in (("x", x), ("gate", gate), ("h", h)):
            _check_dtype(name, t)
        plan = _Plan(x, [gate_b])
        xf = x.reshape(-1, plan.d).contiguous()
        hf = h.reshape(-1, plan.d).contiguous()
        gf = plan.flat_mod(gate_b)
        y = torch.empty_like(xf)
        if xf.numel():
            _gated_fwd_kernel[plan.grid](
                xf, gf, hf, y, plan.g, plan.d, plan.rows_per_prog,
                BLOCK_ROWS=plan.block_rows, BLOCK_D=plan.block_d,
            )
        ctx.save_for_backward(gf, hf)
        ctx.plan = plan
        ctx.meta = (x.dtype, gate.dtype, gate.shape)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        gf, hf = ctx.saved_tensors
        plan: _Plan = ctx.plan
        x_dtype, gate_dtype, gate_shape = ctx.meta
        dy = dy.reshape(-1, plan.d).contiguous()
        dh = torch.empty_like(hf)
        part = torch.zeros(plan.m, plan.p, plan.d, device=hf.device, dtype=torch.float32)
        if hf.numel():
            _gated_bwd_kernel[plan.grid](
                dy, gf, hf, dh, part, plan.g, plan.d, plan.rows_per_prog, plan.p,
                BLOCK_ROWS=plan.block_rows, BLOCK_D=plan.block_d,
            )
        dx = dy.to(x_dtype).view(plan.x_shape)
        dgate = plan.mod_grad(part, 0, gate_dtype).reshape(gate_shape)
        return dx, dgate, dh.view(plan.x_shape)


def adaln_modulate_triton(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` through ``AdaLNModulateTriton``."""
    return AdaLNModulateTriton.apply(x, shift, scale, eps)


def gated_residual_triton(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``x + gate * h`` through ``GatedResidualTriton``."""
    return GatedResidualTriton.apply(x, gate, h)
