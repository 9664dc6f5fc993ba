"""Nearest-codeword search in Triton: one program per block of rows scans the whole codebook.

Shape legend: tokens N, codes K, topk k (``K_PAD`` = next power of two >= k), block sizes
``BLOCK_N`` × ``BLOCK_K``; the inputs are transposed to ``[D, N]`` and ``[D, K]`` so that each
channel's loads are contiguous.

For each ``[BLOCK_N, BLOCK_K]`` tile the kernel evaluates the reference's fixed-order distance
channel by channel (``acc = acc + (z_d − e_d)²``, then ``w_sem · acc_sem + w_pix · acc_pix``) and is
launched with ``enable_fp_fusion=False`` (``ptxas --fmad=false``), so no multiply-add is contracted
and every distance has the reference's bits. Each distance becomes an int64 key
``bits(dist) << 32 | index``; a row keeps ``K_PAD`` keys in registers (unique sentinels at first)
and, per tile, extracts the tile's k smallest keys one at a time, each replacing the row's current
largest kept key if smaller. Keys are unique, so ties resolve to the lowest index with no special
case. Torch sorts the kept keys afterwards.

No ``tl.dot``: CUDA-core fp32 (3 operations per channel per pair). Interpreter-safe: no libdevice,
scalars cast with ``tl.cast``, pointer arithmetic only. Importing this module imports triton; set
``TRITON_INTERPRET=1`` first to run on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from nxkernels.vq import TRITON_MAX_K as MAX_K
from nxkernels.vq.reference import SENTINEL, unpack

__all__ = ["MAX_K", "nearest_triton"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read by triton.jit at decoration


@triton.jit
def _vq_kernel(zs_ptr, es_ptr, zp_ptr, ep_ptr, out_ptr, n_rows, n_codes, dim_s, dim_p, w_sem, w_pix,
               sentinel, HAS_PIX: tl.constexpr, SCALE_SEM: tl.constexpr, SCALE_PIX: tl.constexpr,
               K_BEST: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    slots = tl.arange(0, K_PAD).to(tl.int64)
    # unique sentinels (pack(inf, 2**32 - 1 - slot)) so that "the largest kept key" is one slot
    best = tl.zeros((BLOCK_N, K_PAD), dtype=tl.int64) + (sentinel - slots)[None, :]
    removed = sentinel + 1  # above every kept key: an extracted or out-of-range tile entry
    ws = tl.cast(w_sem, tl.float32)
    wp = tl.cast(w_pix, tl.float32)
    for c0 in range(0, n_codes, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K).to(tl.int64)
        col_mask = cols < n_codes
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        z_ptrs, e_ptrs = zs_ptr + rows, es_ptr + cols  # channel d: + d·N, + d·K (pointers: no overflow)
        for _ in range(0, dim_s):
            zd = tl.load(z_ptrs, mask=row_mask, other=0.0)
            ed = tl.load(e_ptrs, mask=col_mask, other=0.0)
            diff = zd[:, None] - ed[None, :]
            acc = acc + diff * diff
            z_ptrs += n_rows
            e_ptrs += n_codes
        if SCALE_SEM:
            acc = acc * ws
        if HAS_PIX:
            acc_p = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            z_ptrs, e_ptrs = zp_ptr + rows, ep_ptr + cols
            for _ in range(0, dim_p):
                zd = tl.load(z_ptrs, mask=row_mask, other=0.0)
                ed = tl.load(e_ptrs, mask=col_mask, other=0.0)
                diff = zd[:, None] - ed[None, :]
                acc_p = acc_p + diff * diff
                z_ptrs += n_rows
                e_ptrs += n_codes
            if SCALE_PIX:
                acc_p = acc_p * wp
            acc = acc + acc_p
        bits = acc.to(tl.int32, bitcast=True).to(tl.int64)
        key = (bits << 32) | cols[None, :]
        key = tl.where(col_mask[None, :], key, removed)
        for _ in range(K_BEST):
            low = tl.min(key, axis=1)
            worst = tl.max(best, axis=1)
            take = (best == worst[:, None]) & (low < worst)[:, None]
            best = tl.where(take, low[:, None], best)
            key = tl.where(key == low[:, None], removed, key)
    out = out_ptr + rows[:, None] * K_PAD + slots[None, :]
    tl.store(out, best, mask=row_mask[:, None])


def _blocks(n_rows: int, n_codes: int, k_pad: int) -> tuple[int, int, int]:
    if INTERPRETED:  # small tiles, so that tests at tiny shapes still cross row and code tiles
        return 32, 32, 1
    return (64 if k_pad <= 8 else 32), 128, 8


def nearest_triton(halves: list[tuple[Tensor, Tensor, float]], k: int, chunk: int = 0
                   ) -> tuple[Tensor, Tensor]:
    """``(indices [N, k] int64, dist [N, k] fp32)`` for ``k <= MAX_K``; ``chunk`` is unused."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"vq triton: k ({k}) must be in [1, {MAX_K}]; use the torch backend")
    z_sem, e_sem, w_sem = halves[0]
    has_pix = len(halves) == 2
    z_pix, e_pix, w_pix = halves[1] if has_pix else (z_sem, e_sem, 1.0)
    n_rows, n_codes = z_sem.shape[0], e_sem.shape[0]
    k_pad = triton.next_power_of_2(k)
    out = torch.empty((n_rows, k_pad), dtype=torch.int64, device=z_sem.device)
    if n_rows > 0:
        block_n, block_k, warps = _blocks(n_rows, n_codes, k_pad)
        zs_t, es_t = z_sem.T.contiguous(), e_sem.T.contiguous()
        zp_t, ep_t = (z_pix.T.contiguous(), e_pix.T.contiguous()) if has_pix else (zs_t, es_t)
        _vq_kernel[(triton.cdiv(n_rows, block_n),)](
            zs_t, es_t, zp_t, ep_t, out, n_rows, n_codes, z_sem.shape[1], z_pix.shape[1],
            w_sem, w_pix, SENTINEL,
            HAS_PIX=has_pix, SCALE_SEM=w_sem != 1.0, SCALE_PIX=has_pix and w_pix != 1.0,
            K_BEST=k, K_PAD=k_pad, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=warps, enable_fp_fusion=False,
        )
    keys = out if k_pad == 1 else out.sort(dim=1).values
    return unpack(keys[:, :k].contiguous())
