"""Nearest-codeword search in chunks of the codebook: memory O(N·chunk), the same bits as the reference.

Shape legend: tokens N, codes K, chunk C (codewords per step), topk k, dim D = Ds + Dp (see
``reference.py`` for the distance definition).

Per chunk of C codewords:

1. **Screen** with one matmul. With ``Z = [√w_sem·z_sem, √w_pix·z_pix]`` and ``E`` likewise,
   ``approx = ‖E_i‖² − 2 Z·E_i`` (``‖E_i‖²`` folded into the matmul as an extra channel) estimates
   ``dist − ‖Z‖²``. Its error against the defined fp32 distance is at most ``delta`` per row: a
   Higham-style bound ``4 (D + 17) u (‖Z‖ + max‖E‖)² + 8 u_mm (‖Z‖ + max‖E‖) max‖E‖`` with u = 2⁻²⁴
   and u_mm the matmul's input rounding (2⁻²⁴, or 2⁻⁸ when torch may run fp32 matmuls in TF32/bf16:
   ``fp32_precision``, ``allow_tf32``, ``set_float32_matmul_precision``).
2. **Candidates**: codeword i can enter a row's top-k only if ``approx_i ≤ R_k − ‖Z‖² + delta``, with
   R_k the row's current k-th best exact distance; in the first chunk (no R_k yet) the condition is
   ``approx_i ≤ a_k + 2 delta``, a_k the chunk's k-th smallest ``approx``. Typically about one pair
   per row in the first chunk, and a fraction 1/j of rows in chunk j.
3. **Rescore** the candidates with the reference's fixed-order formula (bit-exact) and merge them
   into the running top-k as int64 keys ``bits(dist) << 32 | index`` (ties: lowest index).

The screen only decides *which* pairs get the exact formula, so the result is the reference's, bit
for bit, whatever the chunking. A degenerate codebook (many identical codewords, or rows far from
the origin compared with their distances) makes more candidates: slower, never wrong. Each step
holds a few ``[N, C]`` buffers and at most ``N·C`` candidate pairs, so memory is O(N·C + (N + K)·D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nxkernels.vq.reference import SENTINEL, fixed_order_sq_dist, pack, unpack, weighted_sum

__all__ = ["default_chunk", "matmul_unit_roundoff", "nearest_chunked", "screen_margin", "screen_setup"]

U32 = 2.0**-24  # fp32 unit roundoff
U_REDUCED = 2.0**-8  # bf16 inputs (TF32's 2**-11 is inside it)
CHUNK_ELEMENTS = 1 << 22  # default chunk: about N·C = 4M elements per [N, C] buffer (16 MiB fp32)


def default_chunk(n_rows: int, n_codes: int) -> int:
    """Codewords per step: ``CHUNK_ELEMENTS // N`` within [128, 8192], at most K."""
    return max(1, min(n_codes, max(128, min(8192, CHUNK_ELEMENTS // max(n_rows, 1)))))


def matmul_unit_roundoff(device_type: str) -> float:
    """Input rounding of an fp32 matmul on ``device_type`` under torch's current settings.

    2⁻²⁴ for IEEE fp32; 2⁻⁸ when TF32 or bf16 may be used (``torch.backends.*.matmul.fp32_precision``,
    ``allow_tf32``, ``set_float32_matmul_precision``), or when the settings cannot be read.
    """
    try:
        leaf = torch.backends.cuda.matmul if device_type == "cuda" else torch.backends.mkldnn.matmul
        reduced = leaf.fp32_precision not in ("none", "ieee")
        if device_type == "cuda":
            reduced = reduced or bool(torch.backends.cuda.matmul.allow_tf32)
        reduced = reduced or torch.get_float32_matmul_precision() != "highest"
    except (AttributeError, RuntimeError):  # mixed legacy/new settings refuse to be read
        reduced = True
    return U_REDUCED if reduced else U32


def screen_margin(z_norm: Tensor, e_norm_max: Tensor, dim: int, u_mm: float) -> Tensor:
    """Per row, a bound on |approx − (dist − ‖Z‖²)| (see the module docstring), generous by 2-4×.

    It covers the rounding of the weighted operands, of the norms, of the matmul over ``dim``
    channels in any summation order (its inputs rounded to ``u_mm``), of the exact formula itself and
    of the thresholds; the absolute term covers underflow.
    """
    s = (z_norm + e_norm_max).square()
    return (4 * (dim + 16) * U32 * s + 8 * u_mm * (z_norm + e_norm_max) * e_norm_max
            + (4 * dim + 64) * 2.0**-140)


def _screen_operands(halves: list[tuple[Tensor, Tensor, float]]) -> tuple[Tensor, Tensor]:
    zs, es = [], []
    for z, e, w in halves:
        if w == 1.0:
            zs.append(z)
            es.append(e)
        else:
            root = w**0.5
            zs.append(z * root)
            es.append(e * root)
    if len(zs) == 1:
        return zs[0], es[0]
    return torch.cat(zs, 1), torch.cat(es, 1)


def screen_setup(halves: list[tuple[Tensor, Tensor, float]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Z⁺ [N, D+1], E⁺ [K, D+1], ‖Z‖² [N], delta [N])`` for the screening matmul.

    ``‖E_i‖²`` rides along as an extra channel: ``s = Z⁺·E⁺_i = Z·E_i − ‖E_i‖²/2``, so
    ``approx = −2 s ≈ dist_i − ‖Z‖²`` comes out of one plain matmul (larger s is nearer).
    """
    zc, ec = _screen_operands(halves)
    zz = (zc * zc).sum(1)
    ee = (ec * ec).sum(1)
    u_mm = matmul_unit_roundoff(zc.device.type)
    delta = screen_margin(zz.sqrt(), ee.max().sqrt(), zc.shape[1] + 1, u_mm)
    zc = torch.cat([zc, zc.new_ones(zc.shape[0], 1)], 1)
    ec = torch.cat([ec, ee[:, None] * -0.5], 1)
    return zc, ec, zz, delta


def _rescore(halves, rows: Tensor, cols: Tensor, budget: int) -> Tensor:
    """Exact distances of the pairs (rows[j], cols[j]), ``budget`` gathered elements at a time."""
    dim = sum(z.shape[1] for z, _, _ in halves)
    step = max(1024, budget // max(dim, 1))
    out = []
    for s in range(0, rows.numel(), step):
        r, c = rows[s : s + step], cols[s : s + step]
        out.append(weighted_sum([
            (fixed_order_sq_dist(z.index_select(0, r), e.index_select(0, c)), w) for z, e, w in halves
        ]))
    return out[0] if len(out) == 1 else torch.cat(out)


def _nonzero(mask: Tensor, sparse: bool) -> tuple[Tensor, Tensor]:
    """``mask.nonzero(as_tuple=True)``, row-major; when ``sparse`` (most rows empty: every chunk after
    the first) only the rows with a candidate are scanned."""
    if not sparse:
        return mask.nonzero(as_tuple=True)
    (hit,) = mask.any(1).nonzero(as_tuple=True)
    if hit.numel() * 2 > mask.shape[0]:
        return mask.nonzero(as_tuple=True)
    sub, cols = mask.index_select(0, hit).nonzero(as_tuple=True)
    return hit.index_select(0, sub), cols


def _merge(best: Tensor, rows: Tensor, keys: Tensor) -> Tensor:
    """Running top-k keys ``best [N, k]`` (sorted) merged with candidate keys of rows ``rows``
    (sorted ascending, as ``nonzero`` returns them)."""
    k = best.shape[1]
    if k == 1:
        return best.view(-1).scatter_reduce(0, rows, keys, "amin", include_self=True).view(-1, 1)
    urows, slot, counts = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
    width = int(counts.max())
    pos = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[slot]
    # index_select/index_copy rather than advanced indexing: the latter is far slower on CPU
    buf = torch.full((urows.numel(), k + width), SENTINEL, dtype=torch.int64, device=best.device)
    buf[:, :k] = best.index_select(0, urows)
    buf.view(-1).index_copy_(0, slot * (k + width) + k + pos, keys)
    return best.index_copy(0, urows, buf.topk(k, dim=1, largest=False, sorted=True).values)


def nearest_chunked(halves: list[tuple[Tensor, Tensor, float]], k: int, chunk: int = 0
                    ) -> tuple[Tensor, Tensor]:
    """``(indices [N, k] int64, dist [N, k] fp32)``, nearest first, ties to the lowest index.

    ``halves`` come from ``reference.prepare``; ``chunk`` codewords per step (0: ``default_chunk``).
    """
    z0, e0, _ = halves[0]
    n, n_codes, device = z0.shape[0], e0.shape[0], z0.device
    best = torch.full((n, k), SENTINEL, dtype=torch.int64, device=device)
    if n == 0:
        return unpack(best)
    chunk = chunk or default_chunk(n, n_codes)
    zc, ec, zz, delta = screen_setup(halves)
    # s below floor cannot enter a row's top-k: approx > R_k − ‖Z‖² + delta (−inf: fewer than k yet)
    floor = torch.full((n,), float("-inf"), device=device)
    filled = False  # every row holds k exact results
    for c0 in range(0, n_codes, chunk):
        c1 = min(c0 + chunk, n_codes)
        s = zc @ ec[c0:c1].T
        cut = floor
        if not filled and c1 - c0 >= k:  # the chunk's own k-th best bounds its candidates
            kth = s.amax(1) if k == 1 else s.topk(k, 1, sorted=False).values.amin(1)
            cut = torch.maximum(floor, kth - delta)
            filled = True
        rows, cols = _nonzero(s >= cut[:, None], sparse=cut is floor)
        del s
        if rows.numel() == 0:
            continue
        cols = cols + c0
        keys = pack(_rescore(halves, rows, cols, n * chunk), cols)
        best = _merge(best, rows, keys)
        floor = (zz - unpack(best[:, -1])[1] - delta) * 0.5
    return unpack(best)
