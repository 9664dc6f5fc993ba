"""Fused linear + cross-entropy that never materialises the ``[N, V]`` logits.

    tokens  rows of ``hidden`` (N)              dim    hidden width (D)
    vocab   rows of the head ``weight`` (V)     V'     ``end - start``, the scored vocabulary slice

    loss = linear_cross_entropy(hidden, weight, targets)          # [N, D], [V, D], [N] -> []
    loss = linear_cross_entropy(hidden, weight, targets, token_weights=w, label_smoothing=0.1,
                                z_loss=1e-4, vocab_range=(152064, 168448), reduction="sum")

Semantics. ``(start, end) = vocab_range`` (default ``(0, V)``); the logits of row i are
``z_i = hidden_i @ weight[start:end]ᵀ (+ bias[start:end])``, computed in the inputs' dtype and then
handled in fp32 (fp64 for fp64 input). ``targets`` are absolute vocabulary ids in ``[start, end)``,
or ``ignore_index`` for rows without a target. With ``lse_i = logsumexp_j z_ij``, ε the label
smoothing and s the z-loss scale, the loss of a row is

    ℓ_i = (1-ε) (lse_i - z_{i,y_i}) + ε (lse_i - mean_j z_ij) + s lse_i²

(the first two terms are exactly ``F.cross_entropy(z, y, label_smoothing=ε)``). Row i carries
loss when ``targets[i] != ignore_index``, with weight ``w_i = token_weights[i]`` (1 without
``token_weights``; finite, >= 0; a row of weight 0 carries none). Reductions:

- ``"mean"``: ``Σ w_i ℓ_i / Σ w_i`` over the rows that carry loss. When no row does (every target
  ignored, or every weight 0) the loss is 0 with zero gradients, never NaN.
- ``"sum"``: ``Σ w_i ℓ_i``.
- ``"none"``: ``[N]`` of ``w_i ℓ_i``, 0 for rows that carry no loss.

The loss is fp32 (fp64 for fp64 inputs) whatever the inputs' dtype. Gradients flow to ``hidden``,
``weight`` and ``bias``; rows of ``weight``/``bias`` outside the slice get zero gradient.
``targets`` and ``token_weights`` are constants (no gradient). Rows that carry no loss never reach a
matmul. The gradient is not differentiable again (no double backward).

Backends (``nxkernels.dispatch``: ``backend=``, ``use_backend``, ``NX_KERNELS``), in priority order:

- ``triton``: the chunked driver with a Triton online-softmax kernel that writes ``dL/dlogits``
  over the logits chunk in place (``triton.py``); auto on CUDA, on CPU only when pinned under
  ``TRITON_INTERPRET=1``.
- ``torch``: the chunked PyTorch path (``chunked.py``), the CPU production path: rows in chunks of
  at most 256 MiB of logits buffers, gradients computed during the forward, fp32 ``grad_weight``
  accumulation.
- ``reference``: plain ``F.linear`` + fp32 ``F.cross_entropy`` (``reference.py``), the oracle,
  with the dense analytic gradient inside the custom op; it materialises ``[N, V']``.

For "mean"/"sum" the forward computes the gradients and saves only them; the backward scales them
by the upstream gradient (nothing to do when that is exactly 1). For "none" the forward computes
losses only and the backward recomputes the chunks, each row scaled by its upstream gradient
(rows whose upstream gradient is 0 skip the matmuls too). The ops are the
``torch.library`` custom ops ``nxkernels::linear_cross_entropy_fwd`` / ``_bwd`` (fake kernels and
autograd registered): they trace under ``torch.compile(fullgraph=True)`` and pass ``opcheck``.

Tolerances (``Backend.atol``/``rtol``, read by the tests) apply to the loss, and to each gradient
after dividing it and the reference's gradient by a scale: the larger of the reference's largest
magnitude and the size of one row's term (a gradient that nearly cancels, as at the label-smoothing
optimum, is judged against the size of what cancelled).

Inputs are made contiguous (a transposed or strided ``weight`` is copied once per call).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from nxkernels.dispatch import Backend, Op, triton_reasons
from nxkernels.linear_cross_entropy.reference import linear_cross_entropy_reference
from nxkernels.typecheck import typecheck

__all__ = ["LINEAR_CROSS_ENTROPY", "REDUCTIONS", "linear_cross_entropy", "linear_cross_entropy_reference"]

REDUCTIONS = ("mean", "sum", "none")
_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_ALL = (*_HALF_AND_FLOAT, torch.float64)
# Against the autograd reference, over the hypothesis cases (largest differences seen, 100-400
# draws per backend): fp32 loss 8e-7 relative, gradients 5e-7 of their scale; fp16 gradients 8e-4;
# bf16 gradients 1.1e-2 (dlogits rounded to bf16 before the matmuls, as the reference does too).
_ATOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}
_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def _shape_class(hidden, weight, targets, **kwargs) -> tuple:
    return ()


LINEAR_CROSS_ENTROPY = Op(
    "linear_cross_entropy",
    backends=(
        Backend(
            "triton",
            "nxkernels.linear_cross_entropy.triton:KERNELS",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            atol=_ATOL,
            rtol=_RTOL,
            available=triton_reasons,
            auto_devices=("cuda",),
            description="row chunks; torch matmuls; Triton online softmax writes dL/dlogits in place",
        ),
        Backend(
            "torch",
            "nxkernels.linear_cross_entropy.chunked:KERNELS",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=_ALL,
            atol=_ATOL,
            rtol=_RTOL,
            description="row chunks, gradients in the forward, fp32 softmax and grad_weight (CPU path)",
        ),
        Backend(
            "reference",
            "nxkernels.linear_cross_entropy.reference:KERNELS",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=_ALL,
            atol=_ATOL,  # the loss is the oracle's own; gradients: the dense analytic formula
            rtol=_RTOL,
            description="F.linear + fp32 F.cross_entropy, dense analytic gradients (the oracle; [N, V'])",
        ),
    ),
    shape_class=_shape_class,
)


def _kernels(backend: str) -> dict:
    return LINEAR_CROSS_ENTROPY.backend(backend).load()


@torch.library.custom_op("nxkernels::linear_cross_entropy_fwd", mutates_args=())
def _lce_fwd(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, token_weights: Tensor | None,
    ignore_index: int, label_smoothing: float, z_loss: float, reduction: str, start: int, end: int,
    need_hidden: bool, need_weight: bool, need_bias: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernels(backend)["forward"](
        hidden.contiguous(), weight.contiguous(), targets.contiguous(),
        None if bias is None else bias.contiguous(),
        None if token_weights is None else token_weights.contiguous(),
        ignore_index, label_smoothing, z_loss, reduction, start, end, need_hidden, need_weight, need_bias,
    )


def _grad_shapes(hidden, weight, bias, start, end, need_hidden, need_weight, need_bias, with_grads):
    width = end - start
    gh = torch.empty_like(hidden) if with_grads and need_hidden else hidden.new_empty(0)
    gw = weight.new_empty(width, weight.shape[1]) if with_grads and need_weight else weight.new_empty(0)
    if bias is None:
        gb = weight.new_empty(0)
    else:
        gb = bias.new_empty(width) if with_grads and need_bias else bias.new_empty(0)
    return gh, gw, gb


@_lce_fwd.register_fake
def _(hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss, reduction,
      start, end, need_hidden, need_weight, need_bias, backend):
    compute = torch.promote_types(hidden.dtype, torch.float32)
    shape = (hidden.shape[0],) if reduction == "none" else ()
    loss = hidden.new_empty(shape, dtype=compute)
    with_grads = reduction != "none"
    return (loss, *_grad_shapes(hidden, weight, bias, start, end, need_hidden, need_weight, need_bias,
                                with_grads))


@torch.library.custom_op("nxkernels::linear_cross_entropy_bwd", mutates_args=())
def _lce_bwd(
    grad_loss: Tensor, hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None,
    token_weights: Tensor | None, ignore_index: int, label_smoothing: float, z_loss: float, start: int,
    end: int, need_hidden: bool, need_weight: bool, need_bias: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels(backend)["backward"](
        grad_loss.contiguous(), hidden.contiguous(), weight.contiguous(), targets.contiguous(),
        None if bias is None else bias.contiguous(),
        None if token_weights is None else token_weights.contiguous(),
        ignore_index, label_smoothing, z_loss, start, end, need_hidden, need_weight, need_bias,
    )


@_lce_bwd.register_fake
def _(grad_loss, hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss,
      start, end, need_hidden, need_weight, need_bias, backend):
    return _grad_shapes(hidden, weight, bias, start, end, need_hidden, need_weight, need_bias, True)


def _setup_context(ctx, inputs, output):
    (hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss, reduction,
     start, end, need_hidden, need_weight, need_bias, backend) = inputs
    ctx.set_materialize_grads(False)  # the gradient outputs get no gradient: no [V', D] of zeros
    ctx.reduction = reduction
    ctx.vocab = weight.shape[0]
    ctx.range = (start, end)
    ctx.need = (need_hidden, need_weight, need_bias and bias is not None)
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, targets, bias, token_weights)
        ctx.options = (ignore_index, label_smoothing, z_loss, backend)
    else:
        ctx.save_for_backward(*output[1:])


def _pad_to_vocab(grad: Tensor, vocab: int, start: int, end: int) -> Tensor:
    if (start, end) == (0, vocab):
        return grad
    pad = (0, 0) * (grad.ndim - 1) + (start, vocab - end)
    return F.pad(grad, pad)


def _is_one(grad: Tensor) -> bool:
    """Whether the upstream gradient is exactly 1 (a plain ``loss.backward()``): then the saved
    gradients are handed over as they are, with no second [V', D] tensor. Traced code (dynamo, or
    AOTAutograd's fake tensors) always multiplies: the value is data."""
    if torch.compiler.is_compiling() or is_fake(grad) or grad.numel() != 1:
        return False
    return bool(grad == 1)


def _backward(ctx, grad_loss, _gh, _gw, _gb):
    if grad_loss is None:  # only the gradient outputs were used downstream: they get no gradient
        return (None,) * 15
    need_hidden, need_weight, need_bias = ctx.need
    start, end = ctx.range
    if ctx.reduction == "none":
        hidden, weight, targets, bias, token_weights = ctx.saved_tensors
        ignore_index, label_smoothing, z_loss, backend = ctx.options
        gh, gw, gb = torch.ops.nxkernels.linear_cross_entropy_bwd(
            grad_loss, hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing,
            z_loss, start, end, need_hidden, need_weight, need_bias, backend,
        )
    else:
        gh, gw, gb = ctx.saved_tensors
        if not _is_one(grad_loss):
            gh, gw, gb = (g * grad_loss for g in (gh, gw, gb))
    return (
        gh if need_hidden else None,
        _pad_to_vocab(gw, ctx.vocab, start, end) if need_weight else None,
        None,
        _pad_to_vocab(gb, ctx.vocab, start, end) if need_bias else None,
        *(None,) * 11,
    )


_lce_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------


def _validate(hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing, z_loss,
              reduction, vocab_range) -> tuple[int, int]:
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets), ("bias", bias),
                    ("token_weights", token_weights)):
        if t is None and name in ("bias", "token_weights"):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}; move it with "
                             f".to(hidden.device)")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias), ("token_weights", token_weights)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}; convert it with .float()")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class ids, got {targets.dtype}; convert it with .long()")
    if hidden.ndim != 2:
        width = hidden.shape[-1] if hidden.ndim else "dim"
        raise ValueError(f"hidden must be [tokens, dim], got shape {tuple(hidden.shape)}; flatten the "
                         f"leading dimensions with .reshape(-1, {width})")
    n, dim = hidden.shape
    if weight.ndim != 2 or weight.shape[1] != dim:
        raise ValueError(f"weight has shape {tuple(weight.shape)} but hidden has width {dim}; weight must "
                         f"be [vocab, {dim}] (an nn.Linear(dim, vocab).weight)")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but hidden has {hidden.dtype}; cast one of them "
                        f"(e.g. weight.to(hidden.dtype))")
    vocab = weight.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"targets has shape {tuple(targets.shape)} but hidden has {n} rows; targets must "
                         f"be [{n}], one class id per row")
    if bias is not None:
        if bias.shape != (vocab,):
            raise ValueError(f"bias has shape {tuple(bias.shape)} but weight has {vocab} rows; bias must "
                             f"be [{vocab}]")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but hidden has {hidden.dtype}; cast it with "
                            f".to(hidden.dtype)")
    if token_weights is not None and token_weights.shape != (n,):
        raise ValueError(f"token_weights has shape {tuple(token_weights.shape)} but hidden has {n} rows; "
                         f"token_weights must be [{n}], one weight per row")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float))
            or not 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if (isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)) or not z_loss >= 0.0
            or z_loss == float("inf")):
        raise ValueError(f"z_loss must be a finite float >= 0 (e.g. 1e-4), got {z_loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {', '.join(map(repr, REDUCTIONS))}")
    if vocab_range is None:
        return 0, vocab
    ok = (isinstance(vocab_range, (tuple, list)) and len(vocab_range) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in vocab_range))
    if not ok or not 0 <= vocab_range[0] < vocab_range[1] <= vocab:
        raise ValueError(f"vocab_range must be (start, end) with 0 <= start < end <= vocab ({vocab}), got "
                         f"{vocab_range!r}")
    return int(vocab_range[0]), int(vocab_range[1])


