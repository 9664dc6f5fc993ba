"""``NextStepAutoencoder``: NextStep-1's f8ch16 autoencoder as a ``ContinuousImageTokenizer``.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels, multiples of ``downsample``
    z               latent channels (z_channels, 16)
    lh, lw          latent map: height / spatial_factor, width / spatial_factor (f8: / 8)
    h, w            token grid: height / downsample, width / downsample (/ 16)
    latent_dim      z * patch_size**2 (64)

``encode`` uses the **posterior mean** (no sampling): encoder -> mean -> LayerNorm of each
``norm_patch_size``-patch (when ``encoder_norm``) -> ``(z - shift) * scale`` -> 2x2 patchify into
tokens in raster order. ``decode`` inverts the last two steps and runs the decoder. NextStep-1's
pipelines call ``posterior.sample()`` instead, which equals the mean when the tokenizer's
``deterministic`` flag is set; ``sample_posterior`` draws from the posterior for the other case.

Training (σ-VAE-style noise perturbation, NextStep-1 §tokenizer): ``reconstruction_loss`` encodes,
adds ``perturb`` noise α·ε with α ~ U[0, γ] per sample to the normalised latent map, decodes, and
returns the L2 reconstruction error plus an optional KL term. The maintainers report γ = 0.2; no
noise is added at inference.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.tokenizer.autoencoder.config import AutoencoderConfig, autoencoder_tiny
from nxcore.tokenizer.autoencoder.encoder_decoder import Decoder, Encoder
from nxcore.tokenizer.autoencoder.patchify import patch_layer_norm, patchify, unpatchify
from nxcore.tokenizer.protocol import ContinuousImageTokenizer
from nxcore.typing import Float, typecheck

__all__ = [
    "AutoencoderLoss",
    "NextStepAutoencoder",
    "kl_divergence",
    "perturb",
    "perturbation_scales",
    "reconstruction_loss",
    "sample_posterior",
]

LOGVAR_RANGE = (-30.0, 20.0)  # the clamp of the usual diagonal-Gaussian posterior
INIT_STD = 0.02


class NextStepAutoencoder(nn.Module, ContinuousImageTokenizer):
    """Images [B, C, H, W] in [-1, 1] <-> token latents [B, H/16, W/16, 64] (f8ch16, 2x2 patches).

    Sub-modules ``encoder`` and ``decoder`` carry the official state-dict key names, so an official
    ``checkpoint.pt`` loads without renaming (``from_official``).
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = AutoencoderConfig()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(
                f"config must be an AutoencoderConfig, got {type(config).__name__}; build one with "
                "nextstep1_f8ch16() or AutoencoderConfig(...)"
            )
        self.config = config
        self.latent_dim = config.latent_dim
        self.downsample = config.downsample
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.reset_parameters()

    @classmethod
    def examples(cls) -> list[NextStepAutoencoder]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return [
                cls(autoencoder_tiny()),
                cls(autoencoder_tiny(ch_mult=(1, 2, 2), z_channels=16, norm_patch_size=1,
                                     scaling_factor=0.5, shift_factor=0.1)),
                cls(autoencoder_tiny(encoder_norm=False, patch_size=1, norm_patch_size=1)),
            ]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Convolutions: weights N(0, 0.02), biases 0; GroupNorms: weight 1, bias 0."""
        with torch.no_grad():
            for module in self.modules():
                if any(p.is_meta for p in module.parameters(recurse=False)):
                    continue  # built on the meta device: shapes only, nothing to fill
                if isinstance(module, nn.Conv2d):
                    module.weight.normal_(0.0, INIT_STD, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.GroupNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()

    # --- shapes ----------------------------------------------------------------------------------

    def check_images(self, images: object) -> Tensor:
        """Raise a clear error unless ``images`` is a float [B, in_channels, H, W] with H and W
        multiples of ``downsample``."""
        check_tensor("images", images, ndim=4, kind="float")
        channels, height, width = images.shape[1:]
        if channels != self.config.in_channels:
            raise ValueError(
                f"images have {channels} channels but the autoencoder takes in_channels = "
                f"{self.config.in_channels}; pass [batch, {self.config.in_channels}, height, width] images"
            )
        d = self.downsample
        if height % d or width % d:
            fit = f"{_multiple(height, d)}x{_multiple(width, d)}"
            raise ValueError(
                f"images are {height}x{width} (height x width), not multiples of downsample = {d} "
                f"(spatial factor {self.config.spatial_factor} x patch {self.config.patch_size}); resize "
                f"or crop them to multiples of {d}, e.g. {fit}"
            )
        return images

    def check_latents(self, latents: object) -> Tensor:
        check_tensor("latents", latents, ndim=4, kind="float")
        if latents.shape[-1] != self.latent_dim:
            raise ValueError(
                f"latents have width {latents.shape[-1]} but this tokenizer's latent_dim is "
                f"{self.latent_dim}; pass [batch, h, w, {self.latent_dim}] token latents"
            )
        return latents

    # --- encoding --------------------------------------------------------------------------------

    @typecheck
    def posterior(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> tuple[Float[Tensor, "batch z lh lw"], Float[Tensor, "batch z lh lw"]]:
        """(mean, logvar) latent maps; the mean is LayerNorm'd per patch when ``encoder_norm``."""
        self.check_images(images)
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        if self.config.encoder_norm:
            mean = patch_layer_norm(mean, self.config.norm_patch_size)
        return mean, logvar

    @typecheck
    def to_latents(self, z: Float[Tensor, "batch z lh lw"]) -> Float[Tensor, "batch h w latent_dim"]:
        """Latent map -> tokens: ``patchify((z - shift) * scale)``."""
        c = self.config
        return patchify((z - c.shift_factor) * c.scaling_factor, c.patch_size)

    @typecheck
    def to_map(self, latents: Float[Tensor, "batch h w latent_dim"]) -> Float[Tensor, "batch z lh lw"]:
        """Tokens -> latent map: ``unpatchify(latents) / scale + shift`` (inverse of ``to_latents``)."""
        self.check_latents(latents)
        c = self.config
        return unpatchify(latents, c.patch_size) / c.scaling_factor + c.shift_factor

    @typecheck
    def encode(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> Float[Tensor, "batch h w latent_dim"]:
        """Token latents of the posterior mean, [B, H/downsample, W/downsample, latent_dim]."""
        mean, _ = self.posterior(images)
        return self.to_latents(mean)

    @typecheck
    def decode(
        self, latents: Float[Tensor, "batch h w latent_dim"]
    ) -> Float[Tensor, "batch channels height width"]:
        """Images [B, out_channels, h*downsample, w*downsample] (about [-1, 1]; not clamped).

        In fp32 on CPU the latent map enters the decoder channels-last: oneDNN runs its convolutions in
        that layout 20-30% faster at these sizes (the same images up to fp32 rounding); the images come
        out contiguous either way. (Half precisions keep the official layout, whose rounding the
        official-parity checks reproduce exactly.)"""
        z = self.to_map(latents)
        if z.device.type == "cpu" and z.dtype == torch.float32:
            return self.decoder(z.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.decoder(z)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction through the posterior mean: ``decode(encode(images))``."""
        return self.decode(self.encode(images))


def _multiple(size: int, d: int) -> int:
    return max(d, size // d * d)


def _check_gamma(gamma: object) -> float:
    if not isinstance(gamma, int | float) or isinstance(gamma, bool):
        raise TypeError(f"gamma must be a number >= 0 (the maximal noise std), got {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(
            f"gamma must be a finite number >= 0 (the maximal noise std, e.g. 0.2), got {gamma!r}"
        )
    return float(gamma)


def _check_generator(generator: object, like: Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != like.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the latents are on {like.device}; make it with "
            f"torch.Generator(device={str(like.device)!r})"
        )


def perturbation_scales(
    batch: int,
    gamma: float | int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Float[Tensor, " batch"]:
    """α ~ U[0, γ], one per sample (float32): the noise std of each sample in ``perturb``."""
    gamma = _check_gamma(gamma)
    return torch.rand(batch, generator=generator, device=device, dtype=torch.float32) * gamma


@typecheck
def perturb(
    latents: Float[Tensor, "batch ..."], gamma: float | int, generator: torch.Generator | None = None
) -> Float[Tensor, "batch ..."]:
    """latents + α·ε, α ~ U[0, γ] per sample (dim 0), ε ~ N(0, 1) elementwise; γ = 0 is the identity.

    Random draws, in order: the B scales (``perturbation_scales``), then ε.
    """
    gamma = _check_gamma(gamma)
    check_tensor("latents", latents, kind="float")
    _check_generator(generator, latents)
    if gamma == 0:
        return latents
    alpha = perturbation_scales(latents.shape[0], gamma, generator=generator, device=latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    alpha = alpha.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))
    return latents + alpha * noise


@typecheck
def sample_posterior(
    mean: Float[Tensor, "batch ..."], logvar: Float[Tensor, "batch ..."],
    generator: torch.Generator | None = None,
) -> Float[Tensor, "batch ..."]:
    """mean + exp(logvar / 2)·ε, with logvar clamped to [-30, 20] (the usual diagonal Gaussian)."""
    check_tensor("mean", mean, kind="float")
    _check_generator(generator, mean)
    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
    return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


@typecheck
def kl_divergence(
    mean: Float[Tensor, "batch ..."], logvar: Float[Tensor, "batch ..."]
) -> Float[Tensor, " batch"]:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch dim (logvar clamped)."""
    logvar = logvar.clamp(*LOGVAR_RANGE)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


@attrs.frozen
class AutoencoderLoss:
    """``total = l2 + kl_weight * kl``; ``l2`` is the mean squared pixel error, ``kl`` the batch mean
    of the per-image KL sum (0 when ``kl_weight`` is 0 and not computed)."""

    total: Tensor
    l2: Tensor
    kl: Tensor


def reconstruction_loss(
    model: NextStepAutoencoder,
    images: Tensor,
    *,
    kl_weight: float = 0.0,
    gamma: float = 0.0,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> AutoencoderLoss:
    """One training step's loss: encode, (sample,) perturb with α ~ U[0, ``gamma``], decode, compare.

    The noise goes on the normalised latent map before scaling (as in the official training
    forward); ``sample`` draws z from the posterior instead of using its mean. Draws from
    ``generator`` in order: posterior noise (when ``sample``), then the perturbation.
    """
    if not isinstance(model, NextStepAutoencoder):
        raise TypeError(f"model must be a NextStepAutoencoder, got {type(model).__name__}")
    if not isinstance(kl_weight, int | float) or isinstance(kl_weight, bool) or not (
        math.isfinite(kl_weight) and kl_weight >= 0
    ):
        raise ValueError(f"kl_weight must be a finite number >= 0 (e.g. 1e-6), got {kl_weight!r}")
    mean, logvar = model.posterior(images)
    z = sample_posterior(mean, logvar, generator) if sample else mean
    recon = model.decoder(perturb(z, gamma, generator))
    l2 = F.mse_loss(recon.float(), images.float())
    kl = kl_divergence(mean.float(), logvar.float()).mean() if kl_weight > 0 else l2.new_zeros(())
    return AutoencoderLoss(total=l2 + kl_weight * kl, l2=l2, kl=kl)
