"""The xformers backend (GPU only, optional): block-causal attention as two varlen calls.

Shape legend as in ``nxkernels.scale_attention.reference``.

UNTESTED ON A GPU so far: xformers is an optional CUDA extra (``pip install 'nx[cuda]'``); without
it, or without CUDA, dispatch lists the reason and never picks this backend; xformers itself is
imported only inside the kernel calls. The CPU tests run the packing and the custom-op wiring with
the two xformers calls (``KERNELS``) swapped for a plain-torch emulation of the same masks.

Each block ``b`` becomes one "sequence" of a varlen batch: its queries against the key prefix
``[0, end_b)``, packed by copying those prefixes (the sum of the block ends: about 2.8 x seq keys for
the 1024-level schedule). Non-causal blocks go to one ``memory_efficient_attention`` call with
``BlockDiagonalMask``; causal blocks (text) to another with ``BlockDiagonalCausalFromBottomRightMask``.
Batch elements are further sequences of the same calls. xformers' backward takes no GQA layout, so
key/value heads are repeated for it.

The op is the custom op ``nxkernels::scale_attention_xformers`` (opaque to ``torch.compile``, with a
fake implementation); its backward ``nxkernels::scale_attention_xformers_bwd`` re-runs xformers'
forward for the log-sum-exp and calls ``memory_efficient_attention_backward`` (one extra forward;
only q, k, v are saved, and the log-sum-exp, whose layout xformers does not fix, never leaves the
op). Key/value gradients are summed over the blocks that read them in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nxkernels.scale_attention.blocks import ScaleBlocks

__all__ = ["KERNELS", "scale_attention_xformers"]


def _bias(q_seqlen: list[int], kv_seqlen: list[int], causal: bool):
    from xformers.ops.fmha.attn_bias import (  # noqa: PLC0415
        BlockDiagonalCausalFromBottomRightMask,
        BlockDiagonalMask,
    )

    kind = BlockDiagonalCausalFromBottomRightMask if causal else BlockDiagonalMask
    return kind.from_seqlens(q_seqlen=q_seqlen, kv_seqlen=kv_seqlen)


def _xformers_forward(q: Tensor, k: Tensor, v: Tensor, q_seqlen: list[int], kv_seqlen: list[int],
                      causal: bool, scale: float) -> Tensor:
    """Packed ``[1, rows, heads, head_dim]`` varlen attention, bottom-right causal when ``causal``."""
    from xformers.ops import memory_efficient_attention  # noqa: PLC0415

    return memory_efficient_attention(q, k, v, attn_bias=_bias(q_seqlen, kv_seqlen, causal), scale=scale)


def _xformers_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, q_seqlen: list[int],
                       kv_seqlen: list[int], causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``_xformers_forward``; recomputes the forward for its log-sum-exp."""
    from xformers.ops import (  # noqa: PLC0415
        memory_efficient_attention_backward,
        memory_efficient_attention_forward_requires_grad,
    )

    bias = _bias(q_seqlen, kv_seqlen, causal)
    out, lse = memory_efficient_attention_forward_requires_grad(q, k, v, attn_bias=bias, scale=scale)
    return memory_efficient_attention_backward(dout, out, lse, q, k, v, attn_bias=bias, scale=scale)


KERNELS = {"forward": _xformers_forward, "backward": _xformers_backward}


def _groups(starts, ends, causal) -> list[tuple[bool, list[int], list[int], list[int], list[int]]]:
    """Per causal flag present: (flag, query rows, key rows, per-block query lengths, key lengths)."""
    out = []
    for flag in (False, True):
        sel = [(s, e) for s, e, c in zip(starts, ends, causal, strict=True) if c == flag]
        if sel:
            rows = [i for s, e in sel for i in range(s, e)]
            keys = [i for _, e in sel for i in range(e)]
            out.append((flag, rows, keys, [e - s for s, e in sel], [e for _, e in sel]))
    return out


def _packed(starts, ends, causal, by_rows: tuple[Tensor, ...], by_keys: tuple[Tensor, ...]):
    """Per group: (flag, query rows, key rows, q lengths, kv lengths, packed tensors).

    ``by_rows`` ([batch, seq, heads, head_dim]) are packed by the group's query rows, ``by_keys`` by
    its key prefixes; each becomes ``[1, batch * rows, heads, head_dim]``.
    """
    batch, _, heads, head_dim = by_rows[0].shape
    device = by_rows[0].device
    for flag, rows, keys, q_len, kv_len in _groups(starts, ends, causal):
        r = torch.tensor(rows, device=device)
        c = torch.tensor(keys, device=device)
        packed = [t.index_select(1, r).reshape(1, batch * len(rows), heads, head_dim) for t in by_rows]
        packed += [t.index_select(1, c).reshape(1, batch * len(keys), heads, head_dim) for t in by_keys]
        yield flag, r, c, q_len * batch, kv_len * batch, packed


