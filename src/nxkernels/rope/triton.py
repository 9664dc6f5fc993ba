"""Rotary position embedding, the Triton backend: one fused kernel for forward and backward.

The kernel reads x [*batch, seq, head_dim] (any strides), float positions [seq, axes], inv_freq
[pairs] and ``section_index`` [pairs] (the axis that drives each pair, int32), computes the angle
``positions[n, section_index[p]] * inv_freq[p]`` in fp32 *inside* the kernel (no cos/sin table in
memory, so fractional positions cost nothing extra) and writes ``x * cos + rotate_half(x) * sin``
(rotate-half convention, as ``nxkernels.rope.reference``). The backward is the inverse rotation
(angle -> -angle), the same kernel with ``BACKWARD=True``.

Grid: programs tile (seq blocks) x (groups of batch rows); each program computes its angles once and
reuses them for every batch row (head) of its group. Under ``TRITON_INTERPRET=1`` (CPU) the launch
uses few programs with large blocks, since each program instance costs about a millisecond there.

Gradients flow to ``x`` only; ``positions`` and ``inv_freq`` must not require grad (they are
buffers in every caller). Supported dtypes: fp32, fp16, bf16 (fp32 math, result in x's dtype);
per-dtype tolerances against the reference are ``ATOL``/``RTOL``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from nxkernels.rope.reference import rope_reference_from_positions

__all__ = [
    "ATOL",
    "DTYPES",
    "INTERPRETED",
    "RTOL",
    "RoPETriton",
    "apply_rope_qk_triton",
    "apply_rope_triton",
    "not_supported_reasons",
    "rope_reference_from_positions",
    "section_index",
]

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
# Tolerances of this backend against apply_rope_reference (outputs and gradients). Both do the same
# fp32 math; the difference is cos/sin rounding (~1e-7) plus one rounding step of the output (the
# interpreter rounds fp32 -> bf16 towards zero, so bf16 may be one ulp off).
ATOL: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
RTOL: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@triton.jit
def _rope_kernel(
    x_ptr,
    out_ptr,
    pos_ptr,
    freq_ptr,
    axis_ptr,
    rows,
    inner,
    seq,
    pairs,
    sx_outer,
    sx_inner,
    sx_seq,
    sx_dim,
    sp_seq,
    sp_axis,
    ROWS_PER_PROG: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_p = tl.arange(0, BLOCK_P)
    mask_s = offs_s < seq
    mask_p = offs_p < pairs
    mask = mask_s[:, None] & mask_p[None, :]

    # Angles for this seq block, computed once and reused for every batch row of the group.
    axis = tl.load(axis_ptr + offs_p, mask=mask_p, other=0)
    freq = tl.load(freq_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    pos = tl.load(
        pos_ptr + offs_s[:, None] * sp_seq + axis[None, :] * sp_axis, mask=mask, other=0.0
    ).to(tl.float32)
    angle = pos * freq[None, :]
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    if BACKWARD:
        sin = -sin

    x_tile = offs_s[:, None].to(tl.int64) * sx_seq + offs_p[None, :].to(tl.int64) * sx_dim
    x_half = pairs * sx_dim
    head_dim = 2 * pairs
    out_tile = offs_s[:, None].to(tl.int64) * head_dim + offs_p[None, :]
    row_start = pid_r * ROWS_PER_PROG
    for i in range(ROWS_PER_PROG):
        row = row_start + i
        if row < rows:
            base = (row // inner).to(tl.int64) * sx_outer + (row % inner).to(tl.int64) * sx_inner
            x1 = tl.load(x_ptr + base + x_tile, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(x_ptr + base + x_half + x_tile, mask=mask, other=0.0).to(tl.float32)
            o1 = x1 * cos - x2 * sin
            o2 = x2 * cos + x1 * sin
            obase = row.to(tl.int64) * seq * head_dim
            tl.store(out_ptr + obase + out_tile, o1.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(
                out_ptr + obase + pairs + out_tile, o2.to(out_ptr.dtype.element_ty), mask=mask
            )


# Triton picks the interpreter when the kernel is decorated, i.e. when this module is imported.
INTERPRETED: bool = type(_rope_kernel).__name__ == "InterpretedFunction"


def _as_3d_batch(x: Tensor) -> Tensor:
    """x viewed as [outer, inner, seq, head_dim] (a view whenever the batch dims allow it)."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    return x.reshape(-1, *x.shape[-3:])


