"""Training image tokenizers: ``train_tokenizer(cfg)`` with a step or wall-clock budget.

One loop for every tokenizer, through its ``TokenizerObjective`` (``objective.py``)::

    cfg = autoencoder_training_tiny("out/tokenizer-ae", minutes=15)   # or multiscale_vq_training_tiny
    summary = train_tokenizer(cfg)                                     # resumes if out/... has a checkpoint
    print(summary.report.format_table())

Run directory::

    run_dir/
        run_config.json        this TokenizerTrainConfig (JSON; ``load_run`` reads it back)
        checkpoints/           training state: model, optimizer, scheduler, RNG, data position
        tokenizer/             save_pretrained of the tokenizer (config.json + model.safetensors)
        metrics.jsonl          training losses every ``log_every`` updates; held-out PSNR, SSIM,
                               per-scale usage and perplexity every ``eval_every`` updates
        eval.json              the last held-out evaluation (EvalReport), with step and time
        metrics.png, codes.png curves (when matplotlib is installed)

**Budget.** ``train.steps`` updates, or with ``minutes`` a wall-clock budget for the whole run
(updates, evaluations and checkpoints, summed over resumed sessions): after ``CALIBRATION_STEPS``
updates, and again at every evaluation, the loop measures the time of an update (the median of the
last ``RECENT_UPDATES``), of an evaluation and of a checkpoint, and sets the number of updates that
fits, capped at ``train.steps``; the cosine learning-rate schedule decays over that number (a
machine that slows down mid-run shortens it a little). The number is saved with every checkpoint and
a resumed run starts from it. Should the time run out anyway, the run stops there, evaluates and
saves, still within the budget. Resuming is exact with ``train.steps``; with ``minutes`` the plan
depends on measured times.

**Staged training.** An objective that is a ``StagedObjective`` (``DualCodebookObjective`` with
``stages``: NextFlow's branch-wise training) is asked before every update which stage the update is
in, as a fraction of the current plan of updates; on entering a stage the trainer calls its
``enter_stage`` (``DualCodebookTokenizer.set_stage``: the other branches stop requiring grad, get
no gradient and so no AdamW update) and logs ``stage`` (its index) to ``metrics.jsonl``. Stages only
move forward; a resumed run enters the stage of the step it resumes at.

**Checkpoints and resume** reuse the shared loop's pieces (``nxrecipes.train``): ``TrainConfig``,
``IndexedBatches``, AdamW + warmup-cosine, ``save_training_state`` / ``load_latest_training_state``
(atomic; RNG and data position restored, so a resumed run draws the batches the uninterrupted one
would have), ``MetricsLogger``. The tokenizer itself goes through ``nxcore.checkpoint.save_pretrained``
at every checkpoint. One process; the shared ``Trainer`` is not used because it has no hook for
periodic evaluation, no wall-clock budget and no progress bar.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from tqdm.auto import tqdm

from nxcore.checkpoint import atomic_write_text, from_pretrained, save_pretrained
from nxcore.config import Config, boolean, config, finite_number, integer
from nxcore.tokenizer.autoencoder import autoencoder_tiny
from nxcore.tokenizer.multiscale import multiscale_vq_tiny
from nxrecipes.tokenizer.data import ShapeWorldImages
from nxrecipes.tokenizer.evaluate import EvalReport, evaluate
from nxrecipes.tokenizer.objective import (
    AutoencoderObjective,
    DualCodebookObjective,
    MultiScaleVQObjective,
    StagedObjective,
    TokenizerObjective,
    check_objective,
    square_schedule,
)
from nxrecipes.train.batches import IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.loop import TrainingDiverged
from nxrecipes.train.metrics import MetricsLogger
from nxrecipes.train.optim import build_optimizer, lr_factor
from nxrecipes.train.seeding import seed_all
from nxrecipes.train.state import latest_checkpoint, load_latest_training_state, save_training_state

__all__ = [
    "CALIBRATION_STEPS",
    "EVAL_FILE",
    "RUN_CONFIG_FILE",
    "TOKENIZER_DIR",
    "TokenizerRun",
    "TokenizerTrainConfig",
    "TokenizerTrainSummary",
    "autoencoder_training_tiny",
    "dual_codebook_training_tiny",
    "load_run",
    "multiscale_vq_training_tiny",
    "train_tokenizer",
]

RUN_CONFIG_FILE = "run_config.json"
TOKENIZER_DIR = "tokenizer"
EVAL_FILE = "eval.json"
CALIBRATION_STEPS = 8
RECENT_UPDATES = 50


def _component(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Config):
        raise TypeError(
            f"{type(instance).__qualname__}.{attribute.name} must be an nx Config with build(), got "
            f"{type(value).__name__}"
        )


def _objective(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _component(instance, attribute, value)
    if not isinstance(value, TokenizerObjective):
        raise TypeError(
            f"{type(instance).__qualname__}.objective must be a TokenizerObjective config "
            f"(AutoencoderObjective, MultiScaleVQObjective, ...), got {type(value).__name__}"
        )


def _minutes(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        finite_number(above=0)(instance, attribute, value)


def _train(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, TrainConfig):
        raise TypeError(f"TokenizerTrainConfig.train must be a TrainConfig, got {type(value).__name__}")
    if value.parallel != "none" or value.grad_accum != 1:
        raise ValueError(
            f"the tokenizer trainer runs in one process without accumulation; got parallel="
            f"{value.parallel!r}, grad_accum={value.grad_accum}: use parallel='none', grad_accum=1"
        )


@config
class TokenizerTrainConfig(Config):
    """A tokenizer training run: what to build, how to train it, on what, for how long.

    - ``tokenizer``: the tokenizer's config (``build()`` makes it; ``AutoencoderConfig``,
      ``MultiScaleVQConfig``, ...); ``objective``: its ``TokenizerObjective``.
    - ``data`` / ``eval_data``: image configs (``ShapeWorldImages``, ``ImageFolder``) for training
      and for the held-out evaluation.
    - ``train``: the shared ``TrainConfig`` (``run_dir``, ``steps``, ``batch_size``, ``lr``, ...;
      one process). With ``minutes``, ``train.steps`` is only a cap (module docstring).
    - ``eval_every``: evaluate on ``eval_data`` every this many updates (and at the start and end).
    - ``torch_init``: re-initialise every ``Conv2d`` with PyTorch's default (Kaiming-uniform) instead
      of the tokenizer's own init (the NextStep-1 autoencoder's N(0, 0.02)); from scratch on a CPU
      budget it trains much faster (ShapeWorld, 200 updates: 26.7 dB against 23.5 dB).
    """

    tokenizer: Config = attrs.field(validator=_component)
    objective: Config = attrs.field(validator=_objective)
    data: Config = attrs.field(validator=_component)
    eval_data: Config = attrs.field(validator=_component)
    train: TrainConfig = attrs.field(validator=_train)
    minutes: float | None = attrs.field(default=None, validator=_minutes)
    eval_every: int = attrs.field(default=100, validator=integer(at_least=1))
    eval_batch_size: int = attrs.field(default=64, validator=integer(at_least=1))
    torch_init: bool = attrs.field(default=False, validator=boolean())

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    def build(self) -> nn.Module:
        """The tokenizer (freshly initialised)."""
        return self.tokenizer.build()


# --- tiny defaults ----------------------------------------------------------------------------------


def _shapeworld_run(run_dir, minutes, steps, size, train_images, eval_images, eval_every,
                    train_changes) -> dict[str, Any]:
    """The fields every ShapeWorld builder shares: train/held-out images, the loop, the budget."""
    return {
        "data": ShapeWorldImages(split="train", size=size, length=train_images),
        "eval_data": ShapeWorldImages(split="test", size=size, length=eval_images),
        "train": _train_config(run_dir, minutes, steps, **train_changes),
        "minutes": minutes,
        "eval_every": eval_every,
    }


def _train_config(run_dir: str | os.PathLike, minutes: float | None, steps: int | None, **changes: Any
                  ) -> TrainConfig:
    fields: dict[str, Any] = {
        "run_dir": run_dir,
        "steps": steps if steps is not None else (100_000 if minutes is not None else 1000),
        "batch_size": 8,
        "lr": 2e-3,
        "min_lr_ratio": 0.05,
        "warmup_steps": 20,
        "weight_decay": 0.0,
        "betas": (0.9, 0.99),
        "grad_clip": 1.0,
        "checkpoint_every": 200,
        "keep_last": 2,
        "log_every": 10,
    }
    fields.update(changes)
    fields["warmup_steps"] = min(fields["warmup_steps"], fields["steps"])
    return TrainConfig(**fields)


def autoencoder_training_tiny(
    run_dir: str | os.PathLike = "out/tokenizer-ae",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    size: int = 64,
    train_images: int = 4096,
    eval_images: int = 256,
    eval_every: int = 100,
    **train_changes: Any,
) -> TokenizerTrainConfig:
    """NextStep-1's autoencoder, CPU-sized, on ShapeWorld ``size`` px: ch 16, levels (1, 2, 2),
    z 16, 2x2 patches (downsample 8: 8x8 tokens of 64 dims at 64 px, as NextStep-1's latent_dim),
    plain L2 (no latent noise), PyTorch's conv init, batch 8."""
    return TokenizerTrainConfig(
        tokenizer=autoencoder_tiny(ch=16, ch_mult=(1, 2, 2), z_channels=16, norm_groups=8),
        objective=AutoencoderObjective(),
        **_shapeworld_run(run_dir, minutes, steps, size, train_images, eval_images, eval_every,
                          train_changes),
        torch_init=True,
    )


def multiscale_vq_training_tiny(
    run_dir: str | os.PathLike = "out/tokenizer-vq",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    size: int = 64,
    train_images: int = 4096,
    eval_images: int = 256,
    eval_every: int = 100,
    **train_changes: Any,
) -> TokenizerTrainConfig:
    """The VAR-compatible multi-scale VQ, CPU-sized, on ShapeWorld ``size`` px: ch 16, levels
    (1, 2, 2) (downsample 4), 256 codes of width 8, cosine search, two φ; VAR-style square
    schedule ending at size / 4 (10 scales at 64 px), batch 8."""
    tokenizer = multiscale_vq_tiny(ch=16, ch_mult=(1, 2, 2), norm_groups=8, codebook_size=256, code_dim=8,
                                   normalize=True, phi_count=2)
    grid = size // tokenizer.downsample
    return TokenizerTrainConfig(
        tokenizer=tokenizer,
        objective=MultiScaleVQObjective(steps=square_schedule(grid)),
        **_shapeworld_run(run_dir, minutes, steps, size, train_images, eval_images, eval_every,
                          train_changes),
    )


def dual_codebook_training_tiny(
    run_dir: str | os.PathLike = "out/tokenizer-dual",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    size: int = 64,
    train_images: int = 4096,
    eval_images: int = 256,
    eval_every: int = 100,
    schedule: Sequence[tuple[int, int]] | None = None,
    **changes: Any,
) -> TokenizerTrainConfig:
    """NextFlow's dual-codebook tokenizer, CPU-sized, on ShapeWorld ``size`` px: pixel CNN ch 16,
    levels (1, 2, 2) (downsample 4), 256 shared-index codes with halves 8 (semantic) + 8 (pixel), a
    one-block ViT against the default frozen-copy teacher; VAR-style square schedule ending at
    size / 4 (``schedule`` replaces it; it must end at that grid), batch 8. All branches train
    together (no ``stages``).

    Chosen by from-scratch runs of 400 updates on ShapeWorld 64 px (the 15-minute result is in
    ``benchmarks/results/tokenizers/dual``): raw codewords with the cumulative VQ loss (``dual_tiny``;
    TokenFlow's unit codewords collapse the codebook: 42% of codes, perplexity 7), no scale dropping
    (NextFlow's 50% costs 4 dB at this budget: the decoder never sees the full sum it is evaluated
    on) and the search led by the pixel half, ``w_sem = 0.0`` (the semantic half still learns its
    codewords and ``decode_semantic`` works; w_sem 1 costs 2 dB).

    ``changes`` are routed by name: ``DualCodebookConfig`` fields and its branches' fields
    (``ch_mult``, ``width``, ...) to the tokenizer, ``TrainConfig`` fields (``lr``, ``batch_size``,
    ...) to the loop, ``DualCodebookObjective`` fields (``stages``, ``truncate``) to the objective. E.g.
    ``normalize=False, restart_every=20, codebook_size=64`` (Euclidean search with dead-code restarts)
    at 32 px, 10 minutes: PSNR 31.6 dB against 29.7, ShapeEval of the reconstructions 0.945 against
    0.871, and 444 nats of code entropy per image against 769 (``benchmarks/results/tokenizers/codes.md``).
    """
    from nxcore.tokenizer.dual import DualCodebookConfig, PixelConfig, SemanticConfig, dual_tiny
    from nxrecipes.train.run import route_changes, train_fields

    branches = {f.name for cls in (SemanticConfig, PixelConfig) for f in attrs.fields(cls)}
    routes = route_changes("dual_codebook_training_tiny", changes, {
        "tokenizer": {f.name for f in attrs.fields(DualCodebookConfig)} - {"semantic", "pixel"} | branches,
        "train": train_fields(),
        "objective": {f.name for f in attrs.fields(DualCodebookObjective)} - {"steps"},
    })
    tokenizer = dual_tiny(**{"ch": 16, "ch_mult": (1, 2, 2), "norm_groups": 8, "z_channels": 16,
                             "codebook_size": 256, "sem_dim": 8, "pix_dim": 8, "scale_drop": 0.0,
                             "w_sem": 0.0, **routes["tokenizer"]})
    grid = size // tokenizer.downsample
    if schedule is not None and tuple(schedule[-1]) != (grid, grid):
        raise ValueError(
            f"schedule ends at {tuple(schedule[-1])} but {size} px at downsample {tokenizer.downsample} is a "
            f"{grid}x{grid} grid; end the schedule at ({grid}, {grid})"
        )
    return TokenizerTrainConfig(
        tokenizer=tokenizer,
        objective=DualCodebookObjective(steps=square_schedule(grid) if schedule is None else schedule,
                                        **routes["objective"]),
        **_shapeworld_run(run_dir, minutes, steps, size, train_images, eval_images, eval_every,
                          routes["train"]),
    )


# --- the loop --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenizerTrainSummary:
    """What ``train_tokenizer`` did: ``step`` updates done in all (of ``total_steps``),
    ``loss`` (the last update's; None when this call ran none), ``resumed_from`` (the checkpoint
    step), ``elapsed_s`` (training + evaluation time of the whole run), the last held-out
    ``report``, and the saved ``tokenizer_dir``."""

    step: int
    total_steps: int
    loss: float | None
    resumed_from: int | None
    elapsed_s: float
    report: EvalReport
    tokenizer_dir: Path
    run_dir: Path


class _Plan:
    """The LR factor of the current plan (``cfg.steps`` may be fixed only after calibration).

    A re-calibration that finds more time lengthens the cosine, which would raise the learning rate
    mid-run (a loss spike each time); after warmup the factor therefore never rises above the last
    one used. ``factor`` is a plain function, so the scheduler's state_dict holds no objects."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.ceiling = 1.0

        def factor(step: int) -> float:
            value = lr_factor(step, self.cfg)
            if step >= self.cfg.warmup_steps:
                value = min(value, self.ceiling)
                self.ceiling = value
            return value

        self.factor = factor

    def set_total(self, total: int) -> None:
        self.cfg = self.cfg.replace(steps=total, warmup_steps=min(self.cfg.warmup_steps, total))


def train_tokenizer(cfg: TokenizerTrainConfig, *, progress: bool = True) -> TokenizerTrainSummary:
    """Train (or resume) the run ``cfg`` describes; see the module docstring."""
    if not isinstance(cfg, TokenizerTrainConfig):
        raise TypeError(
            f"cfg must be a TokenizerTrainConfig (e.g. autoencoder_training_tiny()), got {type(cfg).__name__}"
        )
    tc, run_dir = cfg.train, cfg.run_dir
    objective = check_objective(cfg.objective.build())
    seed_all(tc.seed)
    model = cfg.tokenizer.build()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{type(cfg.tokenizer).__qualname__}.build() returned {type(model).__name__}, not a module"
        )
    if cfg.torch_init:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    data = IndexedBatches(cfg.data.build(), tc.batch_size, tc.seed, rank=0, world_size=1)
    heldout = cfg.eval_data.build()
    optimizer = build_optimizer(model, tc)
    plan = _Plan(tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.factor)
    budget = None if cfg.minutes is None else cfg.minutes * 60.0

    resume = load_latest_training_state(run_dir, model=model, optimizer=optimizer, scheduler=scheduler)
    total: int | None = tc.steps if budget is None else None
    clock = _Clock()
    if resume is None:
        step = 0
        seed_all(tc.seed, rank=0)
    else:
        step = resume.step
        state = resume.data_state
        data.load_state_dict(state["batches"])
        clock.base = float(state.get("elapsed_s", 0.0))
        if budget is not None and state.get("total_steps") is not None:
            total = int(state["total_steps"])  # the plan calibrated for this budget
    if total is not None:
        plan.set_total(total)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_CONFIG_FILE, cfg.to_json() + "\n")
    tokenizer_dir = run_dir / TOKENIZER_DIR
    logger = MetricsLogger(run_dir, resume_step=None if resume is None else resume.step, tensorboard=False)
    costs = {"eval": 0.0, "save": 0.0}

    def run_eval() -> EvalReport:
        started = time.perf_counter()
        report = evaluate(model, objective, heldout, batch_size=cfg.eval_batch_size)
        logger.log(step, report.log_values())
        costs["eval"] = time.perf_counter() - started
        return report

    def save() -> None:
        started = time.perf_counter()
        state = {"batches": data.state_dict(), "total_steps": total, "elapsed_s": clock()}
        save_training_state(run_dir, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                            data_state=state, keep_last=tc.keep_last)
        save_pretrained(model, tokenizer_dir)
        costs["save"] = time.perf_counter() - started

    staged, stage = isinstance(objective, StagedObjective), None

    def enter_stage() -> None:
        """Staged objectives: enter the stage of this update once the plan reaches it (stages only
        move forward; after a resume the stage of the resumed step)."""
        nonlocal stage
        want = objective.stage_index(step, total or tc.steps)
        if want is not None and (stage is None or want > stage):
            stage = want
            name = objective.enter_stage(model, stage)
            logger.log(step, {"stage": stage})
            if progress:
                bar.write(f"step {step}: stage {stage} ({name!r})")

    last_saved = None if resume is None else resume.step
    loss_value: float | None = None
    update_times: list[float] = []
    bar = tqdm(total=total or tc.steps, initial=step, desc=f"train {type(model).__name__}", unit="step",
               disable=not progress, dynamic_ncols=True)
    try:
        report = run_eval()
        reported_at = step
        bar.set_postfix(psnr=f"{report.psnr:.2f}")
        while total is None or step < total:
            started = time.perf_counter()
            if staged:
                enter_stage()
            images = data.next_batch()
            out, lr, grad_norm = _update(model, objective, optimizer, scheduler, images, tc.grad_clip, step,
                                         run_dir)
            loss_value = float(out.total)
            took = time.perf_counter() - started
            update_times.append(took)
            if step % tc.log_every == 0 or step + 1 == total:
                values = {f"loss/{k}": float(v) for k, v in out.parts.items()}
                values.update(loss=loss_value, lr=lr, grad_norm=grad_norm, step_time_s=took,
                              images_per_s=len(images) / took)
                logger.log(step, values)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", psnr=f"{report.psnr:.2f}")

            if budget is not None:
                calibrate = len(update_times) == CALIBRATION_STEPS or (
                    len(update_times) > CALIBRATION_STEPS and step % cfg.eval_every == 0
                )
                if calibrate:
                    overhead = costs["eval"] / cfg.eval_every
                    if tc.checkpoint_every:
                        overhead += costs["save"] / tc.checkpoint_every
                    total = _calibrate(step, tc.steps, budget, clock(), update_times[-RECENT_UPDATES:],
                                       overhead, costs["eval"] + costs["save"])
                    plan.set_total(total)
                    bar.total = total
                    bar.refresh()
                if clock() + costs["eval"] + costs["save"] >= budget:
                    total = step  # out of time: stop here, evaluate and save
            if step % cfg.eval_every == 0 or step == total:
                report = run_eval()
                reported_at = step
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total:
                save()
                last_saved = step
        if reported_at != step:
            report = run_eval()
        if last_saved != step or not tokenizer_dir.is_dir():
            save()
    finally:
        bar.close()
        logger.close()
    elapsed = clock()
    record = {"step": step, "total_steps": total, "elapsed_s": round(elapsed, 2), **report.to_dict()}
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    _plots(run_dir)
    return TokenizerTrainSummary(step=step, total_steps=int(total), loss=loss_value,
                                 resumed_from=None if resume is None else resume.step, elapsed_s=elapsed,
                                 report=report, tokenizer_dir=tokenizer_dir, run_dir=run_dir)


class _Clock:
    """Seconds of the whole run: ``base`` (earlier sessions) plus this session's wall time."""

    def __init__(self) -> None:
        self.base = 0.0
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return self.base + time.perf_counter() - self.started


def _update(model: nn.Module, objective: TokenizerObjective, optimizer: torch.optim.Optimizer,
            scheduler: Any, images: torch.Tensor, grad_clip: float | None, step: int,
            run_dir: Path) -> tuple[Any, float, float]:
    """One optimizer update; (the objective's output, the learning rate used, the gradient norm)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = objective.loss(model, images)
    out.total.backward()
    loss = float(out.total.detach())
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        checkpoint = latest_checkpoint(run_dir)
        raise TrainingDiverged(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; the last "
            f"checkpoint is {checkpoint}. Resume from it with a lower train.lr or a tighter train.grad_clip",
            step=step, micro_batch=0, what="loss" if not math.isfinite(loss) else "gradients", ranks=(0,),
            checkpoint=checkpoint,
        )
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return attrs.evolve(out, total=out.total.detach()), lr, grad_norm


def _calibrate(step: int, cap: int, budget: float | None, elapsed: float, update_times: list[float],
               overhead: float, final: float) -> int:
    """Updates in all that fit the budget: the time left, less the ``final`` evaluation and save and
    a 2% margin, over the cost of one update (the median of ``update_times``, the first left out as
    warm-up, plus ``overhead``: its share of the periodic evaluations and checkpoints); at most
    ``cap``, at least ``step``."""
    if budget is None:
        raise ValueError("_calibrate needs a budget in seconds")
    times = sorted(update_times[1:] or update_times)
    per_update = times[len(times) // 2] + overhead
    left = 0.98 * budget - elapsed - final
    return max(step, min(cap, step + int(left / per_update)))


def _plots(run_dir: Path) -> None:
    """metrics.png (losses, throughput, LR, PSNR/SSIM) and codes.png (usage and perplexity)."""
    try:
        from nxrecipes.train.plot import plot_run

        plot_run(run_dir, run_dir / "metrics.png", keys=["loss", "lr", "grad_norm", "eval"])
        records = json.loads((run_dir / EVAL_FILE).read_text())
        if records.get("codes") is not None:
            plot_run(run_dir, run_dir / "codes.png", keys=["usage", "perplexity"])
    except ImportError:  # matplotlib is optional (the dev extra)
        pass


# --- reading a run back -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenizerRun:
    """A trained run: its ``config``, the ``model`` (eval mode) and ``run_dir``."""

    config: TokenizerTrainConfig
    model: nn.Module
    run_dir: Path

    @property
    def objective(self) -> TokenizerObjective:
        return check_objective(self.config.objective.build())


def load_run(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> TokenizerRun:
    """The run at ``path`` (a run directory, or its ``tokenizer/`` directory) with its tokenizer
    loaded from ``tokenizer/`` (``from_pretrained``)."""
    path = Path(path)
    run_dir = path.parent if path.name == TOKENIZER_DIR and not (path / RUN_CONFIG_FILE).is_file() else path
    config_file = run_dir / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} does not exist: {path} is not a tokenizer run directory; pass the --out "
            "directory of `nx tokenizer train`"
        )
    cfg = TokenizerTrainConfig.load(config_file)
    if not (run_dir / TOKENIZER_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir / TOKENIZER_DIR} holds no saved tokenizer yet (the run saves it at its first "
            "checkpoint); train longer or resume the run"
        )
    model = from_pretrained(run_dir / TOKENIZER_DIR, device=device)
    model.eval()
    return TokenizerRun(config=cfg, model=model, run_dir=run_dir)
