"""Training NextFlow on ShapeWorld: ``train_nextflow(cfg)`` through the shared ``Trainer``.

::

    cfg = nextflow_training_tiny("out/nextflow", minutes=30, tokenizer_dir="out/tokenizer-dual")
    summary = train_nextflow(cfg)                       # resumes if out/nextflow has a checkpoint
    run = load_run("out/nextflow")                      # model (final weights), tokenizers, vocabulary

Run directory::

    run_dir/
        run_config.json       this NextFlowTrainConfig (``load_run`` reads it back)
        model_config.json     the NextFlowConfig alone (its vocabulary included)
        tokenizer.json        the BPE text tokenizer (trained once, reused on resume)
        image_tokenizer/      save_pretrained copy of the frozen image tokenizer
        plan.json             with ``minutes``: the number of updates the budget allows
        checkpoints/, metrics.jsonl, train_config.json, model.safetensors   (the shared Trainer's)

**Text tokenizer and vocabulary.** ``TextTokenizerConfig`` trains a byte-level BPE on
``text_corpus`` with ``NEXTFLOW_SPECIALS`` (deterministic); the vocabulary is
``Vocabulary.from_tokenizer(text, codebook_size, NEXTFLOW_SPECIALS)``. ``cfg.model`` already holds
that vocabulary (the builder trains the BPE to know it); ``train_nextflow`` checks that the text
tokenizer it uses (passed, found in the run directory, or trained) gives the same one.

**Budget.** With ``minutes``, the run first times ``CALIBRATION_STEPS`` updates (data included) on a
copy of the model and sets the number of updates that fits what is left of the budget, capped at
``train.steps``; the cosine schedule decays over that number. The plan is saved in ``plan.json`` and
a resumed run keeps it (so a resumed run ends with the weights of an uninterrupted one of that plan).
Unlike the tokenizer trainer, the number is not re-measured mid-run: the shared loop has no hook.

**Data.** ``NextFlowBatches``: ShapeWorld records in the resumable order of ``IndexedBatches``
(epoch shuffles of ``data.samples`` indices drawn by ``task_mix``), formatted by ``ExampleBuilder``
(``data.py``) and collated with the scale weights of Eq. 2 (``alpha``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from nxcore.checkpoint import from_pretrained
from nxcore.checkpoint.matching import load_into
from nxcore.config import Config, boolean, config, finite_number, in_range, integer, non_negative, one_of
from nxcore.schedule import Schedule
from nxcore.tokenizer import BPETokenizer, SpecialTokens, Vocabulary
from nxcore.tokenizer.protocol import TextTokenizer
from nxrecipes.data.shapeworld import ShapeWorld
from nxrecipes.data.shapeworld.corpus import text_corpus
from nxrecipes.data.shapeworld.scenes import MAX_DISTRACTORS
from nxrecipes.data.shapeworld.splits import SPLITS
from nxrecipes.nextflow.config import NextFlowConfig, nextflow_tiny
from nxrecipes.nextflow.data import NEXTFLOW_SPECIALS, TASK_FORMATS, ExampleBuilder
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Batch, collate
from nxrecipes.tokenizer.objective import square_schedule
from nxrecipes.train.batches import BatchSource, IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.curriculum import Curriculum
from nxrecipes.train.distributed import init_distributed
from nxrecipes.train.run import (
    CALIBRATION_STEPS,
    IMAGE_TOKENIZER_DIR,
    MODEL_CONFIG_FILE,
    PLAN_FILE,
    RUN_CONFIG_FILE,
    TEXT_TOKENIZER_FILE,
    RunSummary,
    cpu_train_config,
    fit_with_progress,
    instance_of,
    optional_minutes,
    plan_steps,
    planned_steps,
    read_run_config,
    read_text_tokenizer,
    route_changes,
    train_fields,
    write_run_files,
)
from nxrecipes.train.seeding import seed_all

__all__ = [
    "CALIBRATION_STEPS",
    "CPU_TASK_MIX",
    "DEFAULT_TASK_MIX",
    "IMAGE_TOKENIZER_DIR",
    "MODEL_CONFIG_FILE",
    "PLAN_FILE",
    "RUN_CONFIG_FILE",
    "TEXT_TOKENIZER_FILE",
    "NextFlowBatches",
    "NextFlowDataConfig",
    "NextFlowRun",
    "NextFlowStep",
    "NextFlowTrainConfig",
    "NextFlowTrainSummary",
    "TextTokenizerConfig",
    "load_image_tokenizer",
    "load_run",
    "nextflow_training_tiny",
    "train_nextflow",
]


DEFAULT_TASK_MIX: tuple[tuple[str, float], ...] = (
    ("t2i", 0.6),
    ("captioning", 0.1),
    ("edit", 0.1),
    ("interleaved", 0.05),
    ("in_context", 0.05),
    ("world_knowledge", 0.05),
    ("text_only", 0.05),
)
"""Text-to-image heavy, every task present."""

CPU_TASK_MIX: tuple[tuple[str, float], ...] = (
    ("t2i", 0.6),
    ("captioning", 0.1),
    ("edit", 0.15),
    ("interleaved", 0.0),
    ("in_context", 0.0),
    ("world_knowledge", 0.1),
    ("text_only", 0.05),
)
"""``nextflow_training_tiny``'s mix: the tasks ShapeWorld's quality report scores. An interleaved
(3-5 images) or in-context (6 images) row pads a batch to ~1000 tokens at 32 px, four to six
t2i rows' worth, so on 2 CPU cores they are left to runs that ask for them."""


