"""Linear + cross-entropy, the reference: plain torch, the oracle for every other backend.

    tokens  rows of ``hidden`` (N)        dim    hidden width (D)
    vocab   rows of ``weight`` (V)        V'     ``end - start``, the scored slice of the vocabulary

``logits = F.linear(hidden, weight[start:end], bias[start:end])`` in the inputs' dtype, upcast to
fp32 (fp64 for fp64 input), then ``F.cross_entropy`` with label smoothing, plus the z-loss, token
weights and the reduction (the semantics are spelled out in ``nxkernels.linear_cross_entropy``).
It materialises the whole ``[N, V']`` logits and lets autograd differentiate it: correct, simple,
and as heavy as the plain path is.

``KERNELS`` wraps it in the backend contract the custom ops call (``forward``/``backward``), with
the dense analytic gradient, so ``backend="reference"`` runs the oracle's arithmetic through the
same custom ops as the fast backends. ``check_values`` holds the data-dependent input
checks (they read tensor values, so the custom ops run them eagerly, also under ``torch.compile``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KERNELS",
    "check_values",
    "linear_cross_entropy_backward_reference",
    "linear_cross_entropy_forward_reference",
    "linear_cross_entropy_reference",
]


def check_values(
    targets: Tensor, token_weights: Tensor | None, ignore_index: int, start: int, end: int, vocab: int
) -> None:
    """Targets must lie in ``[start, end)`` or equal ``ignore_index``; token weights finite, >= 0."""
    if targets.numel():
        valid = targets != ignore_index
        bad = valid & ((targets < start) | (targets >= end))
        if bool(bad.any()):
            value = int(targets[bad][0])
            where = f"the vocab_range [{start}, {end})" if (start, end) != (0, vocab) else f"[0, {vocab})"
            raise ValueError(
                f"targets contains {value}, outside {where}; targets are absolute vocabulary ids, and "
                f"rows without a target must hold ignore_index ({ignore_index})"
            )
    if token_weights is not None and token_weights.numel():
        if not bool(torch.isfinite(token_weights).all()) or bool((token_weights < 0).any()):
            raise ValueError(
                "token_weights must be finite and >= 0; give a row weight 0 to drop its loss"
            )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def linear_cross_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    token_weights: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    vocab_range: tuple[int, int] | None = None,
) -> Tensor:
    """The loss of ``nxkernels.linear_cross_entropy`` through the full ``[N, V']`` logits."""
    start, end = (0, weight.shape[0]) if vocab_range is None else vocab_range
    check_values(targets, token_weights, ignore_index, start, end, weight.shape[0])
    compute = _compute_dtype(hidden.dtype)
    w = weight[start:end]
    b = None if bias is None else bias[start:end]
    logits = F.linear(hidden, w, b).to(compute)
    valid = targets != ignore_index
    relative = torch.where(valid, targets.long() - start, -100)
    per_row = F.cross_entropy(
        logits, relative, ignore_index=-100, label_smoothing=label_smoothing, reduction="none"
    )
    if z_loss:
        per_row = per_row + z_loss * torch.logsumexp(logits, -1).pow(2)
    scale = valid.to(compute)
    if token_weights is not None:
        scale = scale * token_weights.to(compute)
    weighted = torch.where(scale != 0, per_row * scale, 0.0)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    total = scale.sum()
    return weighted.sum() / torch.where(total > 0, total, 1.0)  # nothing carries loss: 0, grads 0


# ------------------------------------------------------------------------------------------------
# the backend contract (see nxkernels.linear_cross_entropy): plain tensors in, gradients out. A
# custom op's kernel runs below autograd, so the gradients are the dense analytic formula, computed
# the way autograd differentiates ``linear_cross_entropy_reference`` (dlogits rounded to the inputs'
# dtype before the two matmuls).


def _empties(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """What a backend returns in place of a gradient nobody asked for (the fake kernels agree)."""
    return hidden.new_empty(0), weight.new_empty(0), (weight if bias is None else bias).new_empty(0)


def _row_scale(targets: Tensor, token_weights: Tensor | None, ignore_index: int, dtype) -> Tensor:
    scale = (targets != ignore_index).to(dtype)
    return scale if token_weights is None else scale * token_weights.to(dtype)


def _dense_grads(
    hidden, weight, targets, bias, grad_scale, label_smoothing, z_loss, start, end,
    need_hidden, need_weight, need_bias,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``Σ_i grad_scale_i ℓ_i`` (the per-row loss of the module docstring)."""
    hidden_e, weight_e, bias_e = _empties(hidden, weight, bias)
    compute = _compute_dtype(hidden.dtype)
    w = weight[start:end]
    logits = F.linear(hidden, w, None if bias is None else bias[start:end]).to(compute)
    lse = torch.logsumexp(logits, -1, keepdim=True)
    c = grad_scale.to(compute)[:, None]
    dz = c * (1 + 2 * z_loss * lse) * torch.softmax(logits, -1) - c * (label_smoothing / (end - start))
    carries = grad_scale != 0
    relative = torch.where(carries, targets.long() - start, 0)[:, None]
    dz = dz.scatter_add(1, relative, torch.where(carries[:, None], -(1 - label_smoothing) * c, 0.0))
    dz = dz.to(hidden.dtype)
    gh = dz @ w if need_hidden else hidden_e
    gw = dz.t() @ hidden if need_weight else weight_e
    gb = dz.sum(0).to(bias.dtype) if need_bias and bias is not None else bias_e
    return gh, gw, gb


def linear_cross_entropy_forward_reference(
    hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss, reduction,
    start, end, need_hidden, need_weight, need_bias,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, grad_hidden, grad_weight[start:end], grad_bias[start:end])``; grads for mean/sum only."""
    loss = linear_cross_entropy_reference(
        hidden, weight, targets, bias=bias, token_weights=token_weights, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction, vocab_range=(start, end),
    )
    if reduction == "none" or not (need_hidden or need_weight or (need_bias and bias is not None)):
        return (loss, *_empties(hidden, weight, bias))
    scale = _row_scale(targets, token_weights, ignore_index, loss.dtype)
    if reduction == "mean":
        total = scale.sum()
        scale = scale / torch.where(total > 0, total, 1.0)
    return (loss, *_dense_grads(hidden, weight, targets, bias, scale, label_smoothing, z_loss, start, end,
                                need_hidden, need_weight, need_bias))


def linear_cross_entropy_backward_reference(
    grad_loss, hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss,
    start, end, need_hidden, need_weight, need_bias,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``sum(grad_loss * loss)`` for ``reduction="none"`` (``grad_loss`` [N])."""
    compute = _compute_dtype(hidden.dtype)
    scale = _row_scale(targets, token_weights, ignore_index, compute) * grad_loss.to(compute)
    return _dense_grads(hidden, weight, targets, bias, scale, label_smoothing, z_loss, start, end,
                        need_hidden, need_weight, need_bias)


KERNELS = {
    "forward": linear_cross_entropy_forward_reference,
    "backward": linear_cross_entropy_backward_reference,
}
