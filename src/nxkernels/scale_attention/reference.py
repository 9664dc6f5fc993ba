"""Block-causal attention and KV-cache decode attention, the references (the oracles).

Shape legend: batch, heads (query heads), kv_heads (key/value heads; heads = kv_heads * group),
seq (tokens of the sequence, or queries of one decode step), cache (keys in the KV cache),
head_dim.

``scale_attention_reference`` is SDPA with the dense ``[seq, seq]`` boolean mask of the blocks:
obviously right, and ``seq x seq`` in memory. ``decode_attention_reference`` is SDPA with a dense
``[seq, cache]`` mask aligned bottom-right (query ``i`` sees keys ``[0, cache - seq + i]``) when
``causal``, no mask otherwise. ``attention_math`` is the textbook formula in fp32 (fp64 for fp64
input) with repeated key/value heads: the tests check the references against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nxkernels.scale_attention.blocks import ScaleBlocks

__all__ = ["attention_math", "bottom_right_mask", "decode_attention_reference", "scale_attention_reference"]


def bottom_right_mask(num_queries: int, num_keys: int, device: torch.device | str = "cpu") -> Tensor:
    """``[num_queries, num_keys]`` bool: query ``i`` sees keys ``[0, num_keys - num_queries + i]``."""
    rows = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    return torch.arange(num_keys, device=device)[None, :] <= rows


def scale_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, blocks: ScaleBlocks, scale: float | None = None
) -> Tensor:
    """SDPA over the whole sequence with the dense block-causal boolean mask."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=blocks.mask(q.device), scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """SDPA of the step's queries over the whole cache; bottom-right causal mask when ``causal``."""
    mask = bottom_right_mask(q.shape[2], k_cache.shape[2], q.device) if causal else None
    return F.scaled_dot_product_attention(
        q, k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k_cache.shape[1]
    )


def attention_math(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """softmax(q kᵀ · scale, masked) v in fp32 (fp64 for fp64), key/value heads repeated; q's dtype."""
    compute = torch.promote_types(q.dtype, torch.float32)
    group = q.shape[1] // k.shape[1]
    qf = q.to(compute)
    kf = k.to(compute).repeat_interleave(group, dim=1)
    vf = v.to(compute).repeat_interleave(group, dim=1)
    scores = qf @ kf.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)