# --- configs -----------------------------------------------------------------------------------


def _task_mix(value: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(value, dict):
        value = tuple(value.items())
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"task_mix must be (task, weight) pairs or a dict, got {value!r}")
    return tuple(tuple(pair) for pair in value)  # type: ignore[misc]


def _check_task_mix(instance: Any, attribute: attrs.Attribute, value: tuple) -> None:
    if not value:
        raise ValueError("NextFlowDataConfig.task_mix is empty; give at least one (task, weight) pair")
    names = []
    for pair in value:
        ok = (len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int | float)
              and not isinstance(pair[1], bool) and pair[1] >= 0)
        if not ok:
            raise ValueError(
                f"NextFlowDataConfig.task_mix holds {pair!r}; each entry must be (task, weight >= 0)"
            )
        if pair[0] not in TASK_FORMATS:
            raise ValueError(f"NextFlowDataConfig.task_mix names {pair[0]!r}; tasks are {list(TASK_FORMATS)}")
        names.append(pair[0])
    if len(set(names)) != len(names):
        raise ValueError(f"NextFlowDataConfig.task_mix repeats a task: {names}")
    if sum(w for _, w in value) <= 0:
        raise ValueError("NextFlowDataConfig.task_mix weights sum to 0; give some task a weight > 0")


def _steps(value: Any) -> tuple[tuple[int, int], ...]:
    return Schedule(value).steps


@config
class TextTokenizerConfig(Config):
    """The BPE text tokenizer: ``vocab_size`` byte-level BPE ids (fewer when the corpus runs out of
    merges: ShapeWorld's text saturates near 650) trained on ``text_corpus(corpus_rounds,
    seed=corpus_seed)`` with ``special_tokens``."""

    vocab_size: int = attrs.field(default=1024, validator=integer(at_least=1))
    corpus_rounds: int = attrs.field(default=500, validator=integer(at_least=0))
    corpus_seed: int = attrs.field(default=0, validator=integer(at_least=0))
    min_frequency: int = attrs.field(default=2, validator=integer(at_least=0))
    special_tokens: SpecialTokens = attrs.field(default=NEXTFLOW_SPECIALS)

    def build(self) -> BPETokenizer:
        """Train it (deterministic; cached per config in this process)."""
        if self not in _BPE_CACHE:
            corpus = text_corpus(self.corpus_rounds, seed=self.corpus_seed)
            _BPE_CACHE[self] = BPETokenizer.train(corpus, self.vocab_size, special_tokens=self.special_tokens,
                                                  min_frequency=self.min_frequency)
        return _BPE_CACHE[self]


_BPE_CACHE: dict[TextTokenizerConfig, BPETokenizer] = {}


