"""Linear + cross-entropy in row chunks, gradients computed during the forward: the ``torch`` backend.

    tokens  rows of ``hidden`` (N)        dim    hidden width (D)
    vocab   rows of ``weight`` (V)        V'     ``end - start``, the scored slice of the vocabulary
    M       rows that carry loss          m      rows in one chunk

The driver (``forward``/``backward``, shared with the Triton backend) works like this:

1. Select the rows that carry loss: target != ignore_index and a non-zero row scale (token weight;
   in ``backward`` also a non-zero upstream gradient). The others never reach a matmul. This costs
   a host sync (``nonzero``; the input value checks cost two more). When every row carries loss,
   chunks are plain slices (no gather).
2. Walk the M selected rows in chunks of m rows, sized so the chunk's logits and the softmax
   buffers stay within ``LOGITS_CHUNK_BYTES`` (256 MiB: 384 rows at V' = 168464 in fp32):
   ``z = h_c @ W[start:end]ᵀ (+ b)`` in the inputs' dtype, then a ``softmax_grad`` function turns
   ``z`` into the per-row loss and, when gradients are wanted, ``dL/dz`` scaled per row. The
   ``torch`` backend does that in fp32 (fp64 for fp64 input) with in-place torch ops; the
   ``triton`` backend passes its kernel instead (``nxkernels.linear_cross_entropy.triton``).
3. Gradients, per chunk: ``grad_hidden[rows] = dz @ W_s`` (inputs' dtype), ``grad_W_s += dzᵀ @ h_c``
   and ``grad_b_s += Σ dz`` accumulated in fp32 (fp64 for fp64) whatever the inputs' dtype, cast
   to the weight's dtype once at the end. Only the ``[V', D]`` slice is built; the op pads it.

With row scale ``c_i`` (``w_i / Σw`` for "mean", ``w_i`` for "sum", ``grad_output_i * w_i`` in the
backward of "none") the logit gradient of row i is

    dz_ij = c_i * ((1 + 2 s lse_i) p_ij - ε / V' - (1 - ε) [j = y_i])

Reductions "mean" and "sum" compute the gradients in the forward (the op's backward only scales
them by the scalar upstream gradient); "none" computes losses only in the forward and recomputes
the chunks in ``backward`` with ``c_i = grad_output_i * w_i`` (saving per-row gradient pieces
cannot work: ``grad_W`` mixes all rows with their upstream gradients).

Peak memory beyond the inputs: ``grad_hidden`` [N, D] + the fp32 ``grad_W`` slice [V', D] + the
larger of one chunk's buffers (<= ``LOGITS_CHUNK_BYTES``) and, for half weights, ``grad_W``'s cast
after the last chunk; never an [N, V'] tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from nxkernels.linear_cross_entropy.reference import check_values

__all__ = [
    "KERNELS",
    "LOGITS_CHUNK_BYTES",
    "backward",
    "chunk_rows",
    "forward",
    "rows_per_chunk",
    "torch_softmax_grad",
]

LOGITS_CHUNK_BYTES = 256 * 2**20

# softmax_grad(logits [m, V'] (may be overwritten), targets [m] (int64, relative to start),
#              grad_scale [m] or None, label_smoothing, z_loss)
#   -> (loss [m] in the compute dtype, unweighted; dlogits [m, V'] (compute or logits dtype) or None)
SoftmaxGrad = Callable[[Tensor, Tensor, Tensor | None, float, float], tuple[Tensor, Tensor | None]]

_rows_override: list[int] = []


@contextlib.contextmanager
def chunk_rows(rows: int) -> Iterator[None]:
    """Within the block every chunked call uses chunks of ``rows`` rows (tests: many small chunks)."""
    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f"chunk_rows takes a row count >= 1, got {rows!r}")
    _rows_override.append(rows)
    try:
        yield
    finally:
        _rows_override.pop()


def rows_per_chunk(rows: int, width: int, bytes_per_element: int, budget: int = LOGITS_CHUNK_BYTES) -> int:
    """Rows per chunk so that ``rows * width * bytes_per_element <= budget`` (a multiple of 32 when
    that is at least 32; at least 1), or the override of ``chunk_rows``."""
    if _rows_override:
        return _rows_override[-1]
    m = max(1, budget // max(1, width * bytes_per_element))
    if m >= 32:
        m -= m % 32
    return max(1, min(m, rows))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def torch_softmax_grad(
    logits: Tensor, targets: Tensor, grad_scale: Tensor | None, label_smoothing: float, z_loss: float
) -> tuple[Tensor, Tensor | None]:
    """Per-row loss and scaled ``dL/dlogits`` in the compute dtype, with in-place ops on one buffer."""
    compute = _compute_dtype(logits.dtype)
    z = logits if logits.dtype == compute else logits.to(compute)
    width = z.shape[1]
    z_target = z.gather(1, targets[:, None])
    z_mean = z.mean(1, keepdim=True) if label_smoothing else None
    top = z.amax(1, keepdim=True)
    z.sub_(top).exp_()  # z holds exp(z - max) from here on
    total = z.sum(1, keepdim=True)
    lse = top + total.log()
    loss = (1.0 - label_smoothing) * (lse - z_target)
    if label_smoothing:
        loss = loss + label_smoothing * (lse - z_mean)
    if z_loss:
        loss = loss + z_loss * lse.square()
    if grad_scale is None:
        return loss.squeeze(1), None
    c = grad_scale.to(compute)[:, None]
    z.mul_(c * (1.0 + 2.0 * z_loss * lse) / total)
    if label_smoothing:
        z.sub_(c * (label_smoothing / width))
    z.scatter_add_(1, targets[:, None], c * -(1.0 - label_smoothing))
    return loss.squeeze(1), z


_CUDA_OUT_DTYPE_ADDMM: list[bool] = []  # whether addmm(out_dtype=) worked here (filled on first use)


def _accumulate(acc: Tensor, dz: Tensor, h: Tensor, first: bool) -> None:
    """``acc += dzᵀ @ h`` (``acc = dzᵀ @ h`` when ``first``: ``acc`` may hold garbage) with ``acc``
    in the compute dtype (fp32/fp64) whatever ``dz``'s dtype."""
    beta = 0.0 if first else 1.0  # beta 0 ignores acc's contents (NaN included)
    if dz.dtype == acc.dtype:
        torch.addmm(acc, dz.t(), h.to(acc.dtype), beta=beta, out=acc)
        return
    if acc.is_cuda and _CUDA_OUT_DTYPE_ADDMM != [False]:
        try:  # half operands, fp32 accumulator: one cuBLAS call, no fp32 copy of dz
            torch.addmm(acc, dz.t(), h, beta=beta, out_dtype=acc.dtype, out=acc)
            if not _CUDA_OUT_DTYPE_ADDMM:
                _CUDA_OUT_DTYPE_ADDMM.append(True)
            return
        except (RuntimeError, NotImplementedError, TypeError):
            _CUDA_OUT_DTYPE_ADDMM[:] = [False]
    torch.addmm(acc, dz.t().to(acc.dtype), h.to(acc.dtype), beta=beta, out=acc)


