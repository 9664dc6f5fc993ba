"""Image decoders: a discrete tokenizer's multi-scale codes -> images (NextFlow §2.3).

- ``ImageDecoder``, ``ConditionSource``, ``DecoderCondition``, ``Denoiser`` (``protocol.py``);
- ``VQDecoder`` (``vq.py``): the tokenizer's own decode, the default;
- ``DiffusionDecoder``, ``DiffusionDecoderConfig``, ``diffusion_decoder_tiny``, ``flow_matching_loss``
  (``diffusion.py``): the optional flow-matching decoder conditioned on the codes' semantic and pixel
  embeddings and semantic features (one linear projection), with the caption through a text branch;
- the denoisers behind one interface: ``UNetDenoiser`` (``unet.py``) and ``DiTDenoiser``
  (``dit.py``), chosen by the ``denoiser`` sub-config;
- ``CaptionEncoder`` (``text.py``): the byte-level text branch.

Swap decoders as heads are swapped: pass ``VQDecoder()`` or a trained ``DiffusionDecoder`` (or your
own ``ImageDecoder``) where codes are turned into images.
"""

from nxcore.decoder.diffusion import (
    TIME_SAMPLING,
    DiffusionDecoder,
    DiffusionDecoderConfig,
    diffusion_decoder_tiny,
    flow_matching_loss,
    sample_times,
)
from nxcore.decoder.dit import DiTDenoiser, DiTDenoiserConfig
from nxcore.decoder.protocol import ConditionSource, DecoderCondition, Denoiser, ImageDecoder
from nxcore.decoder.text import CaptionEncoder, CaptionEncoderConfig
from nxcore.decoder.unet import UNetDenoiser, UNetDenoiserConfig
from nxcore.decoder.vq import VQDecoder

__all__ = [
    "TIME_SAMPLING",
    "CaptionEncoder",
    "CaptionEncoderConfig",
    "ConditionSource",
    "DecoderCondition",
    "Denoiser",
    "DiTDenoiser",
    "DiTDenoiserConfig",
    "DiffusionDecoder",
    "DiffusionDecoderConfig",
    "ImageDecoder",
    "UNetDenoiser",
    "UNetDenoiserConfig",
    "VQDecoder",
    "diffusion_decoder_tiny",
    "flow_matching_loss",
    "sample_times",
]