@config
class NextFlowDataConfig(Config):
    """What NextFlow trains on: ShapeWorld ``split`` rendered at ``size`` px (resized to the
    schedule's final grid times the tokenizer's downsample when that differs), ``samples`` indices
    per epoch drawn by ``task_mix``, every image on ``schedule``; ``alpha`` / ``text_weight``: the
    loss weights of ``collate``; ``curriculum``: progressive resolution (``nxrecipes.train.curriculum``):
    from each stage's ``start_step`` on, images train on the first ``num_scales`` scales of
    ``schedule``, resized to that prefix's final grid (NextFlow's 256 -> 512 -> 1024 levels are the
    first 12, 16, 18 steps of a Table 14 row); the rest: ``ExampleBuilder``'s knobs."""

    schedule: tuple[tuple[int, int], ...] = attrs.field(converter=_steps)
    size: int = attrs.field(default=64, validator=integer(at_least=1))
    split: str = attrs.field(default="train", validator=one_of(*SPLITS))
    samples: int = attrs.field(default=1_000_000, validator=integer(at_least=1))
    task_mix: tuple[tuple[str, float], ...] = attrs.field(default=DEFAULT_TASK_MIX, converter=_task_mix,
                                                          validator=_check_task_mix)
    vary_background: bool = attrs.field(default=False, validator=boolean())
    max_distractors: int = attrs.field(default=MAX_DISTRACTORS, validator=integer(at_least=0))
    alpha: float = attrs.field(default=0.9, validator=[finite_number(), non_negative()])
    text_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    self_correction_p: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))
    self_correction_fraction: float = attrs.field(default=0.6, validator=in_range(0.0, 1.0))
    self_correction_k: int = attrs.field(default=8, validator=integer(at_least=1))
    cfg_dropout: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    caption_inversion: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    curriculum: Curriculum | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.curriculum is None:
            return
        if not isinstance(self.curriculum, Curriculum):
            raise TypeError(
                "NextFlowDataConfig.curriculum must be a Curriculum or None, got "
                f"{type(self.curriculum).__name__}"
            )
        for stage in self.curriculum:
            if stage.num_scales > len(self.schedule):
                raise ValueError(
                    f"curriculum stage {stage.name!r} trains {stage.num_scales} scales but the schedule has "
                    f"{len(self.schedule)}; use at most {len(self.schedule)}"
                )

    def dataset(self, seed: int) -> ShapeWorld:
        tasks, weights = zip(*self.task_mix, strict=True)
        return ShapeWorld(split=self.split, size=self.size, tasks=tasks, length=self.samples, seed=seed,
                          task_weights=weights, vary_background=self.vary_background,
                          max_distractors=self.max_distractors)

    def builder(self, text: TextTokenizer, vocabulary: Vocabulary, image_tokenizer: nn.Module,
                seed: int) -> ExampleBuilder:
        return ExampleBuilder(
            text=text, vocabulary=vocabulary, image_tokenizer=image_tokenizer,
            schedule=Schedule(self.schedule),
            self_correction_p=self.self_correction_p, self_correction_fraction=self.self_correction_fraction,
            self_correction_k=self.self_correction_k, cfg_dropout=self.cfg_dropout,
            caption_inversion=self.caption_inversion, seed=seed,
        )


