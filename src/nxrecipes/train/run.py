"""What the systems' trainers (``nxrecipes.nextflow.train``, ``nxrecipes.nextstep1.train``) share around
the ``Trainer``: the run-directory layout, the wall-clock budget, the progress bar, reading a run
back, and the config validators of their run configs.

Run directory::

    run_dir/
        run_config.json       the system's train config (``read_run_config`` reads it back)
        model_config.json     the model config alone
        tokenizer.json        the BPE text tokenizer (trained once, reused on resume)
        image_tokenizer/      save_pretrained copy of the frozen image tokenizer
        plan.json             with a minutes budget: the number of updates it allows
        checkpoints/, metrics.jsonl, train_config.json, model.safetensors   (the shared Trainer's)

**Budget** (``plan_steps``): time ``CALIBRATION_STEPS`` updates (data included) on a copy of the
model, take the median, and fit what is left of the budget (with ``BUDGET_MARGIN``), at most
``train.steps``. The shared loop has no hook to re-measure mid-run, so a run keeps its plan.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from nxcore.checkpoint import atomic_write_text, save_pretrained
from nxcore.config import Config, finite_number
from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxrecipes.train.batches import BatchSource
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.distributed import autocast
from nxrecipes.train.loop import WEIGHTS_FILE, Trainer, TrainSummary
from nxrecipes.train.optim import build_optimizer

__all__ = [
    "BUDGET_MARGIN",
    "CALIBRATION_STEPS",
    "IMAGE_TOKENIZER_DIR",
    "MODEL_CONFIG_FILE",
    "PLAN_FILE",
    "RUN_CONFIG_FILE",
    "RunSummary",
    "TEXT_TOKENIZER_FILE",
    "UpdateProgress",
    "cpu_train_config",
    "fit_with_progress",
    "instance_of",
    "optional_minutes",
    "plan_steps",
    "planned_steps",
    "read_run_config",
    "read_text_tokenizer",
    "route_changes",
    "train_fields",
    "write_run_files",
]

RUN_CONFIG_FILE = "run_config.json"
MODEL_CONFIG_FILE = "model_config.json"
TEXT_TOKENIZER_FILE = "tokenizer.json"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
PLAN_FILE = "plan.json"
CALIBRATION_STEPS = 6
BUDGET_MARGIN = 0.95  # of the time left: checkpoints and the final export are not timed


# --- config validators -------------------------------------------------------------------------


def instance_of(kind: type):
    """attrs validator: the field holds a ``kind`` (a sub-config of a run config)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, kind):
            raise TypeError(
                f"{type(instance).__qualname__}.{attribute.name} must be a {kind.__name__}, got "
                f"{type(value).__name__}"
            )

    return validate


