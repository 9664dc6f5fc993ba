"""One training loop for the tokenizers, NextFlow and NextStep-1: launch, checkpoints, packing, logs.

    env = init_distributed(force=cfg.parallel != "none")   # torchrun, or one process
    seed_all(cfg.seed)                                      # same initial weights on every rank
    data = IndexedBatches(dataset, cfg.batch_size, cfg.seed)
    summary = Trainer(model, step_fn, data, cfg, block_types=(Block,)).fit()

``python -m nxrecipes.train.example`` is a tiny runnable example (``torchrun --standalone
--nproc_per_node=2 -m nxrecipes.train.example --parallel fsdp --run-dir out/run``).
"""

from nxrecipes.train.batches import BatchSource, IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.curriculum import Curriculum, Stage, nextflow_curriculum
from nxrecipes.train.distributed import DistEnv, autocast, barrier, init_distributed, shutdown, wrap_model
from nxrecipes.train.loop import Trainer, TrainingDiverged, TrainSummary
from nxrecipes.train.metrics import MetricsLogger, read_metrics
from nxrecipes.train.optim import build_optimizer, lr_factor, no_decay, param_groups, warmup_cosine
from nxrecipes.train.seeding import seed_all
from nxrecipes.train.state import (
    ResumeInfo,
    export_weights,
    latest_checkpoint,
    load_latest_training_state,
    save_training_state,
)

__all__ = [
    "BatchSource",
    "Curriculum",
    "DistEnv",
    "IndexedBatches",
    "MetricsLogger",
    "ResumeInfo",
    "Stage",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainingDiverged",
    "autocast",
    "barrier",
    "build_optimizer",
    "export_weights",
    "init_distributed",
    "latest_checkpoint",
    "load_latest_training_state",
    "lr_factor",
    "nextflow_curriculum",
    "no_decay",
    "param_groups",
    "read_metrics",
    "save_training_state",
    "seed_all",
    "shutdown",
    "warmup_cosine",
    "wrap_model",
]
