"""The Tokenizer family (protocols in ``protocol.py``): BPE text, the unified vocabulary, and the
image tokenizers — the VAR-compatible multi-scale residual VQ (``multiscale/``), NextFlow's
dual-codebook VQ with the self-correction encode (``dual/``) and NextStep-1's f8ch16 autoencoder
(``autoencoder/``). Each package keeps its own ``from_official`` loader."""

from nxcore.tokenizer.autoencoder import (
    AutoencoderConfig,
    AutoencoderLoss,
    NextStepAutoencoder,
    autoencoder_tiny,
    nextstep1_f8ch16,
    perturb,
    reconstruction_loss,
)
from nxcore.tokenizer.dual import (
    DualCodebookConfig,
    DualCodebookTokenizer,
    dual_tiny,
    load_teacher,
    self_correction_encode,
    tokenflow_like,
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
    "DualCodebookConfig",
    "DualCodebookTokenizer",
    "MultiScaleVQConfig",
    "MultiScaleVQTokenizer",
    "NextStepAutoencoder",
    "QuantizerConfig",
    "SpecialTokens",
    "TokenBatch",
    "Vocabulary",
    "autoencoder_tiny",
    "dual_tiny",
    "load_teacher",
    "multiscale_vq_tiny",
    "nextstep1_f8ch16",
    "perturb",
    "reconstruction_loss",
    "self_correction_encode",
    "tokenflow_like",
    "var_vqvae",
]
