"""Nearest-codeword search, the reference: the distance definition, and the full ``[N, K]`` oracle.

Shape legend:
    tokens     N, query rows
    codes      K, codewords (both codebooks share one index space)
    sem_dim    Ds, width of a semantic row / codeword
    pix_dim    Dp, width of a pixel row / codeword
    topk       k, nearest codewords kept per row

The distance of row n to codeword i is *defined* as this exact sequence of fp32 operations, each
rounded once (no fused multiply-add), channels summed left to right::

    sq(z, e)  = (((z0 - e0)² + (z1 - e1)²) + (z2 - e2)²) + ...       # acc = 0; acc = acc + (zd - ed)²
    dist      = w_sem · sq(z_sem, e_sem) + w_pix · sq(z_pix, e_pix)   # single codebook: w_sem · sq(...)

so every backend that performs the same operations gets the same bits, whatever its tiling: the
reference below (all pairs at once), the chunked torch backend (which only *screens* with a matmul
and recomputes its candidates with this formula), and the Triton kernel (compiled without FMA
contraction). Weights are rounded to fp32 before use; a zero weight drops its half (``0 · x + y``
is ``y`` exactly for finite ``x >= 0``). Ranking is by ``(dist, index)``: ties go to the lowest
index, so duplicated codewords always resolve to the first copy.

``pack``/``unpack`` turn ``(dist, index)`` into one int64 key ``bits(dist) << 32 | index``: for
``dist >= 0`` the IEEE bit pattern is monotonic, so ordering keys orders by distance, then index.

Inputs here are *prepared* (``prepare``): fp32, contiguous, L2-normalised if asked. The public op
prepares once and hands the same tensors to whichever backend runs, so backends compare bit for
bit on the same device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NORMALIZE_EPS",
    "SENTINEL",
    "fixed_order_sq_dist",
    "nearest_reference",
    "pack",
    "prepare",
    "unpack",
    "weighted_sum",
]

NORMALIZE_EPS = 1e-12  # F.normalize's: a zero row stays zero
# pack(+inf, 2**32 - 1): larger than every real key (finite distance, index < 2**31)
SENTINEL = (0x7F800000 << 32) | 0xFFFFFFFF


def fp32_weight(w: float) -> float:
    """``w`` rounded to the nearest fp32 (as a Python float, exactly representable in fp32)."""
    return float(torch.tensor(float(w) + 0.0, dtype=torch.float32))


def prepare(
    z_sem: Tensor, codebook_sem: Tensor, z_pix: Tensor | None, codebook_pix: Tensor | None,
    w_sem: float, w_pix: float, normalize: bool,
) -> list[tuple[Tensor, Tensor, float]]:
    """The halves that enter the distance, each ``(z [N, D], codebook [K, D], fp32 weight)``.

    Detached, fp32 (fp16/bf16 exactly upcast; fp64 rounded to fp32), contiguous, each half
    L2-normalised separately when ``normalize``; a half with weight 0 is dropped. Never empty:
    the public op rejects two zero weights.
    """
    halves = []
    for z, e, w in ((z_sem, codebook_sem, w_sem), (z_pix, codebook_pix, w_pix)):
        if z is None or w == 0:
            continue
        z = z.detach().to(torch.float32).contiguous()
        e = e.detach().to(torch.float32).contiguous()
        if normalize:
            z = F.normalize(z, dim=-1, eps=NORMALIZE_EPS)
            e = F.normalize(e, dim=-1, eps=NORMALIZE_EPS)
        halves.append((z, e, fp32_weight(w)))
    return halves


def fixed_order_sq_dist(z: Tensor, e: Tensor) -> Tensor:
    """``sum_d (z[..., d] - e[..., d])**2`` in fp32, left to right, one rounding per operation.

    ``z`` and ``e`` broadcast against each other (``[N, 1, D]`` with ``[1, K, D]`` gives all pairs,
    two ``[M, D]`` gathers give M pairs); every element sees the same operation sequence. D >= 1.
    """
    acc = None
    for d in range(z.shape[-1]):
        diff = z[..., d] - e[..., d]
        sq = diff * diff
        acc = sq if acc is None else acc.add_(sq)
    return acc


def weighted_sum(parts: list[tuple[Tensor, float]]) -> Tensor:
    """``w0 · a0 + w1 · a1`` in fp32 (a weight of exactly 1 skips its multiply: same bits)."""
    total = None
    for acc, w in parts:
        term = acc if w == 1.0 else acc * w
        total = term if total is None else total + term
    return total


def pack(dist: Tensor, index: Tensor) -> Tensor:
    """int64 keys ``bits(dist) << 32 | index`` (``dist`` fp32 >= 0, ``index`` < 2**31)."""
    return (dist.contiguous().view(torch.int32).to(torch.int64) << 32) | index


def unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``(index int64, dist fp32)`` from keys made by ``pack``."""
    index = keys & 0xFFFFFFFF
    dist = (keys >> 32).to(torch.int32).view(torch.float32)
    return index, dist


def nearest_reference(halves: list[tuple[Tensor, Tensor, float]], k: int, chunk: int = 0
                      ) -> tuple[Tensor, Tensor]:
    """All ``[N, K]`` distances, then a stable sort: ``(indices [N, k] int64, dist [N, k] fp32)``.

    Memory O(N·K); the oracle, not a production path (``chunk`` is unused).
    """
    dist = weighted_sum([(fixed_order_sq_dist(z[:, None, :], e[None, :, :]), w) for z, e, w in halves])
    values, indices = torch.sort(dist, dim=1, stable=True)  # equal distances keep index order
    return indices[:, :k].contiguous(), values[:, :k].contiguous()
