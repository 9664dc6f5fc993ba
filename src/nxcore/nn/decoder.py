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

``forward_layers(layers, x, positions, residual=torch.zeros_like(x), ...)`` is that loop; for eager
inference it runs a lean form of it (checks and kernel choices once per stack, no module calls).

Parameter names follow Hugging Face Qwen2: ``input_layernorm.weight``, ``self_attn.q_proj.weight``
... ``post_attention_layernorm.weight``, ``mlp.gate_proj.weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks

from nxcore.config import Config, boolean, config, finite_number, integer
from nxcore.layout import AttentionBlocks
from nxcore.nn._checks import check_eps
from nxcore.nn.attention import Attention, _attend, causal_mask
from nxcore.nn.cache import KVCache
from nxcore.nn.mlp import SwiGLUMLP
from nxcore.nn.norm import RMSNorm
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.typing import Bool, Float, typecheck
from nxkernels.rms_norm import rms_norm_inference_kernel
from nxkernels.scale_attention import ScaleBlocks, decode_attention_kernel
from nxkernels.swiglu import swiglu_inference_kernel

__all__ = ["DecoderLayer", "DecoderLayerConfig", "forward_layers"]


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


def forward_layers(
    layers: Sequence[DecoderLayer],
    x: Float[Tensor, "batch seq dim"],
    positions: Float[Tensor, "*rows seq axes"] | None = None,
    *,
    residual: Float[Tensor, "batch seq dim"],
    attn_mask: Bool[Tensor, "..."] | None = None,
    is_causal: bool = False,
    caches: Sequence[KVCache] | None = None,
    blocks: ScaleBlocks | AttentionBlocks | None = None,
) -> tuple[Float[Tensor, "batch seq dim"], Float[Tensor, "batch seq dim"]]:
    """A stack of ``DecoderLayer`` carrying the residual stream (module docstring): from ``(x,
    residual)`` it runs ``m, h = layer(m, positions, residual=h, attn_mask=..., is_causal=..., cache=
    caches[i], blocks=...)`` for every layer in order and returns the last ``(m, h)``; the stack's
    output is ``m + h`` (a final norm takes them as ``norm(m, residual=h)``).

    Eager inference - no gradients (``torch.no_grad()`` / ``inference_mode``), not traced by
    ``torch.compile`` or ``torch.jit`` - of stock layers (``DecoderLayer`` of ``Attention`` without
    qk-norm, ``SwiGLUMLP``, ``RMSNorm`` and ``nn.Linear``, none with hooks) and without ``blocks`` runs a
    lean loop: the arguments are checked and the ``nxkernels`` kernels chosen once for the whole stack,
    not once per layer, and the layers' math runs without module calls, the same ops in the same order
    as ``DecoderLayer.forward`` (bit for bit, tested). For a small model decoding one token at a time
    that overhead is most of a step. Any other call runs the layers as modules.
    """
    if caches is not None and len(caches) != len(layers):
        raise ValueError(f"got {len(caches)} caches for {len(layers)} layers; pass one KVCache per layer")
    if blocks is None and _lean_args(layers, x, residual, attn_mask, is_causal, caches):
        plan = _lean_plan(layers)
        if plan is not None:
            return _forward_lean(plan, x, positions, residual, attn_mask, is_causal, caches)
    m, h = x, residual
    for i, layer in enumerate(layers):
        m, h = layer(m, positions, residual=h, attn_mask=attn_mask, is_causal=is_causal,
                     cache=None if caches is None else caches[i], blocks=blocks)
    return m, h


