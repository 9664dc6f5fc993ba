"""``Attention``: multi-head self-attention with grouped key/value heads (GQA), optional per-head
qk-norm, rotary positions and a KV cache — the attention of Qwen2.5 (NextFlow, NextStep-1).

Shape legend (see ``nxcore.typing``): batch, seq = query tokens of this call, kv = key tokens
(seq without a cache; everything cached so far with one), dim = model width, heads = query heads,
kv_heads = key/value heads (heads is a multiple), head_dim = width of one head, axes = rotary
coordinates per position.

    q = q_proj(x), k = k_proj(x), v = v_proj(x)           split into heads
    q, k = q_norm(q), k_norm(k)                            (qk_norm=True, per head, as in Qwen3)
    q, k = rope.apply(q, positions), rope.apply(k, positions)
    k, v = cache.append(k, v)                              (with a cache)
    out = o_proj(softmax(q k^T / sqrt(head_dim) + mask) v)

Block-causal sequences (interleaved text and next-scale images): pass ``blocks``, a
``nxkernels.scale_attention.ScaleBlocks`` built once per batch layout with
``ScaleBlocks.of(layout.attention_blocks())`` (an ``AttentionBlocks`` is converted on every call).
The ``scale_attention`` op then runs it without a [seq, seq] mask.

Masks: ``attn_mask`` is boolean, True = attend, shaped [seq, kv] or [batch or 1, heads or 1, seq,
kv]. ``is_causal=True`` adds causality aligned bottom-right: query i (the last ``seq`` of ``kv``
positions) sees keys j <= kv - seq + i, which is what decoding after a prefill needs. Both may be
given; a key is attended when both allow it. Give every query at least one key: a row with none
is left to SDPA (zeros on its math path today) and is not a supported input.

Parameter names follow Hugging Face Qwen2 / Qwen3 (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``q_norm``, ``k_norm``), so official checkpoints load without remapping. Qwen2 has biases on q/k/v
and none on o: ``Attention(..., qkv_bias=True)``.

The attention core is ``_attend``: ``scale_attention`` for ``blocks``, ``decode_attention`` (SDPA
without a mask, bottom-right causal when asked) otherwise, masked SDPA for an explicit mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.layout import AttentionBlocks
from nxcore.nn._checks import check_dim, check_eps, check_flag, check_width
from nxcore.nn.cache import KVCache
from nxcore.nn.norm import RMSNorm
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.typing import Bool, Float, typecheck
from nxkernels.scale_attention import ScaleBlocks, decode_attention, scale_attention

__all__ = ["Attention", "causal_mask"]


def causal_mask(seq: int, kv: int, *, device: torch.device | str | None = None) -> Bool[Tensor, "seq kv"]:
    """[seq, kv] bool, True = attend, causal aligned bottom-right: row i sees columns <= kv - seq + i."""
    check_dim("seq", seq, at_least=0)
    check_dim("kv", kv, at_least=0)
    if seq > kv:
        raise ValueError(f"a causal mask needs seq <= kv (queries are the last keys), got seq={seq}, kv={kv}")
    return torch.ones(seq, kv, dtype=torch.bool, device=device).tril(diagonal=kv - seq)


def _attend(
    q: Float[Tensor, "batch heads seq head_dim"],
    k: Float[Tensor, "batch kv_heads kv head_dim"],
    v: Float[Tensor, "batch kv_heads kv head_dim"],
    *,
    mask: Bool[Tensor, "..."] | None,
    is_causal: bool,
    blocks: ScaleBlocks | None = None,
) -> Float[Tensor, "batch heads seq head_dim"]:
    """softmax(q k^T / sqrt(head_dim) [masked]) v with kv heads shared by groups of query heads."""
    if blocks is not None:
        return scale_attention(q, k, v, blocks)
    if mask is None:
        return decode_attention(q, k, v, causal=is_causal)
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"is_causal=True needs as many queries as keys, got {q.shape[-2]} queries and {k.shape[-2]} "
            "keys; pass the bottom-right causal_mask(seq, kv) as the mask instead"
        )
    group = q.shape[1] // k.shape[1]
    if group > 1 and q.device.type != "cpu":
        # PyTorch's fused CUDA SDPA kernel that takes a mask (memory-efficient) does not take
        # enable_gqa and would fall back to the math kernel; share the kv heads explicitly instead.
        # (The CPU kernel takes both: the same numbers without copying the keys and values.)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        group = 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=group > 1)


class Attention(nn.Module):
    """Self-attention with ``num_heads`` query heads sharing ``num_kv_heads`` key/value heads."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        rope: RotaryPositionalEncoder | None = None,
    ) -> None:
        super().__init__()
        check_dim("dim", dim)
        check_dim("num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else check_dim("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads}); each kv head "
                "serves a whole group of query heads"
            )
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"dim ({dim}) is not divisible by num_heads ({num_heads}); pass head_dim explicitly"
                )
            head_dim = dim // num_heads
        check_dim("head_dim", head_dim)
        for name, flag in (("qkv_bias", qkv_bias), ("o_bias", o_bias), ("qk_norm", qk_norm)):
            check_flag(name, flag)
        norm_eps = check_eps("norm_eps", norm_eps)
        if rope is not None:
            if not isinstance(rope, RotaryPositionalEncoder):
                raise TypeError(
                    f"rope must be a RotaryPositionalEncoder (e.g. RoPE1D(head_dim={head_dim})) or None, "
                    f"got {type(rope).__name__}"
                )
            if rope.head_dim != head_dim:
                raise ValueError(
                    f"rope.head_dim ({rope.head_dim}) must equal the attention head_dim ({head_dim}); "
                    f"build the encoder with head_dim={head_dim}"
                )
        self.dim = dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope = rope
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=o_bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, norm_eps)
            self.k_norm = RMSNorm(head_dim, norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"rope={self.rope!r}"
        )

    def new_cache(
        self,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty ``KVCache`` for this layer (dtype and device default to the parameters')."""
        weight = self.k_proj.weight
        return KVCache(
            batch,
            self.num_kv_heads,
            max_len,
            self.head_dim,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
        )

    @typecheck
    def forward(
        self,
        x: Float[Tensor, "batch seq dim"],
        positions: Float[Tensor, "*rows seq axes"] | None = None,
        *,
        attn_mask: Bool[Tensor, "..."] | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        blocks: ScaleBlocks | AttentionBlocks | None = None,
    ) -> Float[Tensor, "batch seq dim"]:
        """Attend ``x`` to itself (and to the cached tokens); ``positions`` are those of ``x``'s tokens:
        [seq, axes] shared by every row, or [batch, seq, axes], one set per row (padded batches of
        sequences with different layouts)."""
        check_width(self, "x", x, self.dim)
        check_tensor("x", x, ndim=3)
        check_flag("is_causal", is_causal)
        batch, seq, _ = x.shape
        blocks = self._check_blocks(blocks, seq, attn_mask, is_causal, cache)
        self._check_positions(positions, batch, seq)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
        kv = seq + (0 if cache is None else cache.length)
        mask = None if attn_mask is None else self._check_mask(attn_mask, batch, seq, kv, x.device)
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self._rotate(torch.cat([q, k], dim=1), positions).split([q.shape[1], k.shape[1]], dim=1)
        if cache is not None:
            k, v = cache.append(k, v)
        if is_causal and mask is not None:
            causal = causal_mask(seq, kv, device=x.device)
            mask = causal if mask is None else mask & causal
            is_causal = False
        out = _attend(q, k, v, mask=mask, is_causal=is_causal, blocks=blocks)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """``rope.apply`` with [seq, axes] positions, or per row with [batch, seq, axes]: the rows are
        laid end to end along seq (one rotation call), then split back. Queries and keys go through
        together (stacked along heads): one rotation table per call."""
        if positions.ndim == 2:
            return self.rope.apply(x, positions)
        batch, heads, seq, head_dim = x.shape
        flat = x.transpose(0, 1).reshape(heads, batch * seq, head_dim)
        rotated = self.rope.apply(flat, positions.expand(batch, -1, -1).reshape(batch * seq, -1))
        return rotated.view(heads, batch, seq, head_dim).transpose(0, 1)

    @staticmethod
    def _check_blocks(
        blocks: object, seq: int, attn_mask: object, is_causal: bool, cache: KVCache | None
    ) -> ScaleBlocks | None:
        if blocks is None:
            return None
        if attn_mask is not None or is_causal or cache is not None:
            raise ValueError(
                "blocks describes the whole attention pattern of an uncached sequence; pass it alone "
                "(without attn_mask, is_causal or cache); decode steps after a prefill take "
                "is_causal (text) or nothing (a whole scale)"
            )
        if not isinstance(blocks, ScaleBlocks):
            if not all(hasattr(blocks, name) for name in ("starts", "ends", "causal")):
                raise TypeError(
                    f"blocks must be a ScaleBlocks (ScaleBlocks.of(layout.attention_blocks())), got "
                    f"{type(blocks).__name__}"
                )
            blocks = ScaleBlocks.of(blocks)
        if blocks.length != seq:
            raise ValueError(
                f"blocks cover {blocks.length} tokens but x has seq = {seq}; build them from the "
                "layout of this batch"
            )
        return blocks

    def _check_positions(self, positions: object, batch: int, seq: int) -> None:
        if self.rope is None:
            if positions is not None:
                raise ValueError(
                    "positions were given but this Attention has no rotary encoder (rope=None); "
                    "build it with rope=... or pass positions=None"
                )
            return
        if positions is None:
            raise ValueError(
                f"positions is None but this Attention rotates q and k with {type(self.rope).__name__}; "
                f"pass the [seq, {self.rope.num_axes}] positions of x's tokens (rope.positions(layout))"
            )
        check_tensor("positions", positions, ndim=(2, 3), kind="float")
        if positions.shape[-2] != seq:
            raise ValueError(
                f"positions has {positions.shape[-2]} positions per row but x has seq = {seq} tokens; pass "
                "the positions of this call's tokens only (a KV cache keeps the earlier ones rotated)"
            )
        if positions.ndim == 3 and positions.shape[0] not in (1, batch):
            raise ValueError(
                f"positions has {positions.shape[0]} rows but x has batch = {batch}; pass [seq, axes] "
                "positions shared by every row or [batch, seq, axes], one set per row"
            )

    def _check_mask(
        self, mask: object, batch: int, seq: int, kv: int, device: torch.device
    ) -> Bool[Tensor, "..."]:
        mask = check_tensor("attn_mask", mask, ndim=(2, 4), kind="bool", device=device)
        full = (batch, self.num_heads, seq, kv)
        # broadcasts to full: every dimension equal or 1 (torch.broadcast_shapes is slow Python)
        if not all(m == f or m == 1 for m, f in zip(mask.shape, full[-mask.ndim:], strict=True)):
            raise ValueError(
                f"attn_mask has shape {tuple(mask.shape)} but must broadcast to [batch, heads, seq, kv] = "
                f"{list(full)} (True = attend); give [{seq}, {kv}] or [{batch} or 1, {self.num_heads} or 1, "
                f"{seq}, {kv}] (kv counts the cached tokens too)"
            )
        return mask
