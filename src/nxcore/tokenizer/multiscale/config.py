"""Configs of the multi-scale residual VQ tokenizer: ``QuantizerConfig`` and ``MultiScaleVQConfig``.

``QuantizerConfig`` holds what the residual loop needs: the shared codebook (``codebook_size`` x
``code_dim``), the distance (``normalize``), the commitment weight ``beta``, the φ refinement convs
(``phi_count``, ``phi_ratio``, ``phi_ticks``), the resampling modes (``down``, ``up``) and how
next-scale transformer inputs are formed (``inputs``). ``MultiScaleVQConfig`` adds the LDM-style CNN
around it (VAR's ``ddconfig``) and the ``quant_conv`` / ``post_quant_conv`` kernel.

VAR-compatible values (the released ``vae_ch160v4096z32.pth``, built by ``var_vqvae``): ch 160,
ch_mult (1, 1, 2, 2, 4), 2 ResNet blocks per level, self-attention at the lowest level and in the mid
block, GroupNorm(32), 3x3 quant convs, 4096 codes of width 32, plain squared-L2 search, β 0.25, four
φ convs blended at 0.5 and chosen by VAR's tick rule, area down-sampling, bicubic up-sampling,
accumulated next-scale inputs. Set ``inputs="residual"`` for NextFlow's inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

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

if TYPE_CHECKING:
    from nxcore.tokenizer.multiscale.quantizer import MultiScaleQuantizer
    from nxcore.tokenizer.multiscale.tokenizer import MultiScaleVQTokenizer

__all__ = [
    "DOWN_MODES",
    "INPUT_MODES",
    "PHI_TICKS",
    "UP_MODES",
    "MultiScaleVQConfig",
    "QuantizerConfig",
    "multiscale_vq_tiny",
    "var_vqvae",
]

DOWN_MODES = ("area", "bilinear", "bicubic", "nearest", "nearest-exact")
UP_MODES = ("bicubic", "bilinear", "nearest", "nearest-exact")
PHI_TICKS = ("var", "uniform")
INPUT_MODES = ("accumulated", "residual")

InputMode = Literal["accumulated", "residual"]


def _odd(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value % 2 == 0:
        raise ValueError(
            f"{type(instance).__qualname__}.{attribute.name} = {value!r} is not allowed; expected an odd "
            "kernel size (1 or 3), so the quant convs keep the latent grid's size"
        )


@config
class QuantizerConfig(Config):
    """The multi-scale residual quantizer (module docstring; ``quantizer.py`` for the algorithm).

    - ``phi_count``: number of φ convs (3x3, code_dim -> code_dim); 0 = no refinement. VAR's
      ``share_quant_resi``: 4 (released), 1 (one shared φ) or the number of steps (one per step).
    - ``phi_ratio``: the blend r in ``φ(h) = (1 - r)·h + r·conv(h)`` (VAR's ``quant_resi``, 0.5).
    - ``phi_ticks``: which φ a step uses. Step k of K sits at ``k / (K - 1)`` and takes the φ whose
      tick is nearest (ties to the lower). ``"var"``: ticks ``linspace(1/(3n), 1 - 1/(3n), n)`` when
      n = 4 and ``linspace(1/(2n), 1 - 1/(2n), n)`` otherwise (VAR's quirk); ``"uniform"``: the latter
      for every n.
    - ``down``: resampling of the residual to a step's grid (VAR: ``"area"``); ``up``: of a step's
      code map to the final grid (VAR: ``"bicubic"``) and, in residual mode, to the next step's grid.
      A map already at the target size is never resampled.
    - ``normalize``: L2-normalise features and codewords before the search (VAR's ``using_znorm``).
    - ``beta``: commitment weight in ``codebook_loss + beta * commitment_loss`` (VAR: 0.25).
    - ``inputs``: next-scale transformer inputs, ``"accumulated"`` (VAR: the running reconstruction
      down-sampled to the next grid) or ``"residual"`` (NextFlow: each step's own codebook features
      up-sampled to the next grid, no accumulation).
    """

    codebook_size: int = attrs.field(default=4096, validator=integer(at_least=1))
    code_dim: int = attrs.field(default=32, validator=integer(at_least=1))
    beta: float = attrs.field(default=0.25, validator=[finite_number(), non_negative()])
    normalize: bool = attrs.field(default=False, validator=boolean())
    phi_count: int = attrs.field(default=4, validator=integer(at_least=0))
    phi_ratio: float = attrs.field(default=0.5, validator=finite_number(above=0.0, at_most=1.0))
    phi_ticks: str = attrs.field(default="var", validator=one_of(*PHI_TICKS))
    down: str = attrs.field(default="area", validator=one_of(*DOWN_MODES))
    up: str = attrs.field(default="bicubic", validator=one_of(*UP_MODES))
    inputs: str = attrs.field(default="accumulated", validator=one_of(*INPUT_MODES))

    def build(self) -> MultiScaleQuantizer:
        from nxcore.tokenizer.multiscale.quantizer import MultiScaleQuantizer

        return MultiScaleQuantizer(self)


@config
class MultiScaleVQConfig(Config):
    """The VAR-style VQVAE: LDM CNN encoder/decoder, quant convs, a ``QuantizerConfig``.

    Widths per level are ``ch * ch_mult[i]``; the encoder halves the map ``len(ch_mult) - 1`` times
    (``downsample`` = 16 for five levels). ``level_attention`` puts a self-attention block after every
    ResNet block of the lowest-resolution level (encoder and decoder); ``mid_attention`` one in each
    mid block. GroupNorms use ``norm_groups`` groups (VAR: 32; smaller only for tiny test models).
    ``clamp`` clamps decoded images to [-1, 1] (VAR's ``fhat_to_img``).
    """

    in_channels: int = attrs.field(default=3, validator=integer(at_least=1))
    ch: int = attrs.field(default=160, validator=integer(at_least=1))
    ch_mult: tuple[int, ...] = attrs.field(default=(1, 1, 2, 2, 4), converter=as_tuple,
                                        validator=channel_multipliers((1, 1, 2, 2, 4)))
    num_res_blocks: int = attrs.field(default=2, validator=integer(at_least=1))
    norm_groups: int = attrs.field(default=32, validator=integer(at_least=1))
    level_attention: bool = attrs.field(default=True, validator=boolean())
    mid_attention: bool = attrs.field(default=True, validator=boolean())
    quant_conv_kernel: int = attrs.field(default=3, validator=[integer(at_least=1), _odd])
    clamp: bool = attrs.field(default=True, validator=boolean())
    quantizer: QuantizerConfig = attrs.field(factory=QuantizerConfig)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.quantizer, QuantizerConfig):
            raise TypeError(
                f"MultiScaleVQConfig.quantizer must be a QuantizerConfig, got {type(self.quantizer).__name__}"
            )
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(
                    f"MultiScaleVQConfig: channel width {width} (ch {self.ch} x ch_mult {self.ch_mult}) is "
                    f"not divisible by norm_groups = {self.norm_groups}; GroupNorm needs whole groups. "
                    "Pick ch and norm_groups so that every ch * m is a multiple of norm_groups"
                )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level, highest resolution first."""
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample(self) -> int:
        """Pixels per code along each side (16 for VAR)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def z_channels(self) -> int:
        """Width of the encoder output and of the quant convs: the codebook's ``code_dim``."""
        return self.quantizer.code_dim

    def build(self) -> MultiScaleVQTokenizer:
        from nxcore.tokenizer.multiscale.tokenizer import MultiScaleVQTokenizer

        return MultiScaleVQTokenizer(self)


def var_vqvae(*, inputs: InputMode = "accumulated", **changes: Any) -> MultiScaleVQConfig:
    """VAR's released VQVAE ``vae_ch160v4096z32.pth``: every VAR quirk on (module docstring).

    ``inputs="residual"`` keeps the weights and the codes and changes only the transformer inputs.
    """
    return MultiScaleVQConfig(quantizer=QuantizerConfig(inputs=inputs), **changes)


def multiscale_vq_tiny(**changes: Any) -> MultiScaleVQConfig:
    """A CPU-sized tokenizer for tests: ch 8, two levels (downsample 2), 32 codes of width 4, two φ.

    ``changes`` may hold CNN fields and any ``QuantizerConfig`` field (routed to the quantizer).
    """
    quantizer_fields = {f.name for f in attrs.fields(QuantizerConfig)}
    q = {"codebook_size": 32, "code_dim": 4, "phi_count": 2}
    q.update({k: v for k, v in changes.items() if k in quantizer_fields})
    fields: dict[str, Any] = {
        "ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "norm_groups": 4, "quantizer": QuantizerConfig(**q)
    }
    fields.update({k: v for k, v in changes.items() if k not in quantizer_fields})
    return MultiScaleVQConfig(**fields)
