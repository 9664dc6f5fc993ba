"""Training NextStep-1 on ShapeWorld: ``train_nextstep1(cfg)`` through the shared ``Trainer``.

::

    cfg = nextstep1_training_tiny("out/nextstep1", minutes=10, tokenizer_dir="out/tokenizer-ae")
    summary = train_nextstep1(cfg)                       # resumes if out/nextstep1 has a checkpoint
    run = load_run("out/nextstep1")                      # model (final weights), tokenizers

Run directory (NextFlow's layout)::

    run_dir/
        run_config.json       this NextStep1TrainConfig (``load_run`` reads it back)
        model_config.json     the NextStep1Config alone
        tokenizer.json        the BPE text tokenizer (trained once, reused on resume)
        image_tokenizer/      save_pretrained copy of the frozen autoencoder
        plan.json             with ``minutes``: the number of updates the budget allows
        checkpoints/, metrics.jsonl, train_config.json, model.safetensors   (the shared Trainer's)

**Text tokenizer.** NextFlow's ``TextTokenizerConfig`` with ``NEXTSTEP1_SPECIALS``: a byte-level BPE
on ShapeWorld's corpus whose ids 0..8 are NextStep-1's added tokens; ``cfg.model`` takes its
``vocab_size`` and special ids (``nextstep1_training_tiny`` trains it to know them) and
``train_nextstep1`` checks that the tokenizer it uses agrees.

**Budget.** As NextFlow: with ``minutes``, ``CALIBRATION_STEPS`` updates of a copy of the model are
timed (data included) and the number of updates that fits what is left of the budget (capped at
``train.steps``) is saved in ``plan.json``; the cosine schedule decays over it and a resumed run
keeps it.

**Data.** ``NextStep1Batches``: ShapeWorld records in the resumable order of ``IndexedBatches``
(``samples`` indices drawn by ``task_mix``), formatted and encoded by ``RowBuilder`` (``data.py``).
The flow-matching noise comes from torch's global generator, which the Trainer checkpoints, so a
resumed run ends with the weights of an uninterrupted one. Measured at 64 px on one core (batch
32, the 4-minute tiny AE): rendering 0.13 s + encoding 0.17 s per batch against a 1.3 s update;
``cache_latents`` keeps each index's latents (about 16 KiB per t2i record, 32 KiB per edit) so
later epochs skip both, worth it only when ``samples`` is small enough to repeat within the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from nxcore.checkpoint.matching import load_into
from nxcore.config import Config, boolean, config, finite_number, in_range, integer, non_negative, one_of
from nxcore.tokenizer import BPETokenizer
from nxcore.tokenizer.protocol import TextTokenizer
from nxrecipes.data.shapeworld import ShapeWorld
from nxrecipes.data.shapeworld.scenes import MAX_DISTRACTORS
from nxrecipes.data.shapeworld.splits import SPLITS
from nxrecipes.nextflow.train import TextTokenizerConfig, _task_mix, load_image_tokenizer
from nxrecipes.nextstep1.config import NextStep1Config, nextstep1_tiny
from nxrecipes.nextstep1.data import NEXTSTEP1_SPECIALS, TASKS, Encoded, NextStep1Batch, RowBuilder
from nxrecipes.nextstep1.model import NextStep1
from nxrecipes.train.batches import BatchSource, IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.distributed import init_distributed
from nxrecipes.train.run import (
    IMAGE_TOKENIZER_DIR,
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
    "DEFAULT_TASK_MIX",
    "SHAPEWORLD_T2I",
    "NextStep1Batches",
    "NextStep1DataConfig",
    "NextStep1Run",
    "NextStep1Step",
    "NextStep1TrainConfig",
    "NextStep1TrainSummary",
    "load_autoencoder",
    "load_run",
    "nextstep1_text_tokenizer",
    "nextstep1_training_tiny",
    "train_nextstep1",
]

DEFAULT_TASK_MIX: tuple[tuple[str, float], ...] = (("t2i", 0.7), ("edit", 0.3))
"""Text-to-image heavy; an edit row (two images) is about twice a t2i row's length."""

_SPECIAL_FIELDS = {"pad_id": "pad", "image_area_id": "image_area", "boi": "boi", "eoi": "eoi",
                   "image_placeholder_id": "image_placeholder"}


