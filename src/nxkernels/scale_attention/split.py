"""The ``torch`` backend: block-causal attention as one SDPA call per chunk of rows, no ``seq x seq`` mask.

Shape legend as in ``nxkernels.scale_attention.reference``.

Rows are cut by ``ScaleBlocks.plan`` (see ``blocks.py``): a whole scale of a discrete image attends
the key prefix ``[0, end)`` with no mask, which is exactly the block-causal work (62% of the dense
``seq x seq`` scores for the 1024-level schedule of NextFlow Table 14); causal blocks and runs of tiny
scales carry a small mask of ``rows x kv`` (all-causal blocks, plain causal attention as NextStep-1
uses it, go to SDPA's ``is_causal`` in one call). Plain differentiable torch: autograd runs SDPA's own
fused backward per chunk (no recomputation), and ``torch.compile`` traces the loop (the plan is a
Python constant of the ``ScaleBlocks``). GQA goes to SDPA's ``enable_gqa``; keys and values are
never repeated. ``decode_attention_torch`` is the KV-cache step: no mask unless ``causal``, then
bottom-right aligned (never ``is_causal`` when the query and key lengths differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nxkernels.scale_attention.blocks import ScaleBlocks
from nxkernels.scale_attention.reference import bottom_right_mask

__all__ = ["decode_attention_torch", "scale_attention_split"]


class _SeqSlices(torch.autograd.Function):
    """Views ``x[:, :, lo:hi]`` for each ``(lo, hi)``, with one gradient buffer for all of them.

    Plain slicing would give every view its own ``SliceBackward``: a zero-filled gradient of x's
    full size per chunk, then a full-size add (in eager mode that is most of the split's extra
    backward time). Here the backward concatenates when the slices tile x, else adds each gradient
    into its slice of one buffer. Under ``torch.compile`` plain slicing is used (inductor fuses it).
    """

    @staticmethod
    def forward(x, ranges):
        return tuple(x[:, :, lo:hi] for lo, hi in ranges)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ranges = inputs
        ctx.ranges, ctx.shape = ranges, x.shape
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grads):
        ranges, seq = ctx.ranges, ctx.shape[2]
        tiles = all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
        if tiles and ranges[0][0] == 0 and ranges[-1][1] == seq and all(g is not None for g in grads):
            return torch.cat(grads, dim=2), None
        like = next(g for g in grads if g is not None)
        dx = like.new_zeros(ctx.shape)
        for (lo, hi), g in zip(ranges, grads, strict=True):
            if g is not None:
                dx[:, :, lo:hi] += g
        return dx, None


def _slices(x: Tensor, ranges: tuple[tuple[int, int], ...]) -> tuple[Tensor, ...]:
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and x.requires_grad):
        return tuple(x[:, :, lo:hi] for lo, hi in ranges)
    return _SeqSlices.apply(x, ranges)


def scale_attention_split(
    q: Tensor, k: Tensor, v: Tensor, blocks: ScaleBlocks, scale: float | None = None
) -> Tensor:
    """Block-causal attention, one SDPA call per chunk of ``blocks.plan``; exact. When every block is
    causal the pattern is plain causal attention: one SDPA call with its own causal kernel."""
    gqa = q.shape[1] != k.shape[1]
    if all(blocks.causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    plan = blocks.plan
    qs = _slices(q, tuple((c.q0, c.q1) for c in plan))
    ks = _slices(k, tuple((0, c.kv) for c in plan))
    vs = _slices(v, tuple((0, c.kv) for c in plan))
    outs = []
    for chunk, qc, kc, vc in zip(plan, qs, ks, vs, strict=True):
        mask = chunk.mask(q.device) if chunk.masked else None
        outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale, enable_gqa=gqa))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def decode_attention_torch(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """One decode step: the step's queries over the whole cache (which already holds the step)."""
    num_q, num_k = q.shape[2], k_cache.shape[2]
    gqa = q.shape[1] != k_cache.shape[1]
    if causal and num_q == num_k:  # aligned: both conventions agree, and SDPA can skip tiles
        return F.scaled_dot_product_attention(q, k_cache, v_cache, is_causal=True, scale=scale,
                                              enable_gqa=gqa)
    # one query sees the whole cache either way; a longer causal step needs the bottom-right mask
    mask = bottom_right_mask(num_q, num_k, q.device) if causal and num_q > 1 else None
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale,
                                          enable_gqa=gqa)
