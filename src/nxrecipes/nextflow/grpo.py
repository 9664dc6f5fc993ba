"""Prefix-tuning GRPO for NextFlow (paper §3.2.5, Eqs. 3–5, Fig. 12) through the shared ``Trainer``.

::

    cfg = grpo_tiny("out/grpo", start="out/nextflow", minutes=5, prefix_scales=2)
    summary = train_grpo(cfg)                 # resumes if out/grpo has a checkpoint
    pipeline = NextFlowPipeline.from_run("out/grpo")

One update: ``prompts_per_step`` ShapeWorld prompts (``split``), ``group_size`` samples of each from
the KV-cached sampler of the current policy (``rollout.collect_rollout``; rewards from ``reward``),
group-normalised advantages (Eq. 4), then the clipped, scale-reweighted objective with a KL term to
the frozen starting model (Eq. 5, ``nxrecipes.rl.grpo_loss``) on the log-probabilities of the first
``prefix_scales`` scales, recomputed teacher-forced (``rollout.policy_log_probs``). Later scales are
drawn by the current policy but contribute no gradient. ``updates_per_rollout`` (GRPO's μ) reuses
one rollout for that many updates — the ratio to the rollout-time policy, and so the clip, matter
from the second on.

Run directory: a NextFlow run directory (``load_run`` and ``NextFlowPipeline.from_run`` read it)::

    run_dir/
        grpo_config.json      this GRPOConfig
        run_config.json, model_config.json, tokenizer.json, image_tokenizer/   copied from ``start``
        checkpoints/, metrics.jsonl, train_config.json, model.safetensors      (the shared Trainer's)
        plan.json             with ``minutes``

``metrics.jsonl`` holds the reward curve (``reward``, ``reward/std``, ``groups/flat``: the fraction
of groups whose rewards are all equal, which give no signal), ``objective``, ``kl``,
``clip_fraction``, ``ratio_mean``. Resuming is exact: checkpoints fall on rollout boundaries and
each rollout's noise is seeded by the run seed and its index.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from nxcore.checkpoint import atomic_write_text
from nxcore.config import Config, config, finite_number, in_range, integer, non_negative, one_of
from nxcore.reward.protocol import RewardModel
from nxrecipes.data.shapeworld import ShapeWorld
from nxrecipes.data.shapeworld.splits import SPLITS
from nxrecipes.nextflow.evaluate import default_sampling
from nxrecipes.nextflow.generate import ImageSampling
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.nextflow.rollout import collect_rollout, policy_log_probs, prefix_length
from nxrecipes.nextflow.train import NextFlowRun, load_run
from nxrecipes.rl.grpo import RATIOS, grpo_loss
from nxrecipes.train.batches import IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.run import (
    IMAGE_TOKENIZER_DIR,
    MODEL_CONFIG_FILE,
    RUN_CONFIG_FILE,
    TEXT_TOKENIZER_FILE,
    RunSummary,
    cpu_train_config,
    fit_with_progress,
    instance_of,
    optional_minutes,
    plan_steps,
    planned_steps,
    route_changes,
    train_fields,
)

__all__ = ["GRPOConfig", "GRPOStep", "PromptBatches", "grpo_tiny", "train_grpo"]

GRPO_CONFIG_FILE = "grpo_config.json"
COPIED = (RUN_CONFIG_FILE, MODEL_CONFIG_FILE, TEXT_TOKENIZER_FILE, IMAGE_TOKENIZER_DIR)


def _start(value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise TypeError(f"GRPOConfig.start must be the path of a NextFlow run directory, got {value!r}")


def _prefix(value: Any) -> int | None:
    if value is None or value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"prefix_scales = {value!r}; give a number of scales >= 1, or 'all' / None")
    return value


@config
class GRPOConfig(Config):
    """A GRPO run (module docstring).

    - ``start``: the NextFlow run to tune (its final weights are also the frozen reference policy);
    - ``reward``: a reward spec for ``nxrecipes.eval.rewards.parse_reward`` ("shapeeval", ...);
      ``train_grpo(reward=...)`` takes any ``RewardModel`` instead;
    - ``train``: the shared ``TrainConfig``; ``batch_size`` is the number of prompts per update;
    - ``group_size`` G; ``prefix_scales`` m (None: every scale; an m beyond the schedule trains them
      all); ``clip`` ε; ``beta`` (the KL weight); ``ratio`` ("token" or "scale", see
      ``nxrecipes.rl.grpo``); ``alpha`` (scale reweighting k_t = (h_t w_t)^-alpha);
      ``updates_per_rollout`` μ;
    - rollout sampling: ``cfg`` on every scale but the first, ``top_k`` (0: off), ``temperature``;
    - ``split``: where prompts come from; ``minutes``: a wall-clock budget (``train.steps`` a cap).
    """

    start: Path = attrs.field(converter=_start)
    train: TrainConfig = attrs.field(validator=instance_of(TrainConfig))
    reward: str = attrs.field(default="shapeeval")
    group_size: int = attrs.field(default=8, validator=integer(at_least=2))
    prefix_scales: int | None = attrs.field(default=8, converter=_prefix)
    clip: float = attrs.field(default=0.2, validator=in_range(0.0, 1.0, low_open=True, high_open=True))
    beta: float = attrs.field(default=0.01, validator=[finite_number(), non_negative()])
    ratio: str = attrs.field(default="token", validator=one_of(*RATIOS))
    alpha: float = attrs.field(default=0.9, validator=[finite_number(), non_negative()])
    updates_per_rollout: int = attrs.field(default=1, validator=integer(at_least=1))
    cfg: float = attrs.field(default=3.0, validator=finite_number())
    top_k: int = attrs.field(default=8, validator=integer(at_least=0))
    temperature: float = attrs.field(default=1.0, validator=finite_number(above=0))
    split: str = attrs.field(default="train", validator=one_of(*SPLITS))
    samples: int = attrs.field(default=100_000, validator=integer(at_least=1))
    minutes: float | None = attrs.field(default=None, validator=optional_minutes)

    def __attrs_post_init__(self) -> None:
        mu, every = self.updates_per_rollout, self.train.checkpoint_every
        if every % mu:
            raise ValueError(
                f"train.checkpoint_every = {every} is not a multiple of updates_per_rollout = {mu}; "
                "checkpoints must fall between rollouts for an exact resume"
            )

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir

    def sampling(self, num_steps: int) -> ImageSampling:
        """The rollout sampler of a ``num_steps``-scale schedule."""
        return attrs.evolve(default_sampling(num_steps, self.cfg), top_k=self.top_k,
                            temperature=self.temperature)

    def scales(self, num_steps: int) -> int:
        """m for a ``num_steps``-scale schedule."""
        return num_steps if self.prefix_scales is None else min(self.prefix_scales, num_steps)


# --- data and step ----------------------------------------------------------------------------


@attrs.frozen
class PromptBatch:
    """The prompts of rollout number ``index``."""

    index: int
    prompts: tuple[str, ...]


class PromptBatches:
    """Text-to-image prompts of ``dataset`` in the resumable order of ``IndexedBatches``, each batch
    served ``repeat`` times in a row (μ updates per rollout); the state is the number served."""

    def __init__(self, dataset: Any, prompts_per_step: int, seed: int, *, repeat: int = 1) -> None:
        self.dataset = dataset
        self.order = IndexedBatches(dataset, prompts_per_step, seed, rank=0, world_size=1, collate=list)
        self.repeat = repeat
        self.position = 0

    def next_batch(self) -> PromptBatch:
        index = self.position // self.repeat
        prompts = tuple(self.dataset[i].prompt for i in self.order.indices(index))
        self.position += 1
        return PromptBatch(index, prompts)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.position = int(state["position"])


class GRPOStep:
    """``step(model, batch) -> (loss, metrics)``: the rollout of ``batch`` by ``model`` (drawn once
    per batch index and model, then reused for μ updates), the prefix log-probabilities, Eq. 5."""

    def __init__(self, cfg: GRPOConfig, run: NextFlowRun, reward: RewardModel, reference: nn.Module) -> None:
        self.cfg, self.run, self.reward, self.reference = cfg, run, reward, reference
        steps = len(run.schedule.steps)
        self.sampling = cfg.sampling(steps)
        self.m = cfg.scales(steps)
        self.sizes = prefix_length(run.schedule, self.m)
        self._cached: tuple[int, int, Any] | None = None

    def rollout(self, model: nn.Module, batch: PromptBatch):
        key = (id(model), batch.index)
        if self._cached is None or self._cached[:2] != key:
            run = self.run
            pipeline = NextFlowPipeline(model, run.text_tokenizer, run.image_tokenizer, run.schedule)
            seed = self.cfg.train.seed * 1_000_003 + batch.index
            generator = torch.Generator(pipeline.device).manual_seed(seed)
            group = self.cfg.group_size
            rollout = collect_rollout(pipeline, list(batch.prompts), self.reward, group_size=group,
                                      sampling=self.sampling, generator=generator)
            self._cached = (*key, rollout)
        return self._cached[2]

    def __call__(self, model: nn.Module, batch: PromptBatch) -> tuple[Tensor, dict[str, float]]:
        rollout = self.rollout(model, batch)
        model.train()
        log_probs = policy_log_probs(model, rollout, self.m)
        ref = None
        if self.cfg.beta > 0:
            with torch.no_grad():
                ref = policy_log_probs(self.reference, rollout, self.m)
        advantages = rollout.advantages()
        c = self.cfg
        old = rollout.prefix_log_probs(self.m)
        loss, metrics = grpo_loss(log_probs, old, advantages, scale_sizes=self.sizes, alpha=c.alpha,
                                  clip=c.clip, beta=c.beta, ref_log_probs=ref, ratio=c.ratio)
        groups = rollout.rewards.view(-1, rollout.group_size)
        metrics |= {
            "reward": float(rollout.rewards.mean()),
            "reward/std": float(groups.std(dim=1).mean()),
            "groups/flat": float((groups.amax(dim=1) == groups.amin(dim=1)).float().mean()),
        }
        return loss, metrics


# --- the run ----------------------------------------------------------------------------------


GRPOSummary = RunSummary
"""What ``train_grpo`` returns (``nxrecipes.train.run.RunSummary``)."""


def _copy_start(start: Path, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, target = start / name, run_dir / name
        if target.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, run_dir / f".{name}.partial", dirs_exist_ok=True)
            os.replace(run_dir / f".{name}.partial", target)
        else:
            atomic_write_text(target, source.read_text())


def train_grpo(cfg: GRPOConfig, *, reward: RewardModel | None = None, progress: bool = True) -> GRPOSummary:
    """Tune ``cfg.start`` with prefix-tuning GRPO (module docstring); ``reward`` replaces
    ``cfg.reward`` (any ``RewardModel``, e.g. ``CallableReward(fn)``)."""
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig (e.g. grpo_tiny(...)), got {type(cfg).__name__}")
    started = time.perf_counter()
    run = load_run(cfg.start)
    model = run.model
    if reward is None:
        from nxrecipes.eval.rewards import parse_reward

        reward = parse_reward(cfg.reward, device=model.embed_tokens.weight.device)
    model.requires_grad_(True)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    _copy_start(cfg.start, cfg.run_dir)
    atomic_write_text(cfg.run_dir / GRPO_CONFIG_FILE, cfg.to_json() + "\n")
    dataset = ShapeWorld(split=cfg.split, size=run.config.data.size, tasks=("t2i",), length=cfg.samples,
                         seed=cfg.train.seed)
    step_fn = GRPOStep(cfg, run, reward, reference)
    tc, mu = cfg.train, cfg.updates_per_rollout

    def batches() -> PromptBatches:
        return PromptBatches(dataset, tc.batch_size, tc.seed, repeat=mu)

    device = model.embed_tokens.weight.device
    spent = time.perf_counter() - started
    tc = planned_steps(cfg.minutes, cfg.run_dir, tc, lambda budget: max(mu, plan_steps(
        model, step_fn, batches(), tc, device, budget, spent) // mu * mu))
    summary = fit_with_progress(model, step_fn, batches(), tc, desc="GRPO", show=progress)
    return GRPOSummary(step=summary.step, total_steps=tc.steps, loss=summary.loss,
                       resumed_from=summary.resumed_from, elapsed_s=time.perf_counter() - started,
                       weights=summary.weights, run_dir=cfg.run_dir)


def grpo_tiny(run_dir: str | os.PathLike = "out/grpo", *, start: str | os.PathLike,
              minutes: float | None = None, steps: int | None = None, **changes: Any) -> GRPOConfig:
    """CPU-sized GRPO of a ``nextflow_training_tiny`` run: 4 prompts x G = 8 samples per update,
    m = 8, AdamW lr 1e-5 (no weight decay, 5 warmup updates, constant after: ``min_lr_ratio`` 1),
    gradient clip 1, a checkpoint every 20 updates, 100 updates unless ``steps`` or ``minutes`` say.
    ``changes`` are routed by field name to ``GRPOConfig`` or to ``TrainConfig``."""
    routes = route_changes("grpo_tiny", changes, {
        "train": train_fields(),
        "top": {f.name for f in attrs.fields(GRPOConfig)} - {"start", "train", "minutes"},
    })
    mu = routes["top"].get("updates_per_rollout", 1)
    defaults = {"lr": 1e-5, "weight_decay": 0.0, "warmup_steps": 5, "min_lr_ratio": 1.0,
                "checkpoint_every": 20 * mu, "log_every": 1}
    if steps is None and minutes is None:
        steps = 100
    train = cpu_train_config(run_dir, steps=steps, minutes=minutes, batch_size=4,
                             changes=defaults | routes["train"])
    return GRPOConfig(start=start, train=train, minutes=minutes, **routes["top"])
