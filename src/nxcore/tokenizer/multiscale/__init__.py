"""VAR-compatible multi-scale residual VQ tokenizer, and the residual-quantizer core it shares.

- ``MultiScaleVQTokenizer`` (``tokenizer.py``): a ``DiscreteImageTokenizer``; encode/decode over any
  schedule, ``embed_codes``, ``next_scale_inputs`` (accumulated or residual), training ``forward``;
  ``code_usage`` for per-step usage and perplexity;
- ``MultiScaleVQConfig``, ``QuantizerConfig``, ``var_vqvae``, ``multiscale_vq_tiny`` (``config.py``);
- the quantizer core (``quantizer.py``): ``CodebookStream``, ``residual_quantize``, ``reconstruct``,
  ``next_scale_inputs``, ``contribution``, ``MultiScaleQuantizer`` (VAR's ``VectorQuantizer2``);
- φ convs and VAR's tick rule (``phi.py``): ``Phi``, ``PhiBank``, ``phi_index``, ``phi_ticks``;
- the CNN (``cnn.py``): ``Encoder``, ``Decoder``, ``AttnBlock`` with VAR's key names;
- ``from_official`` / ``to_official_state`` / ``config_from_official_state`` (``official.py``):
  VAR's ``vae_ch160v4096z32.pth`` layout.
"""

from nxcore.tokenizer.multiscale.cnn import AttnBlock, Decoder, Encoder
from nxcore.tokenizer.multiscale.config import (
    MultiScaleVQConfig,
    QuantizerConfig,
    multiscale_vq_tiny,
    var_vqvae,
)
from nxcore.tokenizer.multiscale.official import (
    OFFICIAL_VAE_FILE,
    config_from_official_state,
    from_official,
    official_key,
    to_official_state,
)
from nxcore.tokenizer.multiscale.phi import Phi, PhiBank, phi_index, phi_ticks
from nxcore.tokenizer.multiscale.quantizer import (
    CodebookStream,
    MultiScaleQuantizer,
    ResidualQuantization,
    check_codes,
    contribution,
    lookup,
    next_scale_inputs,
    reconstruct,
    residual_quantize,
    resize,
)
from nxcore.tokenizer.multiscale.tokenizer import (
    CodeUsage,
    MultiScaleVQOutput,
    MultiScaleVQTokenizer,
    code_usage,
)

__all__ = [
    "OFFICIAL_VAE_FILE",
    "AttnBlock",
    "CodeUsage",
    "CodebookStream",
    "Decoder",
    "Encoder",
    "MultiScaleQuantizer",
    "MultiScaleVQConfig",
    "MultiScaleVQOutput",
    "MultiScaleVQTokenizer",
    "Phi",
    "PhiBank",
    "QuantizerConfig",
    "ResidualQuantization",
    "check_codes",
    "code_usage",
    "config_from_official_state",
    "contribution",
    "from_official",
    "lookup",
    "multiscale_vq_tiny",
    "next_scale_inputs",
    "official_key",
    "phi_index",
    "phi_ticks",
    "reconstruct",
    "residual_quantize",
    "resize",
    "to_official_state",
    "var_vqvae",
]
