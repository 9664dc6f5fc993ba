"""The Tokenizer family (protocols in ``protocol.py``): BPE text, the unified vocabulary, and the
image tokenizers — the VAR-compatible multi-scale residual VQ (``multiscale/``) and NextStep-1's f8ch16
autoencoder (``autoencoder/``). Each package keeps its own ``from_official`` loader."""

from nxcore.tokenizer.autoencoder import (
    AutoencoderConfig,
    AutoencoderLoss,
    NextStepAutoencoder,
    autoencoder_tiny,
    nextstep1_f8ch16,
    perturb,
    reconstruction_loss,
)
from nxcore.tokenizer.multiscale import (
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    QuantizerConfig,
    multiscale_vq_tiny,
    var_vqvae,
)
from nxcore.tokenizer.text import BPETokenizer, SpecialTokens, TokenBatch
from nxcore.tokenizer.vocabulary import Vocabulary

__all__ = [
    "AutoencoderConfig",
    "AutoencoderLoss",
    "BPETokenizer",
    "MultiScaleVQConfig",
    "MultiScaleVQTokenizer",
    "NextStepAutoencoder",
    "QuantizerConfig",
    "SpecialTokens",
    "TokenBatch",
    "Vocabulary",
    "autoencoder_tiny",
    "multiscale_vq_tiny",
    "nextstep1_f8ch16",
    "perturb",
    "reconstruction_loss",
    "var_vqvae",
]
