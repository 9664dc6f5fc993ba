"""``NextStep1Config``: the Qwen2.5 decoder, the flow-matching head and the special tokens of
NextStep-1, and the builders ``nextstep1_tiny`` (CPU-sized) and ``nextstep1_14b`` (NextStep-1-Large).

The backbone is a stack of ``DecoderLayerConfig`` layers with plain 1D RoPE (``rope_theta``);
continuous image tokens (``latent_dim`` wide, 64 for the f8ch16 tokenizer's 2x2 patches) enter
through ``image_in_projector`` at ``<|image_placeholder|>`` ids and leave through
``image_out_projector`` into ``head`` (a ``FlowHeadConfig`` whose ``cond_dim`` is the decoder width).
Training loss: ``lm_loss_weight`` * text cross-entropy + ``image_loss_weight`` * flow matching
(0.01 and 1.0 upstream). ``use_gen_pos_embed`` adds a fixed 2D sin-cos embedding of the image token's
raster index (``gen_pos_grid`` x ``gen_pos_grid`` grid) to the hidden state that conditions the head
(upstream's default-off option).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from nxcore.config import Config, boolean, config, finite_number, integer
from nxcore.nn import DecoderLayerConfig
from nxcore.position import RoPE1D
from nxrecipes.nextstep1.head import FlowHeadConfig

if TYPE_CHECKING:
    from nxrecipes.nextstep1.model import NextStep1

__all__ = ["NextStep1Config", "nextstep1_14b", "nextstep1_tiny"]

QWEN25_14B_VOCAB = 152064
SPECIAL_FIELDS = ("pad_id", "image_area_id", "boi", "eoi", "image_placeholder_id")


def _non_negative_weight(instance: object, attribute: attrs.Attribute, value: object) -> None:
    finite_number()(instance, attribute, value)
    if value < 0:
        raise ValueError(
            f"{type(instance).__qualname__}.{attribute.name} = {value!r} is not allowed; expected a "
            "finite number >= 0 (0 switches that loss off)"
        )


@config
class NextStep1Config(Config):
    """One causal decoder over text ids and continuous image tokens (module docstring).

    Special ids (upstream: pad 151665, ``<|image_area|>`` 151666, ``<|begin_of_image|>`` 151667,
    ``<|end_of_image|>`` 151668, ``<|image_placeholder|>`` 151669) must be distinct and below
    ``vocab_size``. ``max_seq_len``: the longest sequence (prompt + image tokens) a forward accepts.
    ``init_std``: N(0, init_std) init of the backbone's and projectors' linear and embedding weights
    (Qwen2's ``initializer_range``; the head keeps its own init)."""

    layer: DecoderLayerConfig
    num_layers: int = attrs.field(validator=integer(at_least=1))
    vocab_size: int = attrs.field(validator=integer(at_least=1))
    head: FlowHeadConfig
    pad_id: int = attrs.field(validator=integer(at_least=0))
    image_area_id: int = attrs.field(validator=integer(at_least=0))
    boi: int = attrs.field(validator=integer(at_least=0))
    eoi: int = attrs.field(validator=integer(at_least=0))
    image_placeholder_id: int = attrs.field(validator=integer(at_least=0))
    latent_dim: int = attrs.field(default=64, validator=integer(at_least=1))
    rope_theta: float = attrs.field(default=1e6, validator=finite_number(above=1.0))
    max_seq_len: int = attrs.field(default=131072, validator=integer(at_least=1))
    lm_loss_weight: float = attrs.field(default=0.01, validator=_non_negative_weight)
    image_loss_weight: float = attrs.field(default=1.0, validator=_non_negative_weight)
    tie_word_embeddings: bool = attrs.field(default=False, validator=boolean())
    use_gen_pos_embed: bool = attrs.field(default=False, validator=boolean())
    gen_pos_grid: int = attrs.field(default=32, validator=integer(at_least=1))
    init_std: float = attrs.field(default=0.02, validator=finite_number(above=0.0))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.layer, DecoderLayerConfig):
            raise TypeError(
                f"NextStep1Config.layer must be a DecoderLayerConfig, got {type(self.layer).__name__}"
            )
        if not isinstance(self.head, FlowHeadConfig):
            raise TypeError(f"NextStep1Config.head must be a FlowHeadConfig, got {type(self.head).__name__}")
        if self.head.cond_dim != self.layer.dim:
            raise ValueError(
                f"NextStep1Config.head.cond_dim = {self.head.cond_dim} but the decoder width is "
                f"{self.layer.dim}; build the head with cond_dim={self.layer.dim}"
            )
        if self.head.latent_dim != self.latent_dim:
            raise ValueError(
                f"NextStep1Config.head.latent_dim = {self.head.latent_dim} but latent_dim = "
                f"{self.latent_dim}; the head predicts the image tokens the model reads"
            )
        ids = {name: getattr(self, name) for name in SPECIAL_FIELDS}
        for name, value in ids.items():
            if value >= self.vocab_size:
                raise ValueError(
                    f"NextStep1Config.{name} = {value} is outside the vocabulary [0, {self.vocab_size}); "
                    "raise vocab_size or fix the id"
                )
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"NextStep1Config special ids must be distinct, got {ids}")
        if self.use_gen_pos_embed and self.layer.dim % 4:
            raise ValueError(
                f"use_gen_pos_embed needs a decoder width divisible by 4 (2D sin-cos), got {self.layer.dim}"
            )
        self.rope()  # validates head_dim

    @property
    def dim(self) -> int:
        return self.layer.dim

    @property
    def head_dim(self) -> int:
        return self.layer.head_dim or self.layer.dim // self.layer.num_heads

    def rope(self) -> RoPE1D:
        return RoPE1D(head_dim=self.head_dim, theta=self.rope_theta)

    def build(self) -> NextStep1:
        from nxrecipes.nextstep1.model import NextStep1

        return NextStep1(self)


