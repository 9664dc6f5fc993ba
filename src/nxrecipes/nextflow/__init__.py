"""NextFlow (the paper in ``../shared/papers``): one decoder-only transformer over text ids and
multi-scale image codes — next-token prediction for text, next-scale prediction for images.

- ``config``: ``NextFlowConfig``, ``nextflow_tiny``, ``nextflow_7b``, ``separate_heads``
- ``sequence``: ``Example`` (``Text`` / ``Image`` parts) and ``collate`` into a padded ``Batch``
- ``model``: ``NextFlow`` (embeddings, decoder, head, weighted loss)
- ``data`` / ``train``: ShapeWorld task formats, ``nextflow_training_tiny``, ``train_nextflow``,
  ``load_run``
- ``generate``: ``generate_image_codes``, ``generate_text``, ``interleave``, ``ImageSampling``,
  ``TextSampling``; ``pipeline``: ``NextFlowPipeline``; ``evaluate``: ``evaluate_pipeline``
- ``rollout`` / ``grpo``: prefix-tuning GRPO (§3.2.5): ``collect_rollout``, ``policy_log_probs``,
  ``GRPOConfig``, ``grpo_tiny``, ``train_grpo``
"""

import importlib
from typing import Any

from nxrecipes.nextflow.config import NextFlowConfig, nextflow_7b, nextflow_tiny, separate_heads
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Batch, Example, Image, ImageGroup, Text, collate

_LAZY = {
    "train": ("load_run", "nextflow_training_tiny", "train_nextflow"),
    "generate": ("ImageSampling", "TextSampling", "generate_image_codes", "generate_text", "interleave"),
    "pipeline": ("NextFlowPipeline",),
    "evaluate": ("evaluate_pipeline",),
    "rollout": ("Rollout", "collect_rollout", "policy_log_probs"),
    "grpo": ("GRPOConfig", "grpo_tiny", "train_grpo"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [  # noqa: RUF022 - eager names, then the lazy ones
    "Batch", "Example", "Image", "ImageGroup", "NextFlow", "NextFlowConfig", "Text", "collate",
    "nextflow_7b", "nextflow_tiny", "separate_heads",
    "GRPOConfig", "ImageSampling", "NextFlowPipeline", "Rollout", "TextSampling", "collect_rollout",
    "evaluate_pipeline", "generate_image_codes", "generate_text", "grpo_tiny", "interleave", "load_run",
    "nextflow_training_tiny", "policy_log_probs", "train_grpo", "train_nextflow",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nxrecipes.nextflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nxrecipes.nextflow.{module}"), name)
    globals()[name] = value
    return value
