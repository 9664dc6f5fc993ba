"""NextStep-1 (arXiv 2508.10711): one decoder-only transformer over text ids and continuous image
tokens — next-token prediction for text, a flow-matching head for each 64-dim image token.

- ``config``: ``NextStep1Config``, ``nextstep1_tiny``, ``nextstep1_14b``
- ``head``: ``FlowMatchingHead`` (a ``ContinuousHead``), ``FlowHeadConfig``
- ``model``: ``NextStep1`` (embeddings with image placeholders, decoder with KV caches, text logits,
  head condition, the weighted text + image loss ``NextStep1Loss``)
- ``official``: ``load_official`` (an official Hugging Face checkpoint directory -> ``OfficialNextStep1``),
  ``config_from_official``
- ``prompt``: the official prompt template (``build_prompts`` -> ``PromptBatch``: caption, CFG and
  edit rows, left-padded), ``token_grid``, ``model_special_ids``
- ``generate``: ``generate_latents`` (static KV cache, ``FlowSampler`` per image token, CFG on
  velocities), ``ImageSampling``, ``teacher_forced_conditions``; ``pipeline``: ``NextStep1Pipeline``
  (``text_to_image``, ``edit``, ``from_run``, ``from_official``); ``cli``: ``nx nextstep1``
- ``data``: ShapeWorld records -> training rows (``RowBuilder`` -> ``NextStep1Batch``: t2i and edit in
  the official template, CFG text dropout, autoencoder latents); ``train``: ``train_nextstep1``
  through the shared Trainer, ``nextstep1_training_tiny`` (``SHAPEWORLD_T2I``: its best recipe),
  ``load_run`` -> ``NextStep1Run``
"""

from nxrecipes.nextstep1.config import NextStep1Config, nextstep1_14b, nextstep1_tiny
from nxrecipes.nextstep1.data import NEXTSTEP1_SPECIALS, NextStep1Batch, RowBuilder
from nxrecipes.nextstep1.generate import (
    ImageSampling,
    LatentGeneration,
    generate_latents,
    teacher_forced_conditions,
)
from nxrecipes.nextstep1.head import FlowHeadConfig, FlowMatchingHead
from nxrecipes.nextstep1.model import NextStep1, NextStep1Loss
from nxrecipes.nextstep1.official import OfficialNextStep1, config_from_official, load_official
from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
from nxrecipes.nextstep1.prompt import PromptBatch, build_prompts, model_special_ids, token_grid
from nxrecipes.nextstep1.train import (
    SHAPEWORLD_T2I,
    NextStep1DataConfig,
    NextStep1Run,
    NextStep1TrainConfig,
    load_run,
    nextstep1_training_tiny,
    train_nextstep1,
)

__all__ = [
    "NEXTSTEP1_SPECIALS",
    "SHAPEWORLD_T2I",
    "FlowHeadConfig",
    "FlowMatchingHead",
    "ImageSampling",
    "LatentGeneration",
    "NextStep1",
    "NextStep1Batch",
    "NextStep1Config",
    "NextStep1DataConfig",
    "NextStep1Loss",
    "NextStep1Pipeline",
    "NextStep1Run",
    "NextStep1TrainConfig",
    "OfficialNextStep1",
    "PromptBatch",
    "RowBuilder",
    "build_prompts",
    "config_from_official",
    "generate_latents",
    "load_official",
    "load_run",
    "model_special_ids",
    "nextstep1_14b",
    "nextstep1_tiny",
    "nextstep1_training_tiny",
    "teacher_forced_conditions",
    "token_grid",
    "train_nextstep1",
]