def _bshd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """[batch, seq, heads, head_dim] views; key/value heads repeated to the query heads."""
    group = q.shape[1] // k.shape[1]
    qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))
    if group > 1:
        kb, vb = kb.repeat_interleave(group, dim=2), vb.repeat_interleave(group, dim=2)
    return qb, kb, vb, group


def _forward(q: Tensor, k: Tensor, v: Tensor, starts: list[int], ends: list[int], causal: list[bool],
             scale: float) -> Tensor:
    qb, kb, vb, _ = _bshd(q, k, v)
    out = torch.empty_like(qb, memory_format=torch.contiguous_format)
    for flag, r, _, q_len, kv_len, (qp, kp, vp) in _packed(starts, ends, causal, (qb,), (kb, vb)):
        o = KERNELS["forward"](qp, kp, vp, q_len, kv_len, flag, scale)
        out.index_copy_(1, r, o.reshape(qb.shape[0], len(r), *qb.shape[2:]))
    return out.transpose(1, 2).contiguous()


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, starts: list[int], ends: list[int],
              causal: list[bool], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    qb, kb, vb, group = _bshd(q, k, v)
    batch, seq, heads, head_dim = qb.shape
    dq = torch.zeros(qb.shape, dtype=q.dtype, device=q.device)
    acc = torch.promote_types(q.dtype, torch.float32)  # k/v gradients sum over blocks: fp32 at least
    dk = torch.zeros(kb.shape, dtype=acc, device=q.device)
    dv = torch.zeros(vb.shape, dtype=acc, device=q.device)
    for flag, r, c, q_len, kv_len, (qp, dop, kp, vp) in _packed(
        starts, ends, causal, (qb, dout.transpose(1, 2)), (kb, vb)
    ):
        gq, gk, gv = KERNELS["backward"](dop, qp, kp, vp, q_len, kv_len, flag, scale)
        dq.index_copy_(1, r, gq.reshape(batch, len(r), heads, head_dim))
        dk.index_add_(1, c, gk.reshape(batch, len(c), heads, head_dim).to(acc))
        dv.index_add_(1, c, gv.reshape(batch, len(c), heads, head_dim).to(acc))
    if group > 1:
        dk = dk.view(batch, seq, heads // group, group, head_dim).sum(3)
        dv = dv.view(batch, seq, heads // group, group, head_dim).sum(3)
    return tuple(t.transpose(1, 2).to(q.dtype).contiguous() for t in (dq, dk, dv))


@torch.library.custom_op("nxkernels::scale_attention_xformers", mutates_args=())
def _scale_attention_xformers(q: Tensor, k: Tensor, v: Tensor, starts: list[int], ends: list[int],
                              causal: list[bool], scale: float) -> Tensor:
    return _forward(q, k, v, starts, ends, causal, scale)


@_scale_attention_xformers.register_fake
def _(q, k, v, starts, ends, causal, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("nxkernels::scale_attention_xformers_bwd", mutates_args=())
def _scale_attention_xformers_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, starts: list[int],
                                  ends: list[int], causal: list[bool], scale: float
                                  ) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(dout, q, k, v, starts, ends, causal, scale)


@_scale_attention_xformers_bwd.register_fake
def _(dout, q, k, v, starts, ends, causal, scale):
    dense = torch.contiguous_format
    return (torch.empty_like(q, memory_format=dense), torch.empty_like(k, memory_format=dense),
            torch.empty_like(v, memory_format=dense))


def _setup_context(ctx, inputs, output):
    q, k, v, starts, ends, causal, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.blocks = (starts, ends, causal, scale)


def _autograd_backward(ctx, dout):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = torch.ops.nxkernels.scale_attention_xformers_bwd(dout.contiguous(), q, k, v, *ctx.blocks)
    return dq, dk, dv, None, None, None, None


_scale_attention_xformers.register_autograd(_autograd_backward, setup_context=_setup_context)


def scale_attention_xformers(
    q: Tensor, k: Tensor, v: Tensor, blocks: ScaleBlocks, scale: float | None = None
) -> Tensor:
    """Block-causal attention through xformers' varlen kernels (CUDA; see the module docstring)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.nxkernels.scale_attention_xformers(
        q, k, v, list(blocks.starts), list(blocks.ends), list(blocks.causal), scale
    )
