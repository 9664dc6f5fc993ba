"""NextStep-1's f8ch16 autoencoder: a ``ContinuousImageTokenizer`` of 64-dim patch latents.

- ``NextStepAutoencoder`` (``tokenizer.py``): encode/decode, posterior, token conventions;
- ``AutoencoderConfig``, ``nextstep1_f8ch16``, ``autoencoder_tiny`` (``config.py``);
- ``patchify`` / ``unpatchify`` / ``patch_layer_norm`` in the official element order (``patchify.py``);
- training helpers ``perturb``, ``sample_posterior``, ``kl_divergence``, ``reconstruction_loss``;
- ``from_official`` / ``config_from_official``: the official ``config.json`` + ``checkpoint.pt``.
"""

from nxcore.tokenizer.autoencoder.config import AutoencoderConfig, autoencoder_tiny, nextstep1_f8ch16
from nxcore.tokenizer.autoencoder.official import config_from_official, from_official
from nxcore.tokenizer.autoencoder.patchify import patch_layer_norm, patchify, unpatchify
from nxcore.tokenizer.autoencoder.tokenizer import (
    AutoencoderLoss,
    NextStepAutoencoder,
    kl_divergence,
    perturb,
    perturbation_scales,
    reconstruction_loss,
    sample_posterior,
)

__all__ = [
    "AutoencoderConfig",
    "AutoencoderLoss",
    "NextStepAutoencoder",
    "autoencoder_tiny",
    "config_from_official",
    "from_official",
    "kl_divergence",
    "nextstep1_f8ch16",
    "patch_layer_norm",
    "patchify",
    "perturb",
    "perturbation_scales",
    "reconstruction_loss",
    "sample_posterior",
    "unpatchify",
]