def _launch(x: Tensor, positions: Tensor, inv_freq: Tensor, index: Tensor, backward: bool):
    seq, head_dim = x.shape[-2], x.shape[-1]
    pairs = head_dim // 2
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x4 = _as_3d_batch(x)
    outer, inner = x4.shape[0], x4.shape[1]
    rows = outer * inner
    block_p = triton.next_power_of_2(pairs)
    if INTERPRETED:
        # ~1 ms per program instance: one seq block, few row groups.
        block_s = triton.next_power_of_2(seq)
        rows_per_prog = rows
    else:
        block_s = max(1, min(triton.next_power_of_2(seq), max(1, 2048 // block_p)))
        rows_per_prog = min(rows, 8)
    grid = (triton.cdiv(seq, block_s), triton.cdiv(rows, rows_per_prog))
    _rope_kernel[grid](
        x4,
        out,
        positions,
        inv_freq,
        index,
        rows,
        inner,
        seq,
        pairs,
        x4.stride(0),
        x4.stride(1),
        x4.stride(2),
        x4.stride(3),
        positions.stride(0),
        positions.stride(1),
        ROWS_PER_PROG=rows_per_prog,
        BLOCK_S=block_s,
        BLOCK_P=block_p,
        BACKWARD=backward,
    )
    return out


def not_supported_reasons(x: Tensor, positions: Tensor | None = None) -> list[str]:
    """Why this backend cannot run on these inputs (empty list: it can)."""
    reasons = []
    if not isinstance(x, Tensor):
        return [f"x must be a torch.Tensor, got {type(x).__name__}"]
    if x.dtype not in DTYPES:
        reasons.append(f"dtype {x.dtype} is not one of {DTYPES}")
    if x.device.type == "cpu" and not INTERPRETED:
        reasons.append(
            "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before "
            "nxkernels.rope.triton is imported (stock Triton has no CPU backend)"
        )
    elif x.device.type not in ("cpu", "cuda"):
        reasons.append(f"device {x.device.type} is not supported (cuda, or cpu when interpreting)")
    if x.ndim < 2 or x.shape[-1] % 2:
        reasons.append(f"x must be [*batch, seq, head_dim] with even head_dim, got {tuple(x.shape)}")
    if positions is not None and positions.device != x.device:
        reasons.append(f"positions on {positions.device} but x on {x.device}")
    return reasons


def _check(x: Tensor, positions: Tensor, inv_freq: Tensor, index: Tensor) -> None:
    reasons = not_supported_reasons(x, positions)
    if reasons:
        raise ValueError("the Triton RoPE cannot run: " + "; ".join(reasons))
    if positions.ndim != 2 or not positions.is_floating_point():
        raise ValueError(
            f"positions must be a float [seq, axes] tensor, got {positions.dtype} "
            f"{tuple(positions.shape)}"
        )
    seq, pairs = x.shape[-2], x.shape[-1] // 2
    if positions.shape[0] != seq:
        raise ValueError(
            f"positions has {positions.shape[0]} rows but x {tuple(x.shape)} has seq {seq}; give "
            "one position per token"
        )
    if inv_freq.ndim != 1 or inv_freq.shape[0] != pairs or not inv_freq.is_floating_point():
        raise ValueError(
            f"inv_freq must be a float [pairs] tensor with pairs = head_dim // 2 = {pairs}, got "
            f"{inv_freq.dtype} {tuple(inv_freq.shape)}"
        )
    if index.ndim != 1 or index.shape[0] != pairs or index.dtype != torch.int32:
        raise ValueError(
            f"section_index must be an int32 [pairs] tensor ({pairs} entries, the axis of each "
            f"pair), got {index.dtype} {tuple(index.shape)}; build it with section_index()"
        )
    for name, t in (("inv_freq", inv_freq), ("section_index", index)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if positions.requires_grad or inv_freq.requires_grad:
        raise ValueError(
            "the Triton RoPE gives gradients for x only; positions and inv_freq must not require "
            "grad (detach them, or use apply_rope_reference)"
        )


class RoPETriton(torch.autograd.Function):
    """``RoPETriton.apply(x, positions, inv_freq, section_index)``: rotate x; backward = inverse."""

    @staticmethod
    def forward(ctx, x: Tensor, positions: Tensor, inv_freq: Tensor, index: Tensor) -> Tensor:
        _check(x, positions, inv_freq, index)
        positions = positions.float()
        inv_freq = inv_freq.float().contiguous()
        index = index.contiguous()
        ctx.save_for_backward(positions, inv_freq, index)
        return _launch(x, positions, inv_freq, index, backward=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        positions, inv_freq, index = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _launch(grad_out, positions, inv_freq, index, backward=True)
        return grad_x, None, None, None


def section_index(
    sections: tuple[int, ...] | None, pairs: int, device: torch.device | str = "cpu"
) -> Tensor:
    """int32 [pairs]: the axis of each pair (``sections[a]`` consecutive pairs follow axis a)."""
    if sections is None:
        sections = (pairs,)
    sections = tuple(sections)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sections):
        raise ValueError(f"sections must be ints >= 0 (pairs per axis), got {sections!r}")
    if sum(sections) != pairs:
        raise ValueError(
            f"sections {sections} sum to {sum(sections)} but there are {pairs} pairs "
            "(head_dim // 2)"
        )
    axis = [a for a, count in enumerate(sections) for _ in range(count)]
    return torch.tensor(axis, dtype=torch.int32, device=device)


def apply_rope_triton(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | None = None
) -> Tensor:
    """Rotate x [*batch, seq, head_dim] to float positions [seq, axes]; same shape and dtype.

    ``sections`` as ``rope_cos_sin`` (None: one axis drives every pair). Equals
    ``rope_reference_from_positions`` within ``ATOL``/``RTOL`` of x's dtype.
    """
    reasons = not_supported_reasons(x, positions)
    if reasons:
        raise ValueError("the Triton RoPE cannot run: " + "; ".join(reasons))
    if not isinstance(positions, Tensor) or positions.ndim != 2:
        raise ValueError(f"positions must be a [seq, axes] tensor, got {positions!r:.80}")
    if sections is not None and len(tuple(sections)) != positions.shape[1]:
        raise ValueError(
            f"sections {tuple(sections)} has {len(tuple(sections))} entries but positions has "
            f"{positions.shape[1]} axes; give one section per axis"
        )
    if sections is None and positions.shape[1] != 1:
        raise ValueError(
            f"positions has {positions.shape[1]} axes but sections is None (one axis); pass "
            "sections, one count of pairs per axis"
        )
    pairs = x.shape[-1] // 2
    index = section_index(sections, pairs, device=x.device)
    return RoPETriton.apply(x, positions, inv_freq, index)


def apply_rope_qk_triton(
    q: Tensor,
    k: Tensor,
    positions: Tensor,
    inv_freq: Tensor,
    sections: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """``apply_rope_triton`` on queries and keys (same positions, possibly different head counts)."""
    return (
        apply_rope_triton(q, positions, inv_freq, sections),
        apply_rope_triton(k, positions, inv_freq, sections),
    )
