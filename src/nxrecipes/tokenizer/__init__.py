"""Tokenizer training, evaluation and offline pre-extraction (``nx tokenizer``, ``nx data extract``).

- ``objective.py``: ``TokenizerObjective``, the one training interface of image tokenizers, with
  ``AutoencoderObjective``, ``MultiScaleVQObjective`` and ``DualCodebookObjective``;
- ``train.py``: ``TokenizerTrainConfig``, ``train_tokenizer`` (steps or minutes, held-out evals,
  checkpoints, resume), ``autoencoder_training_tiny`` / ``multiscale_vq_training_tiny`` /
  ``dual_codebook_training_tiny``, ``load_run``;
- ``evaluate.py``: ``evaluate`` -> ``EvalReport`` (PSNR, SSIM, per-scale usage), ``reconstruction_grid``;
- ``metrics.py``: ``psnr``, ``ssim``, ``CodeUsage``;
- ``data.py``: ``ShapeWorldImages``, ``ImageFolder`` -> ``ImageDataset``;
- ``extract.py``: ``extract`` (per-scale indices to safetensors shards + ``index.json``) and the
  reader ``ExtractedIndices``;
- ``cli.py``: the ``nx tokenizer train|eval|reconstruct`` and ``nx data extract`` handlers.

Names are imported on first use (``nx --help`` stays fast; the CLI imports this package).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "data": ("CaptionedImages", "ImageDataset", "ImageFolder", "ShapeWorldImages"),
    "evaluate": ("EvalReport", "evaluate", "reconstruction_grid"),
    "extract": ("ExtractedIndices", "SelfCorrectionConfig", "extract"),
    "metrics": ("CodeUsage", "psnr", "ssim"),
    "objective": (
        "AutoencoderObjective",
        "DualCodebookObjective",
        "MultiScaleVQObjective",
        "Reconstruction",
        "StagedObjective",
        "TokenizerLoss",
        "TokenizerObjective",
        "square_schedule",
    ),
    "train": (
        "TokenizerRun",
        "TokenizerTrainConfig",
        "TokenizerTrainSummary",
        "autoencoder_training_tiny",
        "dual_codebook_training_tiny",
        "load_run",
        "multiscale_vq_training_tiny",
        "train_tokenizer",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nxrecipes.tokenizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nxrecipes.tokenizer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