@typecheck
def linear_cross_entropy(
    hidden: Float[Tensor, "tokens dim"],
    weight: Float[Tensor, "vocab dim"],
    targets: Int[Tensor, " tokens"],
    *,
    bias: Float[Tensor, " vocab"] | None = None,
    token_weights: Float[Tensor, " tokens"] | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
    vocab_range: tuple[int, int] | None = None,
    backend: str | None = None,
) -> Float[Tensor, ""] | Float[Tensor, " tokens"]:
    """Cross-entropy of ``hidden @ weight[start:end]ᵀ (+ bias)`` against ``targets``, chunked.

    See the module docstring for the exact loss, the reductions and the backends. ``backend`` pins
    one (``"triton"``, ``"torch"``, ``"reference"``); a pinned backend that cannot run raises
    ValueError with its reasons. Returns a scalar, or ``[N]`` for ``reduction="none"``.
    """
    start, end = _validate(hidden, weight, targets, bias, token_weights, ignore_index, label_smoothing,
                           z_loss, reduction, vocab_range)
    chosen = LINEAR_CROSS_ENTROPY.select(hidden, weight, targets, bias=bias, token_weights=token_weights,
                                         backend=backend)
    grad_on = torch.is_grad_enabled()
    loss, *_ = torch.ops.nxkernels.linear_cross_entropy_fwd(
        hidden, weight, targets, bias, token_weights, ignore_index, float(label_smoothing), float(z_loss),
        reduction, start, end, grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad, chosen.name,
    )
    return loss
