"""``DecoderLayer``: the pre-norm transformer block of Qwen2.5 (NextFlow, NextStep-1's backbone),
and ``DecoderLayerConfig``, its frozen config with ``build()``.

Shape legend (see ``nxcore.typing``): batch, seq = tokens of this call, dim = model width,
axes = rotary coordinates per position.

    h   = x + self_attn(input_layernorm(x))
    out = h + mlp(post_attention_layernorm(h))

The second residual add is fused into ``post_attention_layernorm`` (``nxkernels.rms_norm`` with
``residual=``). A stack can fuse the first one too by carrying the residual stream between layers:
called with ``residual=r``, a layer's input is ``x + r`` (added inside ``input_layernorm``) and it
returns ``(m, h)`` whose sum is its output. Start the stream with ``residual=torch.zeros_like(x)``
and finish it with the final norm ``norm(m, residual=h)``::

    m, h = layers[0](x, positions, residual=torch.zeros_like(x), is_causal=True)
    for layer in layers[1:]:
        m, h = layer(m, positions, residual=h, is_causal=True)
    y, _ = norm(m, residual=h)

Parameter names follow Hugging Face Qwen2: ``input_layernorm.weight``, ``self_attn.q_proj.weight``
... ``post_attention_layernorm.weight``, ``mlp.gate_proj.weight``.
"""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from nxcore.config import Config, boolean, config, finite_number, integer
from nxcore.layout import AttentionBlocks
from nxcore.nn._checks import check_eps
from nxcore.nn.attention import Attention
from nxcore.nn.cache import KVCache
from nxcore.nn.mlp import SwiGLUMLP
from nxcore.nn.norm import RMSNorm
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.typing import Bool, Float, typecheck
from nxkernels.scale_attention import ScaleBlocks

__all__ = ["DecoderLayer", "DecoderLayerConfig"]


class DecoderLayer(nn.Module):
    """Pre-norm block: RMSNorm -> ``self_attn`` -> residual -> RMSNorm -> ``mlp`` -> residual.

    ``mlp`` is any module mapping [..., dim] to [..., dim] (``SwiGLUMLP`` for Qwen2).
    """

    def __init__(self, self_attn: Attention, mlp: nn.Module, *, eps: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(self_attn, Attention):
            raise TypeError(f"self_attn must be an nxcore.nn.Attention, got {type(self_attn).__name__}")
        if not isinstance(mlp, nn.Module):
            raise TypeError(f"mlp must be an nn.Module (e.g. SwiGLUMLP), got {type(mlp).__name__}")
        mlp_dim = getattr(mlp, "dim", self_attn.dim)
        if mlp_dim != self_attn.dim:
            raise ValueError(
                f"mlp.dim ({mlp_dim}) must equal self_attn.dim ({self_attn.dim}); build both with the "
                "model's width"
            )
        self.dim = self_attn.dim
        self.input_layernorm = RMSNorm(self.dim, check_eps("eps", eps))
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(self.dim, eps)
        self.mlp = mlp

    @typecheck
    def forward(
        self,
        x: Float[Tensor, "batch seq dim"],
        positions: Float[Tensor, "*rows seq axes"] | None = None,
        *,
        residual: Float[Tensor, "batch seq dim"] | None = None,
        attn_mask: Bool[Tensor, "..."] | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        blocks: ScaleBlocks | AttentionBlocks | None = None,
    ) -> (
        Float[Tensor, "batch seq dim"] | tuple[Float[Tensor, "batch seq dim"], Float[Tensor, "batch seq dim"]]
    ):
        """The layer's output, or ``(mlp_out, residual_stream)`` when ``residual`` is given.

        ``positions``, ``attn_mask``, ``is_causal``, ``cache`` and ``blocks`` go to ``self_attn``.
        """
        if residual is None:
            stream, normed = x, self.input_layernorm(x)
        else:
            normed, stream = self.input_layernorm(x, residual)
        attended = self.self_attn(
            normed, positions, attn_mask=attn_mask, is_causal=is_causal, cache=cache, blocks=blocks
        )
        normed, stream = self.post_attention_layernorm(attended, stream)
        out = self.mlp(normed)
        return stream + out if residual is None else (out, stream)


def _optional_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        integer(at_least=1)(instance, attribute, value)


@config
class DecoderLayerConfig(Config):
    """A Qwen2-style decoder layer: GQA attention (q/k/v bias, no o bias by default) + SwiGLU MLP.

    Qwen2.5-14B / NextStep-1: ``dim=5120, num_heads=40, num_kv_heads=8, hidden=13824,
    norm_eps=1e-5``. ``num_kv_heads=None`` means ``num_heads`` (no grouping); ``head_dim=None``
    means ``dim // num_heads``. The rotary encoder is not part of the config (it is shared by all
    layers and owned by the model): pass it to ``build(rope=...)``.
    """

    dim: int = attrs.field(validator=integer(at_least=1))
    num_heads: int = attrs.field(validator=integer(at_least=1))
    hidden: int = attrs.field(validator=integer(at_least=1))
    num_kv_heads: int | None = attrs.field(default=None, validator=_optional_int)
    head_dim: int | None = attrs.field(default=None, validator=_optional_int)
    qkv_bias: bool = attrs.field(default=True, validator=boolean())
    o_bias: bool = attrs.field(default=False, validator=boolean())
    mlp_bias: bool = attrs.field(default=False, validator=boolean())
    qk_norm: bool = attrs.field(default=False, validator=boolean())
    norm_eps: float = attrs.field(default=1e-6, validator=finite_number(above=0, at_most=0.1))

    def __attrs_post_init__(self) -> None:
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        if self.num_heads % kv:
            raise ValueError(
                f"DecoderLayerConfig.num_heads ({self.num_heads}) must be divisible by "
                f"DecoderLayerConfig.num_kv_heads ({kv})"
            )
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"DecoderLayerConfig.dim ({self.dim}) is not divisible by DecoderLayerConfig.num_heads "
                f"({self.num_heads}); set head_dim explicitly"
            )

    def build(self, rope: RotaryPositionalEncoder | None = None) -> DecoderLayer:
        attn = Attention(
            self.dim,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            qkv_bias=self.qkv_bias,
            o_bias=self.o_bias,
            qk_norm=self.qk_norm,
            norm_eps=self.norm_eps,
            rope=rope,
        )
        return DecoderLayer(attn, SwiGLUMLP(self.dim, self.hidden, bias=self.mlp_bias), eps=self.norm_eps)
