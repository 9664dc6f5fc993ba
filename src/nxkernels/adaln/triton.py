"""AdaLN modulation and gated residual in Triton, forward and backward: the raw (autograd-free)
launch functions in ``ADALN_MODULATE_KERNELS`` / ``GATED_RESIDUAL_KERNELS`` that the custom ops
``nxkernels::adaln_modulate_fwd/_bwd`` and ``nxkernels::gated_residual_fwd/_bwd`` call.

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

__all__ = [
    "ADALN_MODULATE_KERNELS",
    "GATED_RESIDUAL_KERNELS",
    "MAX_DIM",
    "SUPPORTED_DTYPES",
    "adaln_modulate_backward_triton",
    "adaln_modulate_forward_triton",
    "gated_residual_backward_triton",
    "gated_residual_forward_triton",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DIM = 65536  # one row of D lives in one tile
_TILE = 8192  # elements per chunk (BLOCK_ROWS * BLOCK_D)
# programs per launch to aim for off CUDA (the interpreter pays ~1 ms per program); tests raise it
# to exercise the partial-sum path that CUDA takes
CPU_TARGET_PROGRAMS = 1


@triton.jit
def _adaln_fwd_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    G,
    D,
    rows_per_prog,
    eps,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
def _adaln_bwd_kernel(
    dy_ptr,
    x_ptr,
    scale_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dshift_ptr,
    dscale_ptr,
    G,
    D,
    rows_per_prog,
    P,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
def _gated_fwd_kernel(
    x_ptr, gate_ptr, h_ptr, y_ptr, G, D, rows_per_prog, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr
):
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
def _gated_bwd_kernel(
    dy_ptr,
    gate_ptr,
    h_ptr,
    dh_ptr,
    dgate_ptr,
    G,
    D,
    rows_per_prog,
    P,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
# host side: x [*batch, D]; modulation tensors already broadcast to x by torch's rules (at most
# x.ndim dimensions); gradients come back in each modulation tensor's own shape and dtype


def _check_dtypes(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"the Triton AdaLN kernels support {[str(d) for d in SUPPORTED_DTYPES]}, got "
                f"{name}.dtype={t.dtype}; use backend='reference' for it"
            )


def _groups(mod_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> int | None:
    """M (modulation rows) when a modulation of ``mod_shape`` (broadcastable to ``x_shape``)
    broadcasts only over trailing row dimensions of x; None for any other pattern."""
    padded = (1,) * (len(x_shape) - len(mod_shape)) + tuple(mod_shape)
    m, broadcasting = 1, False
    for ms, xs in zip(padded[:-1], x_shape[:-1], strict=True):
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
    """How ``x`` [.., D] and its modulation tensors map onto the kernel grid (shapes only, so the
    backward rebuilds the forward's plan)."""

    def __init__(self, x_shape: torch.Size, mod_shapes: list[torch.Size], device: torch.device):
        self.x_shape = tuple(x_shape)
        self.d = self.x_shape[-1]
        if self.d > MAX_DIM:
            raise ValueError(f"the Triton AdaLN kernels need dim <= {MAX_DIM}, got x.shape[-1]={self.d}")
        self.rows = math.prod(self.x_shape[:-1])
        self.shapes = [tuple(s) for s in mod_shapes]
        ms = {_groups(s, self.x_shape) for s in self.shapes}
        self.expanded = len(ms) != 1 or None in ms
        self.m = self.rows if self.expanded else ms.pop()
        self.g = self.rows // self.m if self.m else 0
        self.block_d = triton.next_power_of_2(max(self.d, 1))
        self.block_rows = max(1, min(triton.next_power_of_2(max(self.g, 1)), _TILE // self.block_d))
        chunks = triton.cdiv(self.g, self.block_rows) if self.g else 1
        target = CPU_TARGET_PROGRAMS
        if device.type == "cuda":
            target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        self.p = max(1, min(chunks, math.ceil(target / max(self.m, 1))))
        rows_per_prog = triton.cdiv(max(self.g, 1), self.p)
        self.rows_per_prog = triton.cdiv(rows_per_prog, self.block_rows) * self.block_rows
        self.p = triton.cdiv(max(self.g, 1), self.rows_per_prog)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.m, self.p)

    @property
    def empty(self) -> bool:
        return self.rows * self.d == 0

    def flat(self, t: Tensor) -> Tensor:
        """A tensor of x's shape as a contiguous ``[rows, D]`` matrix."""
        return t.reshape(self.rows, self.d).contiguous()

    def flat_mod(self, mod: Tensor) -> Tensor:
        if self.expanded:
            mod = mod.expand(self.x_shape)
        return mod.reshape(-1, self.d).contiguous()

    def mod_grad(self, partial: Tensor, i: int, dtype: torch.dtype) -> Tensor:
        """Sum the fp32 [M, P, D] partials to the i-th modulation tensor's shape and dtype."""
        grad = partial.sum(1)
        shape = self.shapes[i]
        if self.expanded:
            padded = (1,) * (len(self.x_shape) - len(shape)) + shape
            grad = grad.view(self.x_shape).sum_to_size(padded)
        return grad.reshape(shape).to(dtype)


def adaln_modulate_forward_triton(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)``: y in x's dtype, mean and rstd ``[*batch]`` fp32."""
    _check_dtypes(x=x, shift=shift, scale=scale)
    plan = _Plan(x.shape, [shift.shape, scale.shape], x.device)
    xf = plan.flat(x)
    y = torch.empty_like(xf)
    mean = torch.empty(plan.rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if not plan.empty:
        _adaln_fwd_kernel[plan.grid](
            xf,
            plan.flat_mod(shift),
            plan.flat_mod(scale),
            y,
            mean,
            rstd,
            plan.g,
            plan.d,
            plan.rows_per_prog,
            float(eps),
            BLOCK_ROWS=plan.block_rows,
            BLOCK_D=plan.block_d,
        )
    return y.view(x.shape), mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def adaln_modulate_backward_triton(
    dy: Tensor,
    x: Tensor,
    scale: Tensor,
    mean: Tensor,
    rstd: Tensor,
    shift_shape: tuple[int, ...],
    shift_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dshift, dscale)``; ``shift`` is needed only for its shape and dtype."""
    _check_dtypes(x=x, scale=scale)
    plan = _Plan(x.shape, [shift_shape, scale.shape], x.device)
    xf = plan.flat(x)
    dx = torch.empty_like(xf)
    parts = torch.zeros(2, plan.m, plan.p, plan.d, device=x.device, dtype=torch.float32)
    if not plan.empty:
        _adaln_bwd_kernel[plan.grid](
            plan.flat(dy.to(x.dtype)),
            xf,
            plan.flat_mod(scale),
            mean.reshape(-1).float().contiguous(),
            rstd.reshape(-1).float().contiguous(),
            dx,
            parts[0],
            parts[1],
            plan.g,
            plan.d,
            plan.rows_per_prog,
            plan.p,
            BLOCK_ROWS=plan.block_rows,
            BLOCK_D=plan.block_d,
        )
    dshift = plan.mod_grad(parts[0], 0, shift_dtype)
    dscale = plan.mod_grad(parts[1], 1, scale.dtype)
    return dx.view(x.shape), dshift, dscale


def gated_residual_forward_triton(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``x + gate * h`` in x's dtype."""
    _check_dtypes(x=x, gate=gate, h=h)
    plan = _Plan(x.shape, [gate.shape], x.device)
    xf = plan.flat(x)
    y = torch.empty_like(xf)
    if not plan.empty:
        _gated_fwd_kernel[plan.grid](
            xf,
            plan.flat_mod(gate),
            plan.flat(h),
            y,
            plan.g,
            plan.d,
            plan.rows_per_prog,
            BLOCK_ROWS=plan.block_rows,
            BLOCK_D=plan.block_d,
        )
    return y.view(x.shape)


def gated_residual_backward_triton(dy: Tensor, gate: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(dgate, dh)``; the gradient of x is ``dy`` itself (the caller passes it on)."""
    _check_dtypes(gate=gate, h=h)
    plan = _Plan(h.shape, [gate.shape], h.device)
    hf = plan.flat(h)
    dh = torch.empty_like(hf)
    part = torch.zeros(plan.m, plan.p, plan.d, device=h.device, dtype=torch.float32)
    if not plan.empty:
        _gated_bwd_kernel[plan.grid](
            plan.flat(dy),
            plan.flat_mod(gate),
            hf,
            dh,
            part,
            plan.g,
            plan.d,
            plan.rows_per_prog,
            plan.p,
            BLOCK_ROWS=plan.block_rows,
            BLOCK_D=plan.block_d,
        )
    return plan.mod_grad(part, 0, gate.dtype), dh.view(h.shape)


ADALN_MODULATE_KERNELS = {
    "forward": adaln_modulate_forward_triton,
    "backward": adaln_modulate_backward_triton,
}
GATED_RESIDUAL_KERNELS = {
    "forward": gated_residual_forward_triton,
    "backward": gated_residual_backward_triton,
}
