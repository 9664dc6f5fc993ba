"""Configs of the dual-codebook (TokenFlow-style) multi-scale VQ tokenizer of NextFlow.

- ``SemanticConfig``: the semantic branch, a small ViT encoder over ``downsample``-pixel patches
  (``width``, ``depth``, ``heads``, ``mlp_ratio``) with TokenFlow's ``encode_task_layer`` (Linear →
  Tanh → Linear to the semantic code width ``sem_dim``), and the semantic decoder
  (``decoder_width``, ``decoder_depth``; patch size 1 over the quantized semantic codes) with
  ``decode_task_layer`` to the teacher's width ``teacher_dim`` (None: the ViT's own ``width``, the
  frozen-copy teacher).
- ``PixelConfig``: the CNN pixel branch (the LDM/VAR CNN of ``multiscale/cnn.py``), its
  ``z_channels`` and TokenFlow's 1x1 ``quant_conv`` to the pixel code width ``pix_dim``;
  ``decoder_ch`` / ``decoder_res_blocks`` give the "doubled capacity" pixel decoder of NextFlow §3.1
  (TokenFlow's enhanced decoder: ch 256, 4 blocks).
- ``DualCodebookConfig``: both branches, the code widths ``sem_dim`` / ``pix_dim`` of the two
  codebooks, one shared index space of ``codebook_size`` rows, the search
  weights ``w_sem`` / ``w_pix`` (index = argmin w_sem·d_sem + w_pix·d_pix over L2-normalised halves),
  the resampling modes, the next-scale input mode (``"residual"``, NextFlow's default, or
  ``"accumulated"``), the loss weights, ``scale_drop`` (fraction of steps 2..K dropped in each
  training forward, NextFlow §3.1: 50%), and how the residual loop uses the codewords
  (``unit_codewords``, ``vq_loss``: TokenFlow's unit codewords and per-step loss, or VAR's raw
  codewords and cumulative loss).

TokenFlow's released SigLIP tokenizer: 32768 codes, semantic half 32, pixel half 8, CNN ch 128,
ch_mult (1, 1, 2, 2, 4), z 256, w 1.0, unit codewords (``tokenflow_like``). ``dual_tiny`` is the
CPU-sized default, with raw codewords and the cumulative loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from nxcore.config import (
    Config,
    as_tuple,
    boolean,
    channel_multipliers,
    config,
    finite_number,
    integer,
    non_negative,
    one_of,
)
from nxcore.tokenizer.multiscale.config import (
    DOWN_MODES,
    INPUT_MODES,
    UP_MODES,
    MultiScaleVQConfig,
    QuantizerConfig,
)

if TYPE_CHECKING:
    from nxcore.tokenizer.dual.tokenizer import DualCodebookTokenizer

__all__ = ["VQ_LOSSES", "DualCodebookConfig", "PixelConfig", "SemanticConfig", "dual_tiny", "tokenflow_like"]

VQ_LOSSES = ("step", "cumulative")
"""``DualCodebookConfig.vq_loss``: TokenFlow's per-step loss or VAR's cumulative one."""


def _optional_int(at_least: int):
    check = integer(at_least=at_least)

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return validate


@config
class SemanticConfig(Config):
    """The semantic branch: ViT encoder (patch = the pixel branch's ``downsample``, so both branches
    give the same latent grid), 2-D sin-cos positions computed per grid (any size or aspect), and the
    semantic decoder. ``teacher_dim``: width of the teacher features the decoder predicts (None: the
    ViT ``width``, which is what the default frozen-copy teacher gives)."""

    width: int = attrs.field(default=64, validator=integer(at_least=1))
    depth: int = attrs.field(default=2, validator=integer(at_least=1))
    heads: int = attrs.field(default=2, validator=integer(at_least=1))
    mlp_ratio: float = attrs.field(default=4.0, validator=finite_number(above=0.0))
    decoder_width: int = attrs.field(default=64, validator=integer(at_least=1))
    decoder_depth: int = attrs.field(default=1, validator=integer(at_least=1))
    teacher_dim: int | None = attrs.field(default=None, validator=_optional_int(1))

    def __attrs_post_init__(self) -> None:
        for name in ("width", "decoder_width"):
            if getattr(self, name) % self.heads:
                raise ValueError(
                    f"SemanticConfig.{name} = {getattr(self, name)} is not divisible by heads = "
                    f"{self.heads}; pick widths that are multiples of heads"
                )
        for name in ("width", "decoder_width"):
            if getattr(self, name) % 4:
                raise ValueError(
                    f"SemanticConfig.{name} = {getattr(self, name)} is not a multiple of 4; the 2-D sin-cos "
                    "positions need 4 channels per frequency"
                )

    @property
    def target_dim(self) -> int:
        """Width of the semantic target (``teacher_dim``, or ``width`` for the frozen copy)."""
        return self.width if self.teacher_dim is None else self.teacher_dim


@config
class PixelConfig(Config):
    """The CNN pixel branch (``multiscale/cnn.py``'s Encoder/Decoder): widths ``ch * ch_mult[i]``,
    ``downsample = 2 ** (len(ch_mult) - 1)``, latent ``z_channels``, then a 1x1 ``quant_conv`` to the
    pixel code width (and ``post_quant_conv`` back). ``decoder_ch`` / ``decoder_res_blocks`` (None:
    as the encoder) size the decoder alone."""

    in_channels: int = attrs.field(default=3, validator=integer(at_least=1))
    ch: int = attrs.field(default=128, validator=integer(at_least=1))
    ch_mult: tuple[int, ...] = attrs.field(default=(1, 1, 2, 2, 4), converter=as_tuple,
                                        validator=channel_multipliers((1, 1, 2, 2, 4)))
    num_res_blocks: int = attrs.field(default=2, validator=integer(at_least=1))
    norm_groups: int = attrs.field(default=32, validator=integer(at_least=1))
    level_attention: bool = attrs.field(default=True, validator=boolean())
    mid_attention: bool = attrs.field(default=True, validator=boolean())
    z_channels: int = attrs.field(default=256, validator=integer(at_least=1))
    decoder_ch: int | None = attrs.field(default=None, validator=_optional_int(1))
    decoder_res_blocks: int | None = attrs.field(default=None, validator=_optional_int(1))

    def __attrs_post_init__(self) -> None:
        self.cnn(decoder=False)  # runs MultiScaleVQConfig's GroupNorm checks with our field names
        self.cnn(decoder=True)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def cnn(self, *, decoder: bool) -> MultiScaleVQConfig:
        """The ``MultiScaleVQConfig`` the shared CNN Encoder / Decoder are built from."""
        ch = (self.decoder_ch or self.ch) if decoder else self.ch
        blocks = (self.decoder_res_blocks or self.num_res_blocks) if decoder else self.num_res_blocks
        for width in (ch * m for m in self.ch_mult):
            if width % self.norm_groups:
                field = "decoder_ch" if decoder and self.decoder_ch else "ch"
                raise ValueError(
                    f"PixelConfig: channel width {width} ({field} {ch} x ch_mult {self.ch_mult}) is not "
                    f"divisible by norm_groups = {self.norm_groups}; GroupNorm needs whole groups"
                )
        return MultiScaleVQConfig(
            in_channels=self.in_channels, ch=ch, ch_mult=self.ch_mult, num_res_blocks=blocks,
            norm_groups=self.norm_groups, level_attention=self.level_attention,
            mid_attention=self.mid_attention, clamp=False,
            quantizer=QuantizerConfig(code_dim=self.z_channels, codebook_size=1, phi_count=0),
        )


@config
class DualCodebookConfig(Config):
    """The dual-codebook tokenizer (module docstring). ``beta``: commitment weight in the VQ loss
    ``codebook + beta·commitment``; ``semantic_weight``, ``recon_weight``, ``perceptual_weight``
    weigh the semantic cosine loss, the L2 reconstruction and the optional perceptual hook.

    How the residual loop uses the codewords:

    - ``normalize``: True (TokenFlow, the default) searches by cosine (features and codewords
      L2-normalised, VAR's ``using_znorm``); False by Euclidean distance. With raw codewords
      (``unit_codewords=False``) the cosine search ignores the codeword's length: where the residual
      is small (flat regions) it adds a codeword several times larger than the residual, which the
      next scale must undo, so flat regions get noisy, high-entropy codes.

    - ``unit_codewords``: True (TokenFlow's ``codebook_l2_norm``, the default) adds the L2-normalised
      codeword of every cell at every step, so each step adds a vector of norm 1 whatever the
      residual's size; False (VAR's ``using_znorm``) adds the raw codeword, whose length is learned.
    - ``vq_loss``: ``"step"`` (TokenFlow) compares each step's codewords with the residual it
      quantized (both unit vectors in the search); ``"cumulative"`` (VAR) compares the running
      f̂_k with the features after every step, which is what teaches raw codewords their length.

    From scratch on a small budget TokenFlow's pair (True, ``"step"``) collapses the codebook (on
    ShapeWorld 64 px, 400 updates, 256 codes: 42% in use, perplexity 7, where (False,
    ``"cumulative"``) uses all, perplexity 196, and gains 1.2 dB); ``dual_tiny`` uses (False,
    ``"cumulative"``), as the multi-scale VQ does.

    - ``restart_every``: dead-code restarts (``multiscale/restart.py``): every that many training
      forwards, each code no cell picked since the last restart moves onto a residual row the search
      fit worst. 0 (default) never restarts. What keeps Euclidean search (``normalize=False``) from
      collapsing onto a few codes when trained from scratch.
    """

    codebook_size: int = attrs.field(default=16384, validator=integer(at_least=1))
    semantic: SemanticConfig = attrs.field(factory=SemanticConfig)
    pixel: PixelConfig = attrs.field(factory=PixelConfig)
    sem_dim: int = attrs.field(default=32, validator=integer(at_least=1))
    pix_dim: int = attrs.field(default=8, validator=integer(at_least=1))
    w_sem: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    w_pix: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    down: str = attrs.field(default="area", validator=one_of(*DOWN_MODES))
    up: str = attrs.field(default="bicubic", validator=one_of(*UP_MODES))
    inputs: str = attrs.field(default="residual", validator=one_of(*INPUT_MODES))
    beta: float = attrs.field(default=0.25, validator=[finite_number(), non_negative()])
    semantic_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    recon_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    perceptual_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    scale_drop: float = attrs.field(default=0.5, validator=finite_number(at_most=1.0))
    clamp: bool = attrs.field(default=True, validator=boolean())
    unit_codewords: bool = attrs.field(default=True, validator=boolean())
    vq_loss: str = attrs.field(default="step", validator=one_of(*VQ_LOSSES))
    normalize: bool = attrs.field(default=True, validator=boolean())
    restart_every: int = attrs.field(default=0, validator=integer(at_least=0))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.semantic, SemanticConfig):
            raise TypeError(
                f"DualCodebookConfig.semantic must be a SemanticConfig, got {type(self.semantic).__name__}"
            )
        if not isinstance(self.pixel, PixelConfig):
            raise TypeError(
                f"DualCodebookConfig.pixel must be a PixelConfig, got {type(self.pixel).__name__}"
            )
        if self.w_sem == 0 and self.w_pix == 0:
            raise ValueError(
                "DualCodebookConfig: w_sem and w_pix are both 0, so every codeword would tie; give one a "
                "weight > 0 (w_sem=0 searches with the pixel half alone, e.g. for pixel-only training)"
            )
        if self.scale_drop < 0:
            raise ValueError(
                f"DualCodebookConfig.scale_drop = {self.scale_drop!r} is not allowed; expected a fraction "
                "in [0, 1] of the steps after the first to drop in each training forward"
            )

    @property
    def downsample(self) -> int:
        return self.pixel.downsample

    @property
    def code_dim(self) -> int:
        """Width of ``embed_codes`` / ``next_scale_inputs``: semantic half + pixel half."""
        return self.sem_dim + self.pix_dim

    def build(self) -> DualCodebookTokenizer:
        from nxcore.tokenizer.dual.tokenizer import DualCodebookTokenizer

        return DualCodebookTokenizer(self)


def tokenflow_like(**changes: Any) -> DualCodebookConfig:
    """TokenFlow's SigLIP-teacher sizes (codebook 32768, halves 32 + 8, CNN ch 128 / z 256, w 1.0) with
    NextFlow's residual inputs and 50% scale dropping. The ViT here is ours, not SigLIP: pass the
    teacher module (``load_teacher``) and set ``semantic.teacher_dim`` to its width (1152 for SigLIP)."""
    fields: dict[str, Any] = {
        "codebook_size": 32768,
        "sem_dim": 32,
        "semantic": SemanticConfig(width=768, depth=12, heads=12, decoder_width=768,
                                   decoder_depth=3),
    }
    fields.update(changes)
    return DualCodebookConfig(**fields)


def dual_tiny(**changes: Any) -> DualCodebookConfig:
    """A CPU-sized tokenizer for tests and toy training: downsample 2, 32 codes, halves 8 + 4, a
    one-block ViT of width 16 and a one-block semantic decoder; raw codewords with cosine search and
    the cumulative VQ loss (``unit_codewords=False``, ``vq_loss="cumulative"``: TokenFlow's unit
    codewords collapse the codebook when trained from scratch on a small budget, ``DualCodebookConfig``).

    ``changes`` may hold ``DualCodebookConfig`` fields, and ``SemanticConfig`` / ``PixelConfig``
    fields by name (routed to the branch; the branches share no field names but ``in_channels``,
    which goes to the pixel branch).
    """
    sem_fields = {f.name for f in attrs.fields(SemanticConfig)}
    pix_fields = {f.name for f in attrs.fields(PixelConfig)}
    sem: dict[str, Any] = {"width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0,
                           "decoder_width": 16, "decoder_depth": 1}
    pix: dict[str, Any] = {"ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "norm_groups": 4, "z_channels": 8,
                           "level_attention": False, "mid_attention": False}
    top: dict[str, Any] = {"codebook_size": 32, "sem_dim": 8, "pix_dim": 4, "unit_codewords": False,
                           "vq_loss": "cumulative"}
    for key, value in changes.items():
        (sem if key in sem_fields else pix if key in pix_fields else top)[key] = value
    return DualCodebookConfig(semantic=SemanticConfig(**sem), pixel=PixelConfig(**pix), **top)