def _path(value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise TypeError(f"NextFlowTrainConfig.tokenizer_dir must be a path, got {value!r}")


@config
class NextFlowTrainConfig(Config):
    """A NextFlow training run (module docstring).

    - ``model``: the ``NextFlowConfig`` (its vocabulary: the text tokenizer's + the image codes);
    - ``text_tokenizer``: how the BPE is trained when the run has none yet;
    - ``tokenizer_dir``: the frozen image tokenizer (a ``nx tokenizer train`` run directory, its
      ``tokenizer/`` folder, or any ``save_pretrained`` directory);
    - ``data``: ``NextFlowDataConfig``; ``train``: the shared ``TrainConfig`` (``run_dir``, steps,
      batch, lr, ...; ``parallel``: the step calls the model's forward with ``with_loss=True``, so
      DDP and FSDP see the loss); ``minutes``: a wall-clock budget (``train.steps`` is then a cap);
    - ``detail`` / ``per_scale``: log ``loss/text``, ``loss/image`` / ``loss/scale_k`` (full logits:
      small models only).
    """

    model: NextFlowConfig = attrs.field(validator=instance_of(NextFlowConfig))
    text_tokenizer: TextTokenizerConfig = attrs.field(validator=instance_of(TextTokenizerConfig))
    tokenizer_dir: Path = attrs.field(converter=_path)
    data: NextFlowDataConfig = attrs.field(validator=instance_of(NextFlowDataConfig))
    train: TrainConfig = attrs.field(validator=instance_of(TrainConfig))
    minutes: float | None = attrs.field(default=None, validator=optional_minutes)
    detail: bool = attrs.field(default=True, validator=boolean())
    per_scale: bool = attrs.field(default=False, validator=boolean())

    def __attrs_post_init__(self) -> None:
        if len(self.data.schedule) > self.model.max_scales:
            raise ValueError(
                f"the schedule has {len(self.data.schedule)} steps but model.max_scales = "
                f"{self.model.max_scales}; raise max_scales or use a shorter schedule"
            )

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    def build(self) -> NextFlow:
        return self.model.build()


# --- data and step ----------------------------------------------------------------------------


class NextFlowBatches(BatchSource):
    """Collated ``Batch``es of ShapeWorld examples for one rank: the sample order of
    ``IndexedBatches`` over ``dataset`` (records), each batch formatted by ``builder`` (its epoch
    mixed into the coins) and collated. ``state_dict`` is the order's position: resumes exactly."""

    def __init__(self, dataset: Sequence[Any], builder: ExampleBuilder, batch_size: int, seed: int = 0, *,
                 alpha: float = 0.9, text_weight: float = 1.0, rank: int | None = None,
                 world_size: int | None = None, curriculum: Curriculum | None = None,
                 grad_accum: int = 1) -> None:
        if not isinstance(builder, ExampleBuilder):
            raise TypeError(f"builder must be an ExampleBuilder, got {type(builder).__name__}")
        self.order = IndexedBatches(dataset, batch_size, seed, rank=rank, world_size=world_size, collate=list)
        self.builder = builder
        self.alpha, self.text_weight = alpha, text_weight
        self.curriculum, self.grad_accum = curriculum, grad_accum
        self._builders: dict[int, ExampleBuilder] = {}

    def builder_at(self, update: int) -> ExampleBuilder:
        """The builder of update ``update``: the curriculum stage's first ``num_scales`` scales of the
        schedule (images resized to that prefix's final grid), or the full schedule."""
        steps = tuple(self.builder.schedule.steps)
        n = len(steps) if self.curriculum is None else self.curriculum.stage_at(update).num_scales
        if n not in self._builders:
            self._builders[n] = attrs.evolve(self.builder, schedule=Schedule(steps[:n]))
        return self._builders[n]

    @property
    def position(self) -> int:
        return self.order.position

    def next_batch(self) -> Batch:
        epoch = self.order.epoch
        indices = self.order.indices(self.order.position)
        builder = self.builder_at(self.order.position // self.grad_accum)
        records = self.order.next_batch()
        examples = builder.build(records, indices, epoch=epoch)
        return collate(examples, builder.vocabulary, alpha=self.alpha, text_weight=self.text_weight)

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


@attrs.frozen
class NextFlowStep:
    """The step function: ``model.loss`` of the batch (moved to the model's device), with
    ``loss/text``/``loss/image`` when ``detail`` and ``loss/scale_k`` when ``per_scale``."""

    detail: bool = False
    per_scale: bool = False

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        param = next(model.parameters())
        device = param.to_local().device if hasattr(param, "to_local") else param.device
        return model(batch.to(device), with_loss=True, detail=self.detail, per_scale=self.per_scale)


# --- tokenizers -------------------------------------------------------------------------------


def load_image_tokenizer(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The image tokenizer at ``path`` (a tokenizer run directory, its ``tokenizer/`` folder, or a
    ``save_pretrained`` directory), in eval mode with gradients off."""
    path = Path(path)
    if (path / "config.json").is_file():
        model = from_pretrained(path, device=device)
    elif (path / "tokenizer" / "config.json").is_file():
        model = from_pretrained(path / "tokenizer", device=device)
    else:
        raise FileNotFoundError(
            f"{path} holds no image tokenizer (no config.json, no tokenizer/config.json); pass the --out "
            "directory of `nx tokenizer train --kind dual` (or of --kind vq)"
        )
    model.eval()
    model.requires_grad_(False)
    return model


def _vocabulary(text: TextTokenizer, image_tokenizer: nn.Module) -> Vocabulary:
    return Vocabulary.from_tokenizer(text, int(image_tokenizer.codebook_size), NEXTFLOW_SPECIALS,
                                     pad_to_multiple_of=64)


def _text_tokenizer(cfg: NextFlowTrainConfig, given: TextTokenizer | None) -> TextTokenizer:
    file = cfg.run_dir / TEXT_TOKENIZER_FILE
    if given is not None:
        return given
    if file.is_file():
        return read_text_tokenizer(file, cfg.text_tokenizer.special_tokens)
    return cfg.text_tokenizer.build()


# --- the budget -------------------------------------------------------------------------------


# --- the run ----------------------------------------------------------------------------------


NextFlowTrainSummary = RunSummary
"""What the training call returns (``nxrecipes.train.run.RunSummary``)."""


def train_nextflow(cfg: NextFlowTrainConfig, *, text_tokenizer: TextTokenizer | None = None,
                   image_tokenizer: nn.Module | None = None, progress: bool = True) -> NextFlowTrainSummary:
    """Train (or resume) the run ``cfg`` describes (module docstring). ``text_tokenizer`` /
    ``image_tokenizer`` replace the run's own (``tokenizer.json`` or ``cfg.text_tokenizer``;
    ``cfg.tokenizer_dir``); their vocabulary must be ``cfg.model.vocabulary``. ``progress``: a
    progress bar of the updates (rank 0)."""
    if not isinstance(cfg, NextFlowTrainConfig):
        raise TypeError(
            f"cfg must be a NextFlowTrainConfig (e.g. nextflow_training_tiny(...)), got {type(cfg).__name__}"
        )
    started = time.perf_counter()
    tc, run_dir = cfg.train, cfg.run_dir
    env = init_distributed(force=tc.parallel != "none")
    if cfg.minutes is not None and env.world_size > 1:
        raise ValueError("minutes (a calibrated budget) needs one process; give train.steps under torchrun")
    text = _text_tokenizer(cfg, text_tokenizer)
    images = load_image_tokenizer(cfg.tokenizer_dir) if image_tokenizer is None else image_tokenizer
    images.eval()
    images.requires_grad_(False)
    vocabulary = _vocabulary(text, images)
    if vocabulary != cfg.model.vocabulary:
        raise ValueError(
            f"the text and image tokenizers give the vocabulary {vocabulary} but cfg.model has "
            f"{cfg.model.vocabulary}; build the config from these tokenizers (nextflow_training_tiny) or "
            "start a new run directory"
        )

    images = images.to(env.device)
    seed_all(tc.seed)
    model = cfg.model.build()
    model.init_code_embeddings(images, generator=torch.Generator().manual_seed(tc.seed))

    if env.is_main:
        write_run_files(run_dir, cfg, cfg.model, text, images)

    builder = cfg.data.builder(text, vocabulary, images, tc.seed)

    def batches() -> NextFlowBatches:
        return NextFlowBatches(cfg.data.dataset(tc.seed), builder, tc.batch_size, tc.seed,
                               alpha=cfg.data.alpha, text_weight=cfg.data.text_weight, rank=env.rank,
                               world_size=env.world_size, curriculum=cfg.data.curriculum,
                               grad_accum=tc.grad_accum)

    step_fn = NextFlowStep(detail=cfg.detail, per_scale=cfg.per_scale)
    spent = time.perf_counter() - started
    tc = planned_steps(cfg.minutes, run_dir, tc, lambda budget: plan_steps(
        model, step_fn, batches(), tc, env.device, budget, spent))
    total = tc.steps
    summary = fit_with_progress(model, step_fn, batches(), tc, desc="train NextFlow",
                                show=progress and env.is_main)
    return NextFlowTrainSummary(step=summary.step, total_steps=total, loss=summary.loss,
                                resumed_from=summary.resumed_from, elapsed_s=time.perf_counter() - started,
                                weights=summary.weights, run_dir=run_dir)


# --- the tiny builder -------------------------------------------------------------------------


def nextflow_training_tiny(
    run_dir: str | os.PathLike = "out/nextflow",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    tokenizer_dir: str | os.PathLike,
    **changes: Any,
) -> NextFlowTrainConfig:
    """CPU-sized NextFlow training on ShapeWorld 32 px with the image tokenizer at ``tokenizer_dir``:
    ``nextflow_tiny`` (4 layers, width 128; RoPE range C = the final grid side), a BPE of at most 1024
    ids, the square schedule ending at the tokenizer's final grid (32 / downsample: 7 steps, 155
    tokens at downsample 4), ``CPU_TASK_MIX``, batch 8, AdamW lr 1e-3, 50 warmup updates then cosine
    to 5%. (At 64 px an image is 680 tokens and an update ~4x slower.)

    ``changes`` are routed by field name to ``NextFlowDataConfig`` (``size``, ``task_mix``, ...),
    ``TrainConfig`` (``batch_size``, ``lr``, ...), ``NextFlowConfig`` (``num_layers``, ``inputs``,
    ...) or ``NextFlowTrainConfig`` itself (``text_tokenizer``, ``detail``, ...). Trains the BPE (a
    second or two, cached) to know the vocabulary."""
    routes = route_changes("nextflow_training_tiny", changes, {
        "data": {f.name for f in attrs.fields(NextFlowDataConfig)},
        "train": train_fields(),
        "model": {f.name for f in attrs.fields(NextFlowConfig)} - {"vocabulary", "code_dim"},
        "top": {"text_tokenizer", "detail", "per_scale"},
    })
    text_cfg = routes["top"].pop("text_tokenizer", TextTokenizerConfig())
    images = load_image_tokenizer(tokenizer_dir)
    size = routes["data"].setdefault("size", 32)
    grid = size // int(images.downsample)
    routes["data"].setdefault("schedule", square_schedule(grid))
    routes["data"].setdefault("task_mix", CPU_TASK_MIX)
    routes["model"].setdefault("range_factor", float(grid))
    train = cpu_train_config(run_dir, steps=steps, minutes=minutes, batch_size=8, changes=routes["train"])
    vocabulary = _vocabulary(text_cfg.build(), images)
    return NextFlowTrainConfig(
        model=nextflow_tiny(vocabulary, int(images.code_dim), **routes["model"]),
        text_tokenizer=text_cfg,
        tokenizer_dir=tokenizer_dir,
        data=NextFlowDataConfig(**routes["data"]),
        train=train,
        minutes=minutes,
        **routes["top"],
    )


# --- reading a run back -----------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class NextFlowRun:
    """A trained run: the ``model`` with its final weights (eval mode), the ``text_tokenizer``, the
    ``vocabulary``, the frozen ``image_tokenizer``, the image ``schedule``, the ``config``."""

    config: NextFlowTrainConfig
    model: NextFlow
    text_tokenizer: BPETokenizer
    vocabulary: Vocabulary
    image_tokenizer: nn.Module
    schedule: Schedule
    run_dir: Path


def load_run(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> NextFlowRun:
    """The run at ``run_dir`` with the final weights of ``model.safetensors`` (written when a
    ``train_nextflow`` call ends)."""
    cfg, weights = read_run_config(run_dir, NextFlowTrainConfig, system="NextFlow", trainer="train_nextflow")
    run_dir = Path(run_dir)
    text = read_text_tokenizer(run_dir / TEXT_TOKENIZER_FILE, cfg.text_tokenizer.special_tokens)
    images = load_image_tokenizer(run_dir / IMAGE_TOKENIZER_DIR, device=device)
    model = cfg.model.build().to(device)
    load_into(model, weights)
    model.eval()
    return NextFlowRun(config=cfg, model=model, text_tokenizer=text, vocabulary=cfg.model.vocabulary,
                       image_tokenizer=images, schedule=Schedule(cfg.data.schedule), run_dir=run_dir)