def _run(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, start: int, end: int,
    select: Tensor, grad_scale: Tensor | None, label_smoothing: float, z_loss: float,
    need_hidden: bool, need_weight: bool, need_bias: bool, softmax_grad: SoftmaxGrad,
    bytes_per_element: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unweighted per-row loss [N] (0 off ``select``) and the gradients of ``Σ_i grad_scale_i ℓ_i``."""
    n, dim = hidden.shape
    compute = _compute_dtype(hidden.dtype)
    w_s = weight[start:end]
    b_s = None if bias is None else bias[start:end]
    width = end - start
    grads = grad_scale is not None and (need_hidden or need_weight or need_bias)
    need_bias = need_bias and bias is not None
    rows = select.nonzero().squeeze(1)  # a host sync: the rows that carry loss
    total_rows = rows.numel()
    every_row = total_rows == n
    loss = hidden.new_zeros(n, dtype=compute)
    gh = hidden.new_empty(0)
    if grads and need_hidden:  # every row gets written, or the skipped ones must read 0
        gh = torch.empty_like(hidden) if every_row else torch.zeros_like(hidden)
    # grad_W is written by the first chunk's matmul and accumulated into by the others (no zero fill)
    gw = hidden.new_empty(width, dim, dtype=compute) if grads and need_weight else None
    gb = hidden.new_zeros(width, dtype=compute) if grads and need_bias else None
    relative = targets.long() - start
    step = rows_per_chunk(total_rows, width, bytes_per_element)
    for first in range(0, total_rows, step):
        if every_row:
            part = slice(first, first + step)
            h_c, t_c = hidden[part], relative[part]
            c_c = grad_scale[part] if grads else None
        else:
            part = rows[first : first + step]
            h_c, t_c = hidden.index_select(0, part), relative.index_select(0, part)
            c_c = grad_scale.index_select(0, part) if grads else None
        z = F.linear(h_c, w_s, b_s)  # as the reference computes it (and fast for CPU bf16)
        loss_c, dz = softmax_grad(z, t_c, c_c, label_smoothing, z_loss)
        del z
        if every_row:
            loss[part] = loss_c
        else:
            loss.index_copy_(0, part, loss_c)
        if not grads:
            continue
        if need_hidden:
            dz_w = dz if dz.dtype == w_s.dtype else dz.to(w_s.dtype)
            if every_row:  # rows [first, first + m) of a contiguous tensor: write in place
                torch.mm(dz_w, w_s, out=gh[part])
            else:
                gh.index_copy_(0, part, torch.mm(dz_w, w_s))
            del dz_w
        if gw is not None:
            _accumulate(gw, dz, h_c, first=first == 0)
        if gb is not None:
            gb.add_(dz.sum(0, dtype=compute))
        del dz
    if gw is not None and total_rows == 0:
        gw.zero_()
    empty_w = weight.new_empty(0)
    gw_out = empty_w if gw is None else gw.to(weight.dtype)
    del gw
    gb_out = (weight if bias is None else bias).new_empty(0) if gb is None else gb.to(bias.dtype)
    return loss, gh, gw_out, gb_out


def _row_scale(targets: Tensor, token_weights: Tensor | None, ignore_index: int, dtype) -> Tensor:
    carries = targets != ignore_index
    if token_weights is None:
        return carries.to(dtype)
    return torch.where(carries, token_weights.to(dtype), 0.0)


def _bytes_per_element(dtype: torch.dtype) -> int:
    compute = _compute_dtype(dtype)
    # fp32/fp64: the logits buffer is overwritten in place; half: logits, their fp32 copy, the
    # half dlogits for grad_hidden
    return compute.itemsize if compute == dtype else compute.itemsize + 2 * dtype.itemsize


def forward(
    hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss, reduction,
    start, end, need_hidden, need_weight, need_bias, *,
    softmax_grad: SoftmaxGrad = torch_softmax_grad, bytes_per_element: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, grad_hidden, grad_weight[start:end], grad_bias[start:end])``.

    For "mean"/"sum" the gradients are those of the returned loss (an upstream gradient of 1), or
    empty when not asked for; for "none" they are always empty (see ``backward``).
    """
    check_values(targets, token_weights, ignore_index, start, end, weight.shape[0])
    compute = _compute_dtype(hidden.dtype)
    scale = _row_scale(targets, token_weights, ignore_index, compute)
    total = scale.sum()
    denominator = torch.where(total > 0, total, 1.0) if reduction == "mean" else None
    grad_scale = None
    if reduction != "none" and (need_hidden or need_weight or (need_bias and bias is not None)):
        grad_scale = scale / denominator if reduction == "mean" else scale
    per_row, gh, gw, gb = _run(
        hidden, weight, bias, targets, start, end, scale != 0, grad_scale, label_smoothing, z_loss,
        need_hidden, need_weight, need_bias, softmax_grad,
        bytes_per_element or _bytes_per_element(hidden.dtype),
    )
    weighted = per_row * scale
    if reduction == "none":
        loss = weighted
    elif reduction == "sum":
        loss = weighted.sum()
    else:
        loss = weighted.sum() / denominator
    return loss, gh, gw, gb


def backward(
    grad_loss, hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss,
    start, end, need_hidden, need_weight, need_bias, *,
    softmax_grad: SoftmaxGrad = torch_softmax_grad, bytes_per_element: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``Σ_i grad_loss_i * loss_i`` for ``reduction="none"``, recomputing the chunks;
    rows whose upstream gradient is 0 are skipped like ignored rows."""
    compute = _compute_dtype(hidden.dtype)
    grad_scale = _row_scale(targets, token_weights, ignore_index, compute) * grad_loss.to(compute)
    _, gh, gw, gb = _run(
        hidden, weight, bias, targets, start, end, grad_scale != 0, grad_scale, label_smoothing,
        z_loss, need_hidden, need_weight, need_bias, softmax_grad,
        bytes_per_element or _bytes_per_element(hidden.dtype),
    )
    return gh, gw, gb


KERNELS = {"forward": forward, "backward": backward}
