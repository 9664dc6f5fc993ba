"""``AutoencoderConfig``: the sizes and latent conventions of the NextStep-1 f8ch16 autoencoder.

Official NextStep-1 tokenizer (``nextstep1_f8ch16``): ch 128, ch_mult (1, 2, 4, 4), 2 ResNet blocks
per encoder level (3 per decoder level), z 16, GroupNorm(32), 8x spatial down-sampling; a 2x2
patchify of the latent map gives 64-dim tokens and a total down-sampling of 16.

Latent conventions (applied in this order by ``encode``; ``decode`` inverts the last three):

1. posterior mean = first ``z_channels`` of the encoder output (the rest is the log-variance);
2. ``encoder_norm``: LayerNorm (no affine, eps 1e-6) of the mean over each
   ``norm_patch_size`` x ``norm_patch_size`` patch of latent pixels (``z_channels * norm_patch_size**2``
   values); with ``norm_patch_size == patch_size`` this is exactly a token-wise LayerNorm;
3. ``(z - shift_factor) * scaling_factor``;
4. ``patch_size`` x ``patch_size`` patchify into tokens (element order c * p**2 + row * p + col,
   tokens in raster order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from nxcore.config import Config, as_tuple, boolean, channel_multipliers, config, finite_number, integer

if TYPE_CHECKING:
    from nxcore.tokenizer.autoencoder.tokenizer import NextStepAutoencoder

__all__ = ["AutoencoderConfig", "autoencoder_tiny", "nextstep1_f8ch16"]


def _non_zero(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value == 0:
        raise ValueError(
            f"{type(instance).__qualname__}.{attribute.name} = 0 is not allowed; decoding divides "
            "by it: use 1.0 for no scaling"
        )


@config
class AutoencoderConfig(Config):
    """Sizes and latent conventions of ``NextStepAutoencoder`` (see the module docstring)."""

    in_channels: int = attrs.field(default=3, validator=integer(at_least=1))
    out_channels: int = attrs.field(default=3, validator=integer(at_least=1))
    ch: int = attrs.field(default=128, validator=integer(at_least=1))
    ch_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4, 4), converter=as_tuple,
                                        validator=channel_multipliers((1, 2, 4, 4)))
    num_res_blocks: int = attrs.field(default=2, validator=integer(at_least=1))
    z_channels: int = attrs.field(default=16, validator=integer(at_least=1))
    norm_groups: int = attrs.field(default=32, validator=integer(at_least=1))
    patch_size: int = attrs.field(default=2, validator=integer(at_least=1))
    encoder_norm: bool = attrs.field(default=True, validator=boolean())
    norm_patch_size: int = attrs.field(default=2, validator=integer(at_least=1))
    scaling_factor: float = attrs.field(default=1.0, validator=[finite_number(), _non_zero])
    shift_factor: float = attrs.field(default=0.0, validator=finite_number())

    def __attrs_post_init__(self) -> None:
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(
                    f"AutoencoderConfig: channel width {width} (ch {self.ch} x ch_mult {self.ch_mult}) is "
                    f"not divisible by norm_groups = {self.norm_groups}; GroupNorm needs whole groups. "
                    "Pick ch and norm_groups so that every ch * m is a multiple of norm_groups"
                )
        if self.patch_size % self.norm_patch_size:
            raise ValueError(
                f"AutoencoderConfig.norm_patch_size = {self.norm_patch_size} must divide patch_size = "
                f"{self.patch_size}, so every token holds whole normalisation patches; use "
                f"norm_patch_size={self.patch_size} (token-wise) or 1 (per latent pixel)"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level, highest resolution first."""
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along each side (8 for f8)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def downsample(self) -> int:
        """Pixels per token along each side (spatial factor x patch size; 16 for NextStep-1)."""
        return self.spatial_factor * self.patch_size

    @property
    def latent_dim(self) -> int:
        """Width of one token: z_channels * patch_size**2 (64 for NextStep-1)."""
        return self.z_channels * self.patch_size**2

    def build(self) -> NextStepAutoencoder:
        from nxcore.tokenizer.autoencoder.tokenizer import NextStepAutoencoder

        return NextStepAutoencoder(self)


def nextstep1_f8ch16(**changes: Any) -> AutoencoderConfig:
    """The NextStep-1 f8ch16 tokenizer's sizes (token-wise LayerNorm, scale 1, shift 0).

    The released checkpoint's own ``config.json`` decides its latent conventions: load it with
    ``from_official`` rather than this builder when reproducing official numbers.
    """
    return AutoencoderConfig(**changes)


def autoencoder_tiny(**changes: Any) -> AutoencoderConfig:
    """A CPU-sized autoencoder for tests: ch 8, two levels, z 4 (latent_dim 16, downsample 4)."""
    fields = {"ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "z_channels": 4, "norm_groups": 4}
    fields.update(changes)
    return AutoencoderConfig(**fields)
