"""Linear + cross-entropy with a Triton softmax-gradient kernel: the ``triton`` backend.

    tokens  rows of ``hidden`` (N)        dim    hidden width (D)
    V'      the scored slice of the vocabulary, ``end - start``
    m       rows in one chunk             BLOCK  logits per step of the kernel's loops

The chunk driver is the ``torch`` backend's (``chunked.forward``/``chunked.backward``: row
selection, chunking, the three torch matmuls per chunk, fp32 ``grad_W`` accumulation); this module
replaces its per-chunk softmax step. Per chunk, torch computes the logits ``[m, V']`` in the inputs'
dtype; then ``_softmax_grad_kernel``, one program per row, makes two passes over the row in blocks
of ``BLOCK`` logits:

1. online softmax: a running max and a running sum of exponentials (plus the sum of the logits,
   for label smoothing), giving ``lse``; the row loss
   ``(1-ε)(lse - z_y) + ε(lse - mean z) + s lse²`` goes to an fp32 array;
2. (when gradients are wanted) overwrite the logits in place with
   ``c (1 + 2 s lse) softmax - c ε / V' - c (1-ε) [j = y]``, computed in fp32 and rounded once.

So one ``[m, V']`` buffer in the inputs' dtype is all the chunk needs (the ``torch`` backend keeps
an fp32 copy too), and the gradient matmuls read it directly.

Interpreter-safe (``TRITON_INTERPRET=1`` runs it on CPU tensors for tests): every load is upcast to
fp32 before arithmetic, scalar arguments are used as they are (no ``.to`` on them), no libdevice, no
block pointers, no autotuning. Importing this module imports triton.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from nxkernels.linear_cross_entropy import chunked

__all__ = ["INTERPRETED", "KERNELS", "triton_softmax_grad"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read by triton.jit at decoration
# logits per loop step: large on GPU (one or a few steps over a 152k-168k row, as Liger's 32768);
# small under the interpreter, so tests at V' of a few hundred run several ragged steps
MAX_BLOCK = 128 if INTERPRETED else 32768


@triton.jit
def _softmax_grad_kernel(z_ptr, stride_z, target_ptr, scale_ptr, loss_ptr, n_cols, smoothing, z_loss,
                         HAS_GRAD: tl.constexpr, HAS_SMOOTHING: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    target = tl.load(target_ptr + row)
    cols = tl.arange(0, BLOCK)

    # pass 1: online log-sum-exp (running max, rescaled running sum) and the sum of the logits
    running_max = tl.max(tl.full((BLOCK,), float("-inf"), tl.float32), axis=0)
    running_sum = tl.sum(tl.zeros((BLOCK,), tl.float32), axis=0)
    logit_sum = tl.sum(tl.zeros((BLOCK,), tl.float32), axis=0)
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        z = tl.load(z_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
        if HAS_SMOOTHING:
            logit_sum += tl.sum(tl.where(mask, z, 0.0), axis=0)
    lse = running_max + tl.log(running_sum)
    z_target = tl.load(z_row + target).to(tl.float32)
    loss = (1.0 - smoothing) * (lse - z_target) + z_loss * lse * lse
    if HAS_SMOOTHING:
        loss += smoothing * (lse - logit_sum / n_cols)
    tl.store(loss_ptr + row, loss)

    # pass 2: dL/dz in place, scaled by the row's gradient scale
    if HAS_GRAD:
        c = tl.load(scale_ptr + row)
        softmax_scale = c * (1.0 + 2.0 * z_loss * lse)
        uniform = c * smoothing / n_cols
        hit = c * (1.0 - smoothing)
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            mask = offs < n_cols
            z = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
            g = softmax_scale * tl.exp(z - lse) - uniform - tl.where(offs == target, hit, 0.0)
            tl.store(z_row + offs, g.to(z_ptr.dtype.element_ty), mask=mask)


def triton_softmax_grad(
    logits: Tensor, targets: Tensor, grad_scale: Tensor | None, label_smoothing: float, z_loss: float
) -> tuple[Tensor, Tensor | None]:
    """``chunked.SoftmaxGrad`` with the Triton kernel: fp32 loss [m]; dlogits written over ``logits``."""
    rows, width = logits.shape
    compute = torch.promote_types(logits.dtype, torch.float32)
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return loss.to(compute), (logits if grad_scale is not None else None)
    logits = logits.contiguous()
    targets = targets.contiguous()
    scale = loss if grad_scale is None else grad_scale.to(torch.float32).contiguous()
    block = min(MAX_BLOCK, triton.next_power_of_2(width))
    _softmax_grad_kernel[(rows,)](
        logits, logits.stride(0), targets, scale, loss, width, float(label_smoothing), float(z_loss),
        HAS_GRAD=grad_scale is not None, HAS_SMOOTHING=label_smoothing != 0.0, BLOCK=block,
        num_warps=4 if block <= 2048 else 16 if block <= 8192 else 32,
    )
    return loss.to(compute), (logits if grad_scale is not None else None)


def _bytes_per_element(dtype: torch.dtype) -> int:
    return dtype.itemsize  # one buffer, logits then dlogits in place


def _forward(*args, **kwargs):
    return chunked.forward(*args, softmax_grad=triton_softmax_grad,
                           bytes_per_element=_bytes_per_element(args[0].dtype), **kwargs)


def _backward(*args, **kwargs):
    return chunked.backward(*args, softmax_grad=triton_softmax_grad,
                            bytes_per_element=_bytes_per_element(args[1].dtype), **kwargs)


KERNELS = {
    "forward": functools.wraps(chunked.forward)(_forward),
    "backward": functools.wraps(chunked.backward)(_backward),
}
