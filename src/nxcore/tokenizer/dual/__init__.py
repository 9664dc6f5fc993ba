"""NextFlow's dual-codebook (TokenFlow-style) multi-scale VQ tokenizer and self-correction encode.

- ``DualCodebookTokenizer`` (``tokenizer.py``): a ``DiscreteImageTokenizer``; semantic ViT + CNN pixel
  branch, two codebooks with one shared index, joint fp32 search, decode (pixel half) and
  ``decode_semantic``; training ``forward`` (``DualCodebookOutput``: the multiscale tokenizer's fields
  plus the semantic and named losses), scale dropping, ``set_stage`` (``STAGES``);
- ``DualCodebookConfig``, ``SemanticConfig``, ``PixelConfig``, ``dual_tiny``, ``tokenflow_like``,
  ``VQ_LOSSES`` (``config.py``);
- the semantic branch (``semantic.py``): ``SemanticEncoder``, ``SemanticDecoder``, ``EncoderTeacher``
  (the frozen-copy default teacher), ``load_teacher`` (a local safetensors / weights-only file into a
  user-built module), ``teacher_features``;
- losses (``losses.py``): ``reconstruction_loss``, ``semantic_loss``, ``drop_scales``;
- ``self_correction_encode`` (``self_correction.py``): NextFlow §2.2 corrupted inputs + clean targets.
"""

from nxcore.tokenizer.dual.config import (
    VQ_LOSSES,
    DualCodebookConfig,
    PixelConfig,
    SemanticConfig,
    dual_tiny,
    tokenflow_like,
)
from nxcore.tokenizer.dual.losses import drop_scales, reconstruction_loss, semantic_loss
from nxcore.tokenizer.dual.self_correction import SelfCorrection, selected_count, self_correction_encode
from nxcore.tokenizer.dual.semantic import (
    EncoderTeacher,
    SemanticDecoder,
    SemanticEncoder,
    ViTBlock,
    load_teacher,
    sincos_2d,
    teacher_features,
)
from nxcore.tokenizer.dual.tokenizer import STAGES, DualCodebookOutput, DualCodebookTokenizer

__all__ = [
    "STAGES",
    "VQ_LOSSES",
    "DualCodebookConfig",
    "DualCodebookOutput",
    "DualCodebookTokenizer",
    "EncoderTeacher",
    "PixelConfig",
    "SelfCorrection",
    "SemanticConfig",
    "SemanticDecoder",
    "SemanticEncoder",
    "ViTBlock",
    "drop_scales",
    "dual_tiny",
    "load_teacher",
    "reconstruction_loss",
    "selected_count",
    "self_correction_encode",
    "semantic_loss",
    "sincos_2d",
    "teacher_features",
    "tokenflow_like",
]
