"""Rotary position embedding, the Triton backend: one fused kernel for forward and backward.

The kernel reads x [*batch, seq, head_dim] (any strides), float positions [seq, axes], inv_freq
[pairs] and ``section_index`` [pairs] (the axis that drives each pair, int32), computes the angle
``positions[n, section_index[p]] * inv_freq[p]`` in fp32 *inside* the kernel (no cos/sin table in
memory, so fractional positions cost nothing extra) and writes ``x * cos + rotate_half(x) * sin``
(rotate-half convention, as ``nxkernels.rope.reference``) to a new contiguous tensor. The backward
is the inverse rotation (angle -> -angle), the same kernel with ``BACKWARD=True``.

Grid: programs tile (seq blocks) x (groups of batch rows); each program computes its angles once and
reuses them for every batch row (head) of its group. Under ``TRITON_INTERPRET=1`` (CPU) the launch
uses few programs with large blocks, since each program instance costs about a millisecond there.

``KERNELS`` holds the raw (non-autograd) forward and backward that ``nxkernels.rope.apply_rope``
reaches through its custom op; arguments are validated there, and the per-dtype tolerances against
the reference are declared on its ``triton`` Backend. Importing this module imports triton; set
``TRITON_INTERPRET=1`` first to run on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "INTERPRETED",
    "KERNELS",
    "rope_backward_triton",
    "rope_forward_triton",
    "section_index",
]


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


def section_index(
    sections: tuple[int, ...] | list[int], pairs: int, device: torch.device | str = "cpu"
) -> Tensor:
    """int32 [pairs]: the axis of each pair (``sections[a]`` consecutive pairs follow axis a).

    ``sections`` must already be valid (``nxkernels.rope.reference.resolve_sections``). Cached per
    (sections, device), so a CUDA call does not copy the index to the device every time.
    """
    key = (tuple(sections), pairs, str(device))
    index = _SECTION_INDEX.get(key)
    if index is None:
        if sum(sections) != pairs:
            raise ValueError(
                f"sections {tuple(sections)} sum to {sum(sections)} but there are {pairs} pairs "
                "(head_dim // 2)"
            )
        axis = [a for a, count in enumerate(sections) for _ in range(count)]
        index = _SECTION_INDEX[key] = torch.tensor(axis, dtype=torch.int32, device=device)
    return index


_SECTION_INDEX: dict[tuple, Tensor] = {}


def _rotate(x: Tensor, positions: Tensor, inv_freq: Tensor, sections, backward: bool) -> Tensor:
    index = section_index(sections, x.shape[-1] // 2, x.device)
    return _launch(x, positions.float(), inv_freq.float().contiguous(), index, backward)


def rope_forward_triton(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | list[int]
) -> Tensor:
    """Rotate x [*batch, seq, head_dim] (any strides) to float positions [seq, axes]; a new
    contiguous tensor in x's dtype."""
    return _rotate(x, positions, inv_freq, sections, backward=False)


def rope_backward_triton(
    dy: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | list[int]
) -> Tensor:
    """The gradient w.r.t. x: the inverse rotation of ``dy`` (angle -> -angle)."""
    return _rotate(dy, positions, inv_freq, sections, backward=True)


KERNELS = {"forward": rope_forward_triton, "backward": rope_backward_triton}