def _lean_args(layers, x, residual, attn_mask, is_causal, caches) -> bool:
    """Eager inference with the usual arguments, checked once for the stack (anything else: the
    layers check it and explain)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return False
    if (_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
            or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks):
        return False
    if not (layers and isinstance(x, Tensor) and isinstance(residual, Tensor) and x.ndim == 3
            and x.shape[-1] == getattr(layers[0], "dim", None) and x.is_floating_point()
            and residual.shape == x.shape and residual.dtype == x.dtype and residual.device == x.device
            and type(is_causal) is bool):
        return False
    if attn_mask is not None and not (isinstance(attn_mask, Tensor) and attn_mask.dtype == torch.bool):
        return False
    if caches is not None:
        length = caches[0].length if type(caches[0]) is KVCache else None
        for cache in caches:
            if type(cache) is not KVCache or cache.length != length or cache.batch != x.shape[0]:
                return False
    return True


def _plain(module: nn.Module, kind: type) -> bool:
    """``module`` is exactly a ``kind`` and has no hooks (so calling it is running its forward)."""
    return type(module) is kind and not (module._forward_hooks or module._forward_pre_hooks
                                         or module._backward_hooks or module._backward_pre_hooks)


def _lean_plan(layers: Sequence[nn.Module]) -> list[tuple] | None:
    """Every layer's parameters for the lean loop, or None unless all are stock layers without hooks
    and the same width and heads (submodules and parameters are read from ``_modules`` /
    ``_parameters``, which is where ``nn.Module.__getattr__`` finds them)."""
    plan = []
    shape = None
    for layer in layers:
        if not _plain(layer, DecoderLayer):
            return None
        sub = layer._modules
        attn, mlp = sub["self_attn"], sub["mlp"]
        ln1, ln2 = sub["input_layernorm"], sub["post_attention_layernorm"]
        if not (_plain(attn, Attention) and attn.q_norm is None and _plain(mlp, SwiGLUMLP)
                and _plain(ln1, RMSNorm) and _plain(ln2, RMSNorm)):
            return None
        if shape is None:
            shape = (layer.dim, attn.num_heads, attn.rope is None)
        elif (layer.dim, attn.num_heads, attn.rope is None) != shape:
            return None
        linears = []
        for owner, name in ((attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"),
                            (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")):
            linear = owner._modules[name]
            if not _plain(linear, nn.Linear):
                return None
            params = linear._parameters
            linears += (params["weight"], params["bias"])
        plan.append((attn, ln1._parameters["weight"], ln1.eps, ln2._parameters["weight"], ln2.eps, *linears))
    return plan


def _forward_lean(plan, x, positions, residual, attn_mask, is_causal, caches):
    """``forward_layers``' lean loop: ``DecoderLayer.forward`` and ``Attention.forward`` inlined (keep
    them in step: ``tests/nxcore/nn`` compares the two bit for bit)."""
    first = plan[0][0]
    batch, seq, _ = x.shape
    first._check_positions(positions, batch, seq)
    past = 0 if caches is None else caches[0].length
    kv = seq + past
    mask = None if attn_mask is None else first._check_mask(attn_mask, batch, seq, kv, x.device)
    if is_causal and mask is not None:
        mask = mask & causal_mask(seq, kv, device=x.device)
        is_causal = False
    rotate = None if first.rope is None else _rotation(plan, positions)
    rms = rms_norm_inference_kernel(x, plan[0][1], plan[0][2], residual=residual)
    rms_key = (plan[0][1].dtype, x.dtype)
    glu = glu_key = decode = additive = None
    m, h = x, residual
    for i, step in enumerate(plan):
        attn, w1, eps1, w2, eps2, qw, qb, kw, kb, vw, vb, ow, ob, gw, gb, uw, ub, dw, db = step
        if w1.dtype != rms_key[0] or m.dtype != rms_key[1]:  # norms or activations of another dtype
            rms, rms_key = rms_norm_inference_kernel(m, w1, eps1, residual=h), (w1.dtype, m.dtype)
        normed, h = rms(m, w1, h, eps1)
        heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        q = F.linear(normed, qw, qb).view(batch, seq, heads, head_dim).transpose(1, 2)
        k = F.linear(normed, kw, kb).view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        v = F.linear(normed, vw, vb).view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        if rotate is not None:
            q, k = rotate(attn, torch.cat([q, k], dim=1)).split([heads, kv_heads], dim=1)
        if caches is not None:
            k, v = caches[i].append(k, v)
        if mask is None:
            if decode is None:
                decode = decode_attention_kernel(q, k, v)
            out = decode(q, k, v, is_causal, None)
        else:
            if additive is None or additive.dtype != q.dtype:
                # SDPA turns a boolean mask into 0 / -inf in q's dtype at every call: once per stack here
                additive = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
                    ~mask, float("-inf"))
            out = _attend(q, k, v, mask=additive, is_causal=is_causal)
        out = F.linear(out.transpose(1, 2).reshape(batch, seq, heads * head_dim), ow, ob)
        if w2.dtype != rms_key[0] or out.dtype != rms_key[1]:
            rms, rms_key = rms_norm_inference_kernel(out, w2, eps2, residual=h), (w2.dtype, out.dtype)
        normed, h = rms(out, w2, h, eps2)
        gate, up = F.linear(normed, gw, gb), F.linear(normed, uw, ub)
        if glu_key != (gate.dtype, gate.shape[-1]):
            glu, glu_key = swiglu_inference_kernel(gate, up), (gate.dtype, gate.shape[-1])
        m = F.linear(glu(gate, up), dw, db)
    return m, h


def _rotation(plan: list[tuple], positions: Tensor):
    """``(attn, qk) -> attn._rotate(qk, positions)``; when every layer shares one encoder that offers
    ``rotation(positions)`` (a rotation to fixed positions prepared once) and ``positions`` is
    [seq, axes], that one instead."""
    rope = plan[0][0].rope
    prepare = getattr(rope, "rotation", None)
    if positions.ndim == 2 and callable(prepare) and all(step[0].rope is rope for step in plan):
        rotation = prepare(positions)
        return lambda attn, qk: rotation(qk)
    return lambda attn, qk: attn._rotate(qk, positions)