def _fields(defaults: dict[str, Any], head: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``changes``; without an explicit ``head`` the head is built to match
    the (possibly changed) decoder width and latent width."""
    fields = {**defaults, **changes}
    if "head" not in changes:
        layer = fields["layer"]
        fields["head"] = None if not isinstance(layer, DecoderLayerConfig) else FlowHeadConfig(
            cond_dim=layer.dim, latent_dim=fields.get("latent_dim", 64), **head
        )  # None: the config then names the bad layer
    return fields


def nextstep1_tiny(**changes: Any) -> NextStep1Config:
    """A CPU-sized NextStep-1: 4 layers of width 128 (4 query heads over 2 kv heads, head 32, MLP
    352), head width 128 depth 3, 64-wide image tokens, a 1024-id text vocabulary followed by the
    five specials (pad 1024, image_area 1025, boi 1026, eoi 1027, placeholder 1028; 1032 ids)."""
    defaults: dict[str, Any] = {
        "layer": DecoderLayerConfig(dim=128, num_heads=4, num_kv_heads=2, hidden=352, norm_eps=1e-5),
        "num_layers": 4,
        "vocab_size": 1032,
        "pad_id": 1024,
        "image_area_id": 1025,
        "boi": 1026,
        "eoi": 1027,
        "image_placeholder_id": 1028,
        "rope_theta": 10000.0,
        "max_seq_len": 4096,
    }
    return NextStep1Config(**_fields(defaults, {"width": 128, "depth": 3}, changes))


def nextstep1_14b(**changes: Any) -> NextStep1Config:
    """NextStep-1-Large: Qwen2.5-14B (48 layers, width 5120, 40 query / 8 kv heads of 128, MLP 13824,
    RMSNorm eps 1e-5, q/k/v bias, rope theta 1e6, vocabulary 152064, untied) + the 1536 x 12
    flow-matching head; about 14.95 B parameters."""
    defaults: dict[str, Any] = {
        "layer": DecoderLayerConfig(dim=5120, num_heads=40, num_kv_heads=8, head_dim=128, hidden=13824,
                                    norm_eps=1e-5),
        "num_layers": 48,
        "vocab_size": QWEN25_14B_VOCAB,
        "pad_id": 151665,
        "image_area_id": 151666,
        "boi": 151667,
        "eoi": 151668,
        "image_placeholder_id": 151669,
        "rope_theta": 1e6,
    }
    return NextStep1Config(**_fields(defaults, {"width": 1536, "depth": 12}, changes))
