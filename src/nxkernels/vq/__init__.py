"""Nearest-codeword search for a single or a dual (semantic + pixel) codebook: ``vq_nearest``.

    idx, dist = vq_nearest(z, codebook)                                    # [*batch], [*batch]
    idx, dist = vq_nearest(z_sem, cb_sem, z_pix, cb_pix, w_pix=1.0, k=5)   # [*batch, 5] each

Shape legend:
    batch      any leading dimensions of the query rows (tokens), possibly none; N rows in all
    codes      K, codewords; the two codebooks of a dual search share one index space
    sem_dim    Ds, width of the semantic half (a single codebook is the semantic half alone)
    pix_dim    Dp, width of the pixel half
    topk       k, nearest codewords returned per row (sorted nearest first)

For each row n: ``argmin_i w_sem·‖z_sem[n] − cb_sem[i]‖² + w_pix·‖z_pix[n] − cb_pix[i]‖²`` (TokenFlow's
shared-index dual codebook; VAR's single codebook is ``z_pix = None``), with each half of rows and
codewords L2-normalised separately when ``normalize=True``.

Contract (every backend, bit for bit on the same device):

- **fp32 always.** fp16/bf16 inputs are upcast exactly; fp64 inputs are rounded to fp32 first.
  Distances are returned in fp32, indices in int64.
- **One distance definition** (``reference.py``): a fixed sequence of fp32 operations, channels
  summed left to right, no fused multiply-add. The ``torch`` backend screens with a matmul but
  recomputes every candidate with that formula, and the Triton kernel computes it directly with FMA
  contraction off, so *indices and distances are identical across backends*, for any chunking,
  block sizes or matmul precision setting — not merely within a tolerance.
- **Ties go to the lowest index**: ranking is by ``(distance, index)``. Duplicated codewords always
  resolve to the first copy; with ``k > 1`` the copies follow each other in index order.
- **Agreement with exact arithmetic** (what the definition approximates): the indices equal those
  of an infinitely precise search except for rows whose best and second-best true distances lie
  within the fp32 rounding of the formula, about ``(D + 6)·2⁻²⁴`` times the distance.
- **No gradients**: the result is an argmin; inputs may require grad, outputs never do.
  Straight-through estimation belongs to the tokenizer.
- Inputs must be finite and their squared distances must not overflow fp32; otherwise results are
  unspecified. Across devices (CPU vs CUDA) ``normalize=True`` may differ by the devices' norms.

Backends, in priority order (``nxkernels.dispatch``: ``backend=``, ``use_backend``, ``NX_KERNELS``):
``triton`` (CUDA; CPU tensors only when pinned, under ``TRITON_INTERPRET=1``; ``k <= 64``),
``torch`` (chunks of the codebook, memory O(N·chunk); CPU and CUDA), ``reference`` (all ``[N, K]``
distances, the oracle). ``chunk`` (codewords per step) is a setting of the torch backend; the other
backends declare it a reason not to run. The op is the ``torch.library`` custom op
``nxkernels::vq_nearest``: it traces under ``torch.compile(fullgraph=True)`` and passes ``opcheck``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, triton_reasons
from nxkernels.typecheck import typecheck
from nxkernels.vq.reference import prepare

__all__ = ["TRITON_MAX_K", "VQ", "VQResult", "vq_nearest"]

TRITON_MAX_K = 64  # the kernel keeps a row's best keys in registers
MAX_CODES = 2**31 - 1  # indices share an int64 with the distance bits: 32 bits each
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_EXACT = dict.fromkeys(_DTYPES, 0.0)  # the contract is bit-for-bit: zero tolerance


class VQResult(NamedTuple):
    """``indices`` int64 and ``distances`` fp32: ``[*batch]`` for k = 1, ``[*batch, k]`` otherwise."""

    indices: Tensor
    distances: Tensor


def _chunk_reason(chunk) -> list[str]:
    if chunk is None:
        return []
    return [f"chunk={chunk} sets the torch backend's step over the codebook; leave it None here"]


def _triton_check(z_sem, codebook_sem, z_pix=None, codebook_pix=None, *, k=1, chunk=None) -> list[str]:
    reasons = _chunk_reason(chunk)
    if k > TRITON_MAX_K:
        reasons.append(f"k={k} exceeds the kernel's {TRITON_MAX_K} best per row (use the torch backend)")
    return reasons


def _reference_check(z_sem, codebook_sem, z_pix=None, codebook_pix=None, *, k=1, chunk=None) -> list[str]:
    return _chunk_reason(chunk)


def _shape_class(z_sem, codebook_sem, z_pix=None, codebook_pix=None, *, k=1, chunk=None) -> tuple:
    return (k <= TRITON_MAX_K, chunk is None)


VQ = Op(
    "vq",
    backends=(
        Backend("triton", "nxkernels.vq.triton:nearest_triton", devices=("cuda", "cpu"), dtypes=_DTYPES,
                atol=_EXACT, rtol=_EXACT, available=triton_reasons, check=_triton_check,
                auto_devices=("cuda",),
                description="one program per block of rows scans the codebook; top-k in registers"),
        Backend("torch", "nxkernels.vq.chunked:nearest_chunked", devices=("cpu", "cuda"), dtypes=_DTYPES,
                atol=_EXACT, rtol=_EXACT,
                description="codebook chunks: matmul screen + exact rescoring, memory O(N·chunk)"),
        Backend("reference", "nxkernels.vq.reference:nearest_reference", devices=("cpu", "cuda"),
                dtypes=_DTYPES, atol=_EXACT, rtol=_EXACT, check=_reference_check,
                description="all [N, K] distances and a stable sort (the oracle)"),
    ),
    shape_class=_shape_class,
)


@torch.library.custom_op("nxkernels::vq_nearest", mutates_args=())
def _vq_nearest_op(
    z_sem: Tensor, codebook_sem: Tensor, z_pix: Tensor | None, codebook_pix: Tensor | None,
    w_sem: float, w_pix: float, normalize: bool, k: int, chunk: int, backend: str,
) -> tuple[Tensor, Tensor]:
    halves = prepare(z_sem, codebook_sem, z_pix, codebook_pix, w_sem, w_pix, normalize)
    return VQ.backend(backend).load()(halves, k, chunk)


@_vq_nearest_op.register_fake
def _(z_sem, codebook_sem, z_pix, codebook_pix, w_sem, w_pix, normalize, k, chunk, backend):
    n = z_sem.shape[0]
    return z_sem.new_empty((n, k), dtype=torch.int64), z_sem.new_empty((n, k), dtype=torch.float32)


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}; convert it with .float()")


def _check_weight(name: str, w) -> None:
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(w).__name__} ({w!r})")
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {w!r}")


def _validate(z_sem, codebook_sem, z_pix, codebook_pix, w_sem, w_pix, normalize, k, chunk) -> None:
    _check_tensor("z_sem", z_sem)
    _check_tensor("codebook_sem", codebook_sem)
    if (z_pix is None) != (codebook_pix is None):
        given, missing = ("z_pix", "codebook_pix") if codebook_pix is None else ("codebook_pix", "z_pix")
        raise ValueError(f"{given} is given but {missing} is None; pass both pixel halves or neither")
    if z_sem.ndim < 1:
        raise ValueError("z_sem must have at least one dimension ([*batch, sem_dim]), got a scalar")
    if codebook_sem.ndim != 2 or codebook_sem.shape[0] < 1 or codebook_sem.shape[1] < 1:
        raise ValueError(f"codebook_sem must be 2-D [codes, sem_dim] with codes, sem_dim >= 1, "
                         f"got shape {tuple(codebook_sem.shape)}")
    if codebook_sem.shape[1] != z_sem.shape[-1]:
        raise ValueError(f"z_sem has {z_sem.shape[-1]} channels but codebook_sem has "
                         f"{codebook_sem.shape[1]}; the last dimensions must match")
    n_codes = codebook_sem.shape[0]
    if n_codes > MAX_CODES:
        raise ValueError(f"codebook_sem has {n_codes} codewords; at most {MAX_CODES} are supported")
    tensors = {"z_sem": z_sem, "codebook_sem": codebook_sem}
    if z_pix is not None:
        _check_tensor("z_pix", z_pix)
        _check_tensor("codebook_pix", codebook_pix)
        if codebook_pix.ndim != 2 or codebook_pix.shape[1] < 1:
            raise ValueError(f"codebook_pix must be 2-D [codes, pix_dim] with pix_dim >= 1, got shape "
                             f"{tuple(codebook_pix.shape)}")
        if codebook_pix.shape[0] != n_codes:
            raise ValueError(f"codebook_pix has {codebook_pix.shape[0]} codewords but codebook_sem has "
                             f"{n_codes}; the two codebooks share one index space, so they need the "
                             "same number of rows")
        if z_pix.ndim < 1 or tuple(z_pix.shape[:-1]) != tuple(z_sem.shape[:-1]):
            raise ValueError(f"z_pix has shape {tuple(z_pix.shape)} but z_sem has {tuple(z_sem.shape)}; "
                             "they must agree on every dimension but the last (one row per token)")
        if codebook_pix.shape[1] != z_pix.shape[-1]:
            raise ValueError(f"z_pix has {z_pix.shape[-1]} channels but codebook_pix has "
                             f"{codebook_pix.shape[1]}; the last dimensions must match")
        tensors |= {"z_pix": z_pix, "codebook_pix": codebook_pix}
    for name, t in tensors.items():
        if t.device != z_sem.device:
            raise ValueError(f"{name} is on {t.device} but z_sem is on {z_sem.device}; "
                             f"move it with .to(z_sem.device)")
    _check_weight("w_sem", w_sem)
    if w_pix is not None:
        _check_weight("w_pix", w_pix)
        if z_pix is None and w_pix != 0:
            raise ValueError(f"w_pix={w_pix!r} is given without a pixel half; pass z_pix and "
                             "codebook_pix, or leave w_pix unset")
    if w_sem == 0 and (z_pix is None or w_pix == 0):
        raise ValueError("w_sem and w_pix are both 0 (every codeword would tie); give one a weight > 0")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__} ({normalize!r})")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__} ({k!r})")
    if not 1 <= k <= n_codes:
        raise ValueError(f"k={k} must be between 1 and the number of codewords ({n_codes})")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or an int >= 1 (codewords per step), got {chunk!r}")


@typecheck
def vq_nearest(
    z_sem: Float[Tensor, "*batch sem_dim"],
    codebook_sem: Float[Tensor, "codes sem_dim"],
    z_pix: Float[Tensor, "*batch pix_dim"] | None = None,
    codebook_pix: Float[Tensor, "codes pix_dim"] | None = None,
    *,
    w_sem: float | int = 1.0,
    w_pix: float | int | None = None,
    normalize: bool = False,
    k: int = 1,
    chunk: int | None = None,
    backend: str | None = None,
) -> VQResult:
    """The ``k`` nearest codewords of every row: ``VQResult(indices, distances)``, nearest first.

    ``w_pix`` defaults to 1.0 with a pixel half; without one it must stay unset (or 0). A weight of
    0 drops its half (``w_pix=0`` gives exactly the single-codebook result). ``normalize`` L2-normalises
    each half of rows and codewords separately (TokenFlow's ``codebook_l2_norm``). ``chunk`` is the
    torch backend's codewords per step (default: about 4M distances per step). ``backend`` pins a
    backend. Outputs carry no gradient. See the module docstring for the tie and rounding contract.
    """
    _validate(z_sem, codebook_sem, z_pix, codebook_pix, w_sem, w_pix, normalize, k, chunk)
    if w_pix is None:
        w_pix = 1.0 if z_pix is not None else 0.0
    batch = z_sem.shape[:-1]
    zs = z_sem.detach().reshape(-1, z_sem.shape[-1])
    zp = None if z_pix is None else z_pix.detach().reshape(-1, z_pix.shape[-1])
    cp = None if codebook_pix is None else codebook_pix.detach()
    chosen = VQ.select(zs, codebook_sem, zp, codebook_pix, k=k, chunk=chunk, backend=backend)
    indices, distances = torch.ops.nxkernels.vq_nearest(
        zs, codebook_sem.detach(), zp, cp, float(w_sem), float(w_pix), normalize, k, chunk or 0,
        chosen.name,
    )
    shape = (*batch, k) if k > 1 else batch
    return VQResult(indices.reshape(shape), distances.reshape(shape))

