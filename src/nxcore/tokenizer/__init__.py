"""The Tokenizer family (protocols in ``protocol.py``): BPE text, the unified vocabulary, and the
image tokenizers — NextStep-1's f8ch16 autoencoder (``autoencoder/``)."""

from nxcore.tokenizer.autoencoder import (
    AutoencoderConfig,
    AutoencoderLoss,
    NextStepAutoencoder,
    autoencoder_tiny,
    nextstep1_f8ch16,
    perturb,
    reconstruction_loss,
)
from nxcore.tokenizer.text import BPETokenizer, SpecialTokens, TokenBatch
from nxcore.tokenizer.vocabulary import Vocabulary

__all__ = [
    "AutoencoderConfig",
    "AutoencoderLoss",
    "BPETokenizer",
    "NextStepAutoencoder",
    "SpecialTokens",
    "TokenBatch",
    "Vocabulary",
    "autoencoder_tiny",
    "nextstep1_f8ch16",
    "perturb",
    "reconstruction_loss",
]
