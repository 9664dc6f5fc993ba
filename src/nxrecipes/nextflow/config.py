"""``NextFlowConfig``: the decoder, the unified vocabulary and the image-input choices of NextFlow,
and the builders ``nextflow_tiny`` (trains on 2 CPU cores) and ``nextflow_7b`` (Qwen2.5-VL-7B).

A config is a tree of component configs; each ablation of the paper is one field:

- ``inputs``: ``"residual"`` (§2.2, default: each scale's own code embeddings up-sampled to the next
  grid) or ``"accumulated"`` (VAR: the running sum, down-sampled);
- ``head``: ``LinearHeadConfig`` over the padded unified vocabulary (one shared head, the paper's
  choice) or ``SplitHeadConfig`` with one range per vocabulary part (the separate-heads ablation,
  Fig. 9); ``separate_heads(config)`` makes the second from the first.

The rotary encoder is NextFlow's multiscale 3D RoPE (``rope_*`` fields); images add a learned scale
embedding (``max_scales`` rows) and the sinusoidal scale-length embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from nxcore.config import Config, boolean, config, finite_number, integer, one_of
from nxcore.head import LinearHeadConfig, SplitHeadConfig
from nxcore.nn import DecoderLayerConfig
from nxcore.position import MultiscaleRoPE3D
from nxcore.tokenizer import Vocabulary
from nxcore.tokenizer.multiscale.config import DOWN_MODES, INPUT_MODES, UP_MODES

if TYPE_CHECKING:
    from nxrecipes.nextflow.model import NextFlow

__all__ = ["NextFlowConfig", "nextflow_7b", "nextflow_tiny", "separate_heads"]

QWEN25_VL_7B_TEXT_VOCAB = 152064


def _sections(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


@config
class NextFlowConfig(Config):
    """One decoder over text ids and multi-scale image codes (module docstring).

    ``code_dim``: width of the tokenizer's code features (``tokenizer.embed_codes``), from which the
    visual code embeddings are initialised; ``up``/``down``: the resampling of next-scale inputs
    (the tokenizer's own modes). ``max_seq_len``: the longest sequence generation accepts (prompt +
    generated tokens). ``init_std``: the N(0, init_std) init of linear and embedding
    weights (Qwen2's ``initializer_range``). ``refiner_blocks``: residual 3x3 convolution blocks
    (``GridRefiner``) over each image scale's grid of final hidden states before the head; 0 (the
    paper's plain decoder) builds none. ``grid_positions``: add each image token's place on its grid
    (``GridPositionEmbedding`` through a learned projection) to its input, so cells that share an
    up-sampled input differ before attention; off (the paper's RoPE-only inputs) by default."""

    layer: DecoderLayerConfig
    num_layers: int = attrs.field(validator=integer(at_least=1))
    vocabulary: Vocabulary
    code_dim: int = attrs.field(validator=integer(at_least=1))
    head: LinearHeadConfig | SplitHeadConfig | None = None
    inputs: str = attrs.field(default="residual", validator=one_of(*INPUT_MODES))
    up: str = attrs.field(default="bicubic", validator=one_of(*UP_MODES))
    down: str = attrs.field(default="area", validator=one_of(*DOWN_MODES))
    max_scales: int = attrs.field(default=18, validator=integer(at_least=1))
    max_seq_len: int = attrs.field(default=32768, validator=integer(at_least=1))
    rope_theta: float = attrs.field(default=1e6, validator=finite_number(above=1.0))
    rope_sections: tuple[int, ...] | None = attrs.field(default=None, converter=_sections)
    range_factor: float = attrs.field(default=64.0, validator=finite_number(above=0.0))
    init_std: float = attrs.field(default=0.02, validator=finite_number(above=0.0))
    refiner_blocks: int = attrs.field(default=0, validator=integer(at_least=0))
    grid_positions: bool = attrs.field(default=False, validator=boolean())

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.layer, DecoderLayerConfig):
            raise TypeError(
                f"NextFlowConfig.layer must be a DecoderLayerConfig, got {type(self.layer).__name__}"
            )
        if not isinstance(self.vocabulary, Vocabulary):
            raise TypeError(
                f"NextFlowConfig.vocabulary must be a Vocabulary (Vocabulary.from_tokenizer(...)), got "
                f"{type(self.vocabulary).__name__}"
            )
        head = self.resolved_head
        if head.dim != self.layer.dim:
            raise ValueError(
                f"NextFlowConfig.head.dim = {head.dim} but the decoder width is {self.layer.dim}; build the "
                "head with the model's width"
            )
        width = head.vocab_size if isinstance(head, LinearHeadConfig) else sum(head.range_sizes)
        if width != self.vocabulary.padded_size:
            raise ValueError(
                f"NextFlowConfig.head covers {width} ids but the vocabulary has padded_size "
                f"{self.vocabulary.padded_size}; size the head to the whole unified vocabulary"
            )
        self.rope()  # validates head_dim / sections

    @property
    def resolved_head(self) -> LinearHeadConfig | SplitHeadConfig:
        """``head``, or the shared linear head over the padded vocabulary when None."""
        if self.head is not None:
            return self.head
        return LinearHeadConfig(dim=self.layer.dim, vocab_size=self.vocabulary.padded_size)

    @property
    def head_dim(self) -> int:
        return self.layer.head_dim or self.layer.dim // self.layer.num_heads

    def rope(self) -> MultiscaleRoPE3D:
        return MultiscaleRoPE3D(head_dim=self.head_dim, theta=self.rope_theta, sections=self.rope_sections,
                                range_factor=self.range_factor)

    def build(self) -> NextFlow:
        from nxrecipes.nextflow.model import NextFlow

        return NextFlow(self)


def separate_heads(cfg: NextFlowConfig) -> NextFlowConfig:
    """The Fig. 9 ablation: one projection (and softmax) per vocabulary part — text (with its
    specials), visual codes, then the tail specials and padding when there are any."""
    v = cfg.vocabulary
    sizes = [v.text_size, v.codebook_size]
    if v.padded_size > v.text_size + v.codebook_size:
        sizes.append(v.padded_size - v.text_size - v.codebook_size)
    return cfg.replace(head=SplitHeadConfig(dim=cfg.layer.dim, range_sizes=tuple(sizes)))


def nextflow_tiny(vocabulary: Vocabulary, code_dim: int, **changes: Any) -> NextFlowConfig:
    """A CPU-sized NextFlow: 4 layers of width 128 (4 query heads over 2 kv heads, head 32, MLP 352),
    RoPE sections (4, 6, 6), C = 16 (the final grid side of ShapeWorld 64 px at downsample 4)."""
    fields: dict[str, Any] = {
        "layer": DecoderLayerConfig(dim=128, num_heads=4, num_kv_heads=2, hidden=352, norm_eps=1e-6),
        "num_layers": 4,
        "vocabulary": vocabulary,
        "code_dim": code_dim,
        "rope_theta": 10000.0,
        "rope_sections": (4, 6, 6),
        "range_factor": 16.0,
        "max_seq_len": 4096,
    }
    fields.update(changes)
    return NextFlowConfig(**fields)


def nextflow_7b(vocabulary: Vocabulary | None = None, code_dim: int = 40, **changes: Any) -> NextFlowConfig:
    """Qwen2.5-VL-7B's decoder: 28 layers, width 3584, 28 query / 4 kv heads (head 128), MLP 18944,
    rope theta 1e6, sections (16, 24, 24), RMSNorm eps 1e-6, q/k/v bias. Default vocabulary: the
    152064 text ids (``<boi>``/``<eoi>`` among Qwen's spare slots) + 16384 codes, padded to 128;
    ``code_dim`` 40: TokenFlow's 32 + 8 halves."""
    if vocabulary is None:
        vocabulary = Vocabulary(text_size=QWEN25_VL_7B_TEXT_VOCAB, codebook_size=16384,
                                text_specials=(("<boi>", 151665), ("<eoi>", 151666)),
                                pad_to_multiple_of=128)
    fields: dict[str, Any] = {
        "layer": DecoderLayerConfig(dim=3584, num_heads=28, num_kv_heads=4, hidden=18944, norm_eps=1e-6),
        "num_layers": 28,
        "vocabulary": vocabulary,
        "code_dim": code_dim,
    }
    fields.update(changes)
    return NextFlowConfig(**fields)