# --- configs -----------------------------------------------------------------------------------


def _check_task_mix(instance: Any, attribute: attrs.Attribute, value: tuple) -> None:
    names = []
    for pair in value:
        ok = (len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int | float)
              and not isinstance(pair[1], bool) and pair[1] >= 0)
        if not ok:
            raise ValueError(
                f"NextStep1DataConfig.task_mix holds {pair!r}; each entry must be (task, weight >= 0)"
            )
        if pair[0] not in TASKS:
            raise ValueError(
                f"NextStep1DataConfig.task_mix names {pair[0]!r}; NextStep-1 tasks are {list(TASKS)}"
            )
        names.append(pair[0])
    if len(set(names)) != len(names):
        raise ValueError(f"NextStep1DataConfig.task_mix repeats a task: {names}")
    if not value or sum(w for _, w in value) <= 0:
        raise ValueError("NextStep1DataConfig.task_mix gives no task a weight > 0; e.g. (('t2i', 1.0),)")


def _path(value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise TypeError(
        f"NextStep1TrainConfig.tokenizer_dir must be a path (the autoencoder's directory), got {value!r}"
    )


def nextstep1_text_tokenizer(**changes: Any) -> TextTokenizerConfig:
    """NextFlow's ``TextTokenizerConfig`` with NextStep-1's special tokens (ids 0..8)."""
    return TextTokenizerConfig(special_tokens=NEXTSTEP1_SPECIALS, **changes)


@config
class NextStep1DataConfig(Config):
    """What NextStep-1 trains on: ShapeWorld ``split`` rendered at ``size`` px (a multiple of the
    autoencoder's downsample), ``samples`` indices per epoch drawn by ``task_mix`` (t2i, edit);
    ``drop_text_prob`` / ``drop_image_prob``: the CFG dropout of ``RowBuilder``; ``input_noise``: the
    largest std of the noise on the target image's input latents (``RowBuilder``, 0 = off); ``cache_latents``:
    keep every index's latents in memory (module docstring)."""

    size: int = attrs.field(default=64, validator=integer(at_least=1))
    split: str = attrs.field(default="train", validator=one_of(*SPLITS))
    samples: int = attrs.field(default=1_000_000, validator=integer(at_least=1))
    task_mix: tuple[tuple[str, float], ...] = attrs.field(default=DEFAULT_TASK_MIX, converter=_task_mix,
                                                          validator=_check_task_mix)
    vary_background: bool = attrs.field(default=False, validator=boolean())
    max_distractors: int = attrs.field(default=MAX_DISTRACTORS, validator=integer(at_least=0))
    drop_text_prob: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    drop_image_prob: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    input_noise: float = attrs.field(default=0.0, validator=[finite_number(), non_negative()])
    cache_latents: bool = attrs.field(default=False, validator=boolean())

    def dataset(self, seed: int) -> ShapeWorld:
        tasks, weights = zip(*self.task_mix, strict=True)
        return ShapeWorld(split=self.split, size=self.size, tasks=tasks, length=self.samples, seed=seed,
                          task_weights=weights, vary_background=self.vary_background,
                          max_distractors=self.max_distractors)

    def builder(self, text: TextTokenizer, image_tokenizer: nn.Module, seed: int) -> RowBuilder:
        return RowBuilder(text=text, image_tokenizer=image_tokenizer, drop_text_prob=self.drop_text_prob,
                          drop_image_prob=self.drop_image_prob, input_noise=self.input_noise, seed=seed)


def _parallel_none(instance: Any, attribute: attrs.Attribute, value: TrainConfig) -> None:
    instance_of(TrainConfig)(instance, attribute, value)
    if value.parallel != "none":
        raise ValueError(
            f"NextStep1TrainConfig.train.parallel = {value.parallel!r}: the step calls NextStep1.loss, which "
            "DDP/FSDP do not see (they hook forward); train NextStep-1 with parallel='none'"
        )


@config
class NextStep1TrainConfig(Config):
    """A NextStep-1 training run (module docstring).

    - ``model``: the ``NextStep1Config`` (vocabulary and special ids: the text tokenizer's; latent
      width: the autoencoder's);
    - ``text_tokenizer``: how the BPE is trained when the run has none yet;
    - ``tokenizer_dir``: the frozen autoencoder (an ``nx tokenizer train --kind ae`` run directory or
      its ``tokenizer/`` folder);
    - ``data``: ``NextStep1DataConfig``; ``train``: the shared ``TrainConfig`` (one process:
      ``parallel='none'``); ``minutes``: a wall-clock budget (``train.steps`` is then a cap).
    """

    model: NextStep1Config = attrs.field(validator=instance_of(NextStep1Config))
    text_tokenizer: TextTokenizerConfig = attrs.field(validator=instance_of(TextTokenizerConfig))
    tokenizer_dir: Path = attrs.field(converter=_path)
    data: NextStep1DataConfig = attrs.field(validator=instance_of(NextStep1DataConfig))
    train: TrainConfig = attrs.field(validator=_parallel_none)
    minutes: float | None = attrs.field(default=None, validator=optional_minutes)

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    def build(self) -> NextStep1:
        return self.model.build()


# --- data and step ----------------------------------------------------------------------------


class NextStep1Batches(BatchSource):
    """``NextStep1Batch``es for one rank: the sample order of ``IndexedBatches`` over ``dataset``
    (records), each batch encoded and formatted by ``builder`` (its epoch mixed into the dropout
    coins). ``cache``: keep every index's ``Encoded`` record, so a record seen again is neither
    rendered nor encoded. ``state_dict`` is the order's position: resumes exactly."""

    def __init__(self, dataset: Sequence[Any], builder: RowBuilder, batch_size: int, seed: int = 0, *,
                 cache: bool = False, rank: int | None = None, world_size: int | None = None) -> None:
        if not isinstance(builder, RowBuilder):
            raise TypeError(f"builder must be a RowBuilder, got {type(builder).__name__}")
        self.order = IndexedBatches(dataset, batch_size, seed, rank=rank, world_size=world_size, collate=list)
        self.dataset, self.builder = dataset, builder
        self.cache: dict[int, Encoded] | None = {} if cache else None

    @property
    def position(self) -> int:
        return self.order.position

    def next_batch(self) -> NextStep1Batch:
        epoch = self.order.epoch
        indices = self.order.indices(self.order.position)
        self.order.position += 1
        if self.cache is None:
            return self.builder.build([self.dataset[i] for i in indices], indices, epoch=epoch)
        missing = [i for i in dict.fromkeys(indices) if i not in self.cache]
        if missing:
            fresh = self.builder.prepare([self.dataset[i] for i in missing])
            self.cache.update(zip(missing, fresh, strict=True))
        return self.builder.collate([self.cache[i] for i in indices], indices, epoch=epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


@attrs.frozen
class NextStep1Step:
    """The step function: ``NextStep1.loss`` of the batch (moved to the model's device); logs
    ``loss/text``, ``loss/image`` (unweighted) and ``tokens`` (real tokens)."""

    def __call__(self, model: nn.Module, batch: NextStep1Batch) -> tuple[Tensor, dict[str, float]]:
        b = batch.to(next(model.parameters()).device)
        out = model.loss(b.ids, b.latents, targets=b.targets, attention_mask=b.attention_mask,
                         image_weights=b.image_weights)
        return out.total, {"loss/text": float(out.text.detach()), "loss/image": float(out.image.detach()),
                           "tokens": b.tokens}


# --- tokenizers -------------------------------------------------------------------------------


def load_autoencoder(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The continuous image tokenizer at ``path`` (an ``nx tokenizer train --kind ae`` run directory,
    its ``tokenizer/`` folder, or a ``save_pretrained`` directory), eval mode, gradients off."""
    path = Path(path)
    if not ((path / "config.json").is_file() or (path / "tokenizer" / "config.json").is_file()):
        raise FileNotFoundError(
            f"{path} holds no image tokenizer (no config.json, no tokenizer/config.json); pass the --out "
            "directory of `nx tokenizer train --kind ae`"
        )
    model = load_image_tokenizer(path, device=device)
    if not hasattr(model, "latent_dim") or hasattr(model, "codebook_size"):
        raise TypeError(
            f"{path} holds a {type(model).__name__}, not a continuous tokenizer: NextStep-1 reads latent "
            "tokens; train one with `nx tokenizer train --kind ae`"
        )
    return model


def _text_tokenizer(cfg: NextStep1TrainConfig, given: TextTokenizer | None) -> TextTokenizer:
    file = cfg.run_dir / TEXT_TOKENIZER_FILE
    if given is not None:
        return given
    if file.is_file():
        return read_text_tokenizer(file, cfg.text_tokenizer.special_tokens)
    return cfg.text_tokenizer.build()


def _model_fields(text: TextTokenizer, images: nn.Module) -> dict[str, int]:
    """The ``NextStep1Config`` fields the tokenizers decide: vocabulary, special ids, latent width."""
    specials = text.special_tokens
    fields = {name: specials[getattr(NEXTSTEP1_SPECIALS, role)] for name, role in _SPECIAL_FIELDS.items()}
    return {"vocab_size": int(text.vocab_size), "latent_dim": int(images.latent_dim), **fields}


def _check_model(model: NextStep1Config, text: TextTokenizer, images: nn.Module) -> None:
    want = _model_fields(text, images)
    have = {k: getattr(model, k) for k in want}
    if have != want:
        differ = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
        raise ValueError(
            f"cfg.model does not match the tokenizers (field: model, tokenizers): {differ}; build the config "
            "from these tokenizers (nextstep1_training_tiny) or start a new run directory"
        )


# --- the run ----------------------------------------------------------------------------------


NextStep1TrainSummary = RunSummary
"""What the training call returns (``nxrecipes.train.run.RunSummary``)."""


def train_nextstep1(cfg: NextStep1TrainConfig, *, text_tokenizer: TextTokenizer | None = None,
                    image_tokenizer: nn.Module | None = None, progress: bool = True) -> NextStep1TrainSummary:
    """Train (or resume) the run ``cfg`` describes (module docstring). ``text_tokenizer`` /
    ``image_tokenizer`` replace the run's own (``tokenizer.json`` or ``cfg.text_tokenizer``;
    ``cfg.tokenizer_dir``); they must agree with ``cfg.model``. ``progress``: a progress bar."""
    if not isinstance(cfg, NextStep1TrainConfig):
        raise TypeError(
            "cfg must be a NextStep1TrainConfig (e.g. nextstep1_training_tiny(...)), got "
            f"{type(cfg).__name__}"
        )
    started = time.perf_counter()
    tc, run_dir = cfg.train, cfg.run_dir
    env = init_distributed(force=False)
    text = _text_tokenizer(cfg, text_tokenizer)
    images = load_autoencoder(cfg.tokenizer_dir) if image_tokenizer is None else image_tokenizer
    images.eval()
    images.requires_grad_(False)
    _check_model(cfg.model, text, images)
    images = images.to(env.device)
    seed_all(tc.seed)
    model = cfg.model.build()

    write_run_files(run_dir, cfg, cfg.model, text, images)

    builder = cfg.data.builder(text, images, tc.seed)

    def batches() -> NextStep1Batches:
        return NextStep1Batches(cfg.data.dataset(tc.seed), builder, tc.batch_size, tc.seed,
                                cache=cfg.data.cache_latents, rank=env.rank, world_size=env.world_size)

    step_fn = NextStep1Step()
    spent = time.perf_counter() - started
    tc = planned_steps(cfg.minutes, run_dir, tc, lambda budget: plan_steps(
        model, step_fn, batches(), tc, env.device, budget, spent))
    total = tc.steps
    summary = fit_with_progress(model, step_fn, batches(), tc, desc="train NextStep-1", show=progress)
    return NextStep1TrainSummary(step=summary.step, total_steps=total, loss=summary.loss,
                                 resumed_from=summary.resumed_from, elapsed_s=time.perf_counter() - started,
                                 weights=summary.weights, run_dir=run_dir)


# --- the tiny builder -------------------------------------------------------------------------


SHAPEWORLD_T2I: Mapping[str, Any] = MappingProxyType({
    "size": 32, "task_mix": (("t2i", 1.0),), "max_distractors": 0, "lr": 2e-3, "use_gen_pos_embed": True,
    "input_noise": 0.5,
})
"""The best text-to-image recipe measured on ShapeWorld, as changes to ``nextstep1_training_tiny``
(with an autoencoder trained at 32 px): 4x4 tokens an image, text-to-image only, scenes holding only
what their prompt names, lr 2e-3, the 2D position of each image token added to its input, and input
noise 0.5. ShapeEval on one core (``benchmarks/nextstep1_quality.py``, runs
``s32-t2i-clean-lr2-genpos-noise5-*``): 0.09 test / 0.06 held-out after 10 minutes, 0.24 / 0.18 after
30 (the defaults: 0.08 / 0.00), 0.43 / 0.22 after 60; with ``num_layers=6`` 0.35 / 0.15 after 30."""


def nextstep1_training_tiny(
    run_dir: str | os.PathLike = "out/nextstep1",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    tokenizer_dir: str | os.PathLike,
    **changes: Any,
) -> NextStep1TrainConfig:
    """CPU-sized NextStep-1 training on ShapeWorld 64 px with the autoencoder at ``tokenizer_dir``:
    ``nextstep1_tiny`` (4 layers, width 128, head 128 x 3) with the BPE's vocabulary (~650 ids) and
    special ids, ``DEFAULT_TASK_MIX`` (t2i 0.7, edit 0.3), text dropout 0.1, batch 16, AdamW lr 1e-3
    (betas 0.9/0.95, weight decay 0.05), 50 warmup updates then cosine to 5%, gradient clip 1.
    (At 64 px with an f8 + 2x2-patch tokenizer an image is 8x8 = 64 tokens, a t2i row ~85 tokens,
    an edit row ~150.)

    ``changes`` are routed by field name to ``NextStep1DataConfig`` (``size``, ``task_mix``, ...),
    ``TrainConfig`` (``batch_size``, ``lr``, ...), ``NextStep1Config`` (``num_layers``, ``head``, ...;
    not the fields the tokenizers decide) or ``NextStep1TrainConfig`` itself (``text_tokenizer``).
    Trains the BPE (a second or two, cached) to know the vocabulary."""
    decided = frozenset({"vocab_size", "latent_dim", *_SPECIAL_FIELDS})
    routes = route_changes("nextstep1_training_tiny", changes, {
        "data": {f.name for f in attrs.fields(NextStep1DataConfig)},
        "train": train_fields(),
        "model": {f.name for f in attrs.fields(NextStep1Config)} - decided,
        "top": {"text_tokenizer"},
    }, decided)
    text_cfg = routes["top"].pop("text_tokenizer", nextstep1_text_tokenizer())
    images = load_autoencoder(tokenizer_dir)
    train = cpu_train_config(run_dir, steps=steps, minutes=minutes, batch_size=16, changes=routes["train"])
    model = nextstep1_tiny(**_model_fields(text_cfg.build(), images), **routes["model"])
    return NextStep1TrainConfig(
        model=model,
        text_tokenizer=text_cfg,
        tokenizer_dir=tokenizer_dir,
        data=NextStep1DataConfig(**routes["data"]),
        train=train,
        minutes=minutes,
    )


# --- reading a run back -----------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class NextStep1Run:
    """A trained run: the ``model`` with its final weights (eval mode), the ``text_tokenizer``, the
    frozen ``image_tokenizer``, the ``config`` and the ``run_dir``."""

    config: NextStep1TrainConfig
    model: NextStep1
    text_tokenizer: BPETokenizer
    image_tokenizer: nn.Module
    run_dir: Path


def load_run(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> NextStep1Run:
    """The run at ``run_dir`` with the final weights of ``model.safetensors`` (written when a
    ``train_nextstep1`` call ends)."""
    cfg, weights = read_run_config(run_dir, NextStep1TrainConfig, system="NextStep-1",
                                   trainer="train_nextstep1")
    run_dir = Path(run_dir)
    text = read_text_tokenizer(run_dir / TEXT_TOKENIZER_FILE, cfg.text_tokenizer.special_tokens)
    images = load_autoencoder(run_dir / IMAGE_TOKENIZER_DIR, device=device)
    model = cfg.model.build().to(device)
    load_into(model, weights)
    model.eval()
    return NextStep1Run(config=cfg, model=model, text_tokenizer=text, image_tokenizer=images, run_dir=run_dir)