def optional_minutes(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: None (no budget) or a finite number of minutes > 0."""
    if value is not None:
        finite_number(above=0)(instance, attribute, value)


# --- the tiny builders' settings ----------------------------------------------------------------


def route_changes(builder: str, changes: dict[str, Any], fields: dict[str, set[str]],
                  decided: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """``changes`` sorted by field name into ``{place: {name: value}}`` for every place of ``fields``
    (``{place: field names}``); an unknown name is an error naming ``builder`` and the known ones (and,
    for a name in ``decided``, that the tokenizers decide it)."""
    routes: dict[str, dict[str, Any]] = {place: {} for place in fields}
    for key, value in changes.items():
        where = next((place for place, known in fields.items() if key in known), None)
        if where is None:
            hint = " (the tokenizers decide it)" if key in decided else ""
            known = sorted(set().union(*fields.values()))
            raise ValueError(f"{builder} has no setting {key!r}{hint}; known settings are {known}")
        routes[where][key] = value
    return routes


def train_fields() -> set[str]:
    """The ``TrainConfig`` fields a tiny builder's ``changes`` may set (not ``run_dir``, ``steps``)."""
    return {f.name for f in attrs.fields(TrainConfig)} - {"run_dir", "steps"}


def cpu_train_config(run_dir: Any, *, steps: int | None, minutes: float | None, batch_size: int,
                     changes: dict[str, Any]) -> TrainConfig:
    """The tiny builders' ``TrainConfig``: ``batch_size``, AdamW lr 1e-3 (betas 0.9 / 0.95, weight
    decay 0.05), 50 warmup updates then cosine to 5 %, gradient clip 1, a checkpoint every 100
    updates (two kept), a log line every 10; ``steps`` defaults to 2000, or to a cap of 100,000 under
    a ``minutes`` budget; ``changes`` override any of it."""
    train = {
        "run_dir": run_dir,
        "steps": steps if steps is not None else (100_000 if minutes is not None else 2000),
        "batch_size": batch_size,
        "lr": 1e-3,
        "min_lr_ratio": 0.05,
        "warmup_steps": 50,
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "grad_clip": 1.0,
        "checkpoint_every": 100,
        "keep_last": 2,
        "log_every": 10,
    } | changes
    train["warmup_steps"] = min(train["warmup_steps"], train["steps"])
    return TrainConfig(**train)


# --- a run's files -----------------------------------------------------------------------------


def write_run_files(run_dir: Path, cfg: Config, model_cfg: Config, text: Any, images: nn.Module) -> None:
    """``run_config.json`` and ``model_config.json`` (every start), and, once, the text tokenizer
    (``tokenizer.json``; a ``BPETokenizer``) and the frozen image tokenizer (``image_tokenizer/``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_CONFIG_FILE, cfg.to_json() + "\n")
    atomic_write_text(run_dir / MODEL_CONFIG_FILE, model_cfg.to_json() + "\n")
    if not (run_dir / TEXT_TOKENIZER_FILE).is_file():
        if not isinstance(text, BPETokenizer):
            raise TypeError(
                f"the text tokenizer must be a BPETokenizer to be saved, got {type(text).__name__}"
            )
        text.save(run_dir / TEXT_TOKENIZER_FILE)
    if not (run_dir / IMAGE_TOKENIZER_DIR / "config.json").is_file():
        save_pretrained(images, run_dir / IMAGE_TOKENIZER_DIR)


# --- the budget and the progress bar -----------------------------------------------------------


def planned_steps(minutes: float | None, run_dir: Path, tc: TrainConfig, plan: Callable[[float], int]
                  ) -> TrainConfig:
    """``tc`` with the number of updates a ``minutes`` budget allows (unchanged without one): read
    from ``plan.json`` when the run has one (a resumed run keeps its plan), else
    ``plan(budget_seconds)`` (``plan_steps`` with the run's model and data), saved there."""
    if minutes is None:
        return tc
    plan_file = run_dir / PLAN_FILE
    if plan_file.is_file():
        total = int(json.loads(plan_file.read_text())["total_steps"])
    else:
        total = plan(minutes * 60.0)
        atomic_write_text(plan_file, json.dumps({"total_steps": total, "minutes": minutes}) + "\n")
    return tc.replace(steps=total, warmup_steps=min(tc.warmup_steps, total))


def fit_with_progress(model: nn.Module, step_fn: Callable, data: Any, tc: TrainConfig, *, desc: str,
                      show: bool) -> TrainSummary:
    """``Trainer(model, step_fn, data, tc).fit()`` (FSDP blocks: the type of ``model.layers[0]``) with a
    progress bar of the updates when ``show``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, desc=desc, unit="step", disable=not show, dynamic_ncols=True)
    try:
        source = UpdateProgress(data, bar, tc.grad_accum)
        return Trainer(model, step_fn, source, tc, block_types=(type(model.layers[0]),)).fit()
    finally:
        bar.close()


def plan_steps(model: nn.Module, step_fn: Callable, data: BatchSource, tc: TrainConfig,
               device: torch.device, budget_s: float, spent_s: float) -> int:
    """Updates that fit in ``budget_s`` after ``spent_s``: time ``CALIBRATION_STEPS`` updates of a
    copy of ``model`` (the first left out as warm-up), take the median, keep a margin; at most
    ``tc.steps``, at least 1. ``step_fn(model, batch) -> (loss, metrics)``."""
    probe = copy.deepcopy(model).to(device)
    optimizer = build_optimizer(probe, tc)
    times = []
    started = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        t0 = time.perf_counter()
        with autocast(tc, device):
            loss, _ = step_fn(probe, data.next_batch())
        loss.backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(probe.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    spent_s += time.perf_counter() - started
    ordered = sorted(times[1:])
    per_update = ordered[len(ordered) // 2]
    left = BUDGET_MARGIN * budget_s - spent_s
    return max(1, min(tc.steps, int(left / per_update)))


class UpdateProgress:
    """A batch source that moves ``bar`` on by one update every ``per_update`` batches drawn (the
    shared loop has no hook; the bar follows the data position, resumes included)."""

    def __init__(self, source: Any, bar: Any, per_update: int) -> None:
        self.source, self.bar, self.per_update = source, bar, per_update

    def next_batch(self) -> Any:
        batch = self.source.next_batch()
        if self.source.position % self.per_update == 0:
            self.bar.update(1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        self.bar.n = self.source.position // self.per_update
        self.bar.refresh()


@attrs.frozen(kw_only=True)
class RunSummary:
    """What a system's training call did: ``step`` updates in all (of ``total_steps``), the last
    update's ``loss`` (None when this call ran none), ``resumed_from``, this call's ``elapsed_s``, the
    final ``weights`` file and the ``run_dir``."""

    step: int
    total_steps: int
    loss: float | None
    resumed_from: int | None
    elapsed_s: float
    weights: Path
    run_dir: Path


# --- reading a run back ------------------------------------------------------------------------


def read_text_tokenizer(file: Path, specials: SpecialTokens) -> BPETokenizer:
    """The run's ``tokenizer.json``, with the roles of ``specials`` when it holds all of them."""
    plain = BPETokenizer.from_file(file)
    if all(s in plain.special_tokens for s in specials.strings):
        return BPETokenizer.from_file(file, specials)
    return plain


def read_run_config(run_dir: str | os.PathLike, kind: type[Config], *, system: str, trainer: str
                    ) -> tuple[Any, Path]:
    """``(config, weights file)`` of the finished run at ``run_dir``: its ``run_config.json`` read as
    ``kind``, and ``model.safetensors`` (written when the ``trainer`` call ends); a clear error when
    ``run_dir`` is no ``system`` run or its weights are not exported yet."""
    run_dir = Path(run_dir)
    config_file = run_dir / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} does not exist: {run_dir} is not a {system} run directory; pass the run_dir "
            f"given to {trainer}"
        )
    cfg = kind.load(config_file)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} does not exist yet: the weights are exported when {trainer} ends; let the run "
            "finish (or resume it)"
        )
    return cfg, weights
