"""The shared training loop: ``Trainer(model, step_fn, data, cfg).fit()``.

``step_fn(model, batch) -> (loss, metrics)`` computes one micro-batch: a scalar loss tensor (the
mean over the micro-batch) and a dict of floats to log. The trainer owns everything else::

    env = init_distributed(force=cfg.parallel != "none")
    seed_all(cfg.seed)                               # the same initial weights on every rank
    model = build_model()
    data = IndexedBatches(dataset, cfg.batch_size, cfg.seed)
    summary = Trainer(model, step_fn, data, cfg, block_types=(Block,)).fit()

What ``fit`` does, each update: draw ``grad_accum`` micro-batches (gradients of the mean of their
losses; DDP synchronises on the last one only), check the losses and gradients for NaN/inf, clip
the global gradient norm, step AdamW and the warmup + cosine schedule, log, and save a checkpoint
every ``checkpoint_every`` updates and at the end; then export the final weights as safetensors.

**Resuming.** ``fit`` first resumes from the newest checkpoint of ``cfg.run_dir`` if there is one
(model, optimizer, scheduler, RNG states, data position). Everything that influences a run comes
from the seed, the data position and that state, so a run killed at any point and resumed ends
with the same weights, bit for bit, as one never interrupted.

**Divergence.** A NaN/inf loss or gradient stops the run before the optimizer applies it: the state
at the start of that update (weights, optimizer, RNG, data position) is saved as the checkpoint of
the last good step, then ``TrainingDiverged`` names the step, the micro-batch and the rank(s).
Resuming replays that update exactly, so the failure can be reproduced and inspected.

**Metrics** go to ``cfg.run_dir/metrics.jsonl`` (``MetricsLogger``) every ``log_every`` updates:
``loss`` (mean over micro-batches and ranks), ``lr``, ``grad_norm`` (before clipping),
``step_time_s``, and the step function's metrics averaged over the micro-batches and ranks that
reported them; a metric named ``tokens`` is summed instead and also gives ``tokens_per_s``, and
``mfu`` when the trainer is given ``flops_per_token`` and ``peak_flops`` (one device's peak; see
``metrics.transformer_flops_per_token``).
Ranks may report different metric names (say ``loss/t2i`` only where a t2i sample was drawn).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nxcore.checkpoint import atomic_write_text
from nxrecipes.train.batches import BatchSource, IndexedBatches
from nxrecipes.train.config import TrainConfig
from nxrecipes.train.distributed import DistEnv, autocast, init_distributed, wrap_model
from nxrecipes.train.metrics import MetricsLogger, mfu
from nxrecipes.train.optim import build_optimizer, warmup_cosine
from nxrecipes.train.seeding import seed_all
from nxrecipes.train.state import export_weights, load_latest_training_state, save_training_state

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "StepFn",
    "TrainSummary",
    "Trainer",
    "TrainingDiverged",
    "seed_all",
]

CONFIG_FILE = "train_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENS = "tokens"

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, float]]"]


class TrainingDiverged(RuntimeError):
    """A NaN or inf loss or gradient: raised on every rank after the last good state was saved."""

    def __init__(self, message: str, *, step: int, micro_batch: int, what: str, ranks: tuple[int, ...],
                 checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.micro_batch = micro_batch
        self.what = what
        self.ranks = ranks
        self.checkpoint = checkpoint


@attrs.frozen(kw_only=True)
class TrainSummary:
    """What ``fit`` did. ``step``: updates done in all (the final step). ``loss``: the last update's
    loss (mean over micro-batches and ranks; ``None`` when this call ran no update). ``losses``:
    the loss of every update this call ran, in order. ``resumed_from``: the checkpoint step it
    started from, if any. ``weights``: the exported safetensors file."""

    step: int
    loss: float | None
    losses: tuple[float, ...]
    resumed_from: int | None
    checkpoint: Path | None
    weights: Path


class Trainer:
    """Trains ``model`` with ``step_fn`` on ``data`` as ``cfg`` says; see the module docstring.

    Construction initialises the process group (``init_distributed``; a 1-rank group for DDP or
    FSDP2 in a single process), wraps the model (``wrap_model`` with ``block_types``), and builds
    the optimizer and scheduler; ``fit()`` resumes and trains. ``model`` (the wrapped module),
    ``optimizer``, ``scheduler``, ``env`` and ``step`` are attributes. Tensors in a batch (also in
    dicts, lists and tuples) are moved to the device before ``step_fn`` sees them.
    """

    def __init__(self, model: nn.Module, step_fn: StepFn, data: BatchSource, cfg: TrainConfig, *,
                 block_types: Iterable[type] = (), flops_per_token: float | None = None,
                 peak_flops: float | None = None):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(step_fn):
            raise TypeError(
                f"step_fn must be callable as step_fn(model, batch) -> (loss, metrics), got {step_fn!r}"
            )
        needed = ("next_batch", "state_dict", "load_state_dict")
        missing = [m for m in needed if not callable(getattr(data, m, None))]
        if missing:
            raise TypeError(
                f"data must be a resumable batch source with next_batch(), state_dict() and "
                f"load_state_dict(); {type(data).__name__} lacks {missing} (see IndexedBatches)"
            )
        self.cfg = cfg
        self.env: DistEnv = init_distributed(force=cfg.parallel != "none")
        if cfg.parallel == "none" and self.env.world_size > 1:
            raise ValueError(
                f"parallel='none' with {self.env.world_size} processes would train {self.env.world_size} "
                "separate models into one run_dir; use parallel='ddp' or 'fsdp' under torchrun"
            )
        where = (self.env.rank, self.env.world_size)
        if isinstance(data, IndexedBatches) and (data.rank, data.world_size) != where:
            raise ValueError(
                f"data is rank {data.rank} of {data.world_size} but this process is rank "
                f"{self.env.rank} of {self.env.world_size}; build IndexedBatches after init_distributed() "
                "or pass rank and world_size"
            )
        if (flops_per_token is None) != (peak_flops is None):
            raise ValueError(
                "give flops_per_token and peak_flops together (MFU needs both), got "
                f"flops_per_token={flops_per_token!r}, peak_flops={peak_flops!r}"
            )
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.step_fn = step_fn
        self.data = data
        self.model = wrap_model(model, cfg, block_types=block_types, env=self.env)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = warmup_cosine(self.optimizer, cfg)
        self.step = 0
        self._last_saved: int | None = None
        self._last_checkpoint: Path | None = None

    # --- the run ----------------------------------------------------------------------------

    def fit(self) -> TrainSummary:
        """Resume if ``cfg.run_dir`` holds a checkpoint, train to ``cfg.steps``, save, export."""
        cfg, env = self.cfg, self.env
        resume = load_latest_training_state(
            cfg.run_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        if resume is None:
            self.step = 0
            seed_all(cfg.seed, rank=env.rank)
        else:
            self.step = resume.step
            self.data.load_state_dict(resume.data_state)
            self._last_saved, self._last_checkpoint = resume.step, resume.path
        if env.is_main:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cfg.run_dir / CONFIG_FILE, cfg.to_json() + "\n")
        losses: list[float] = []
        resumed_from = None if resume is None else resume.step
        logger = MetricsLogger(cfg.run_dir, rank=env.rank, resume_step=resumed_from)
        try:
            while self.step < cfg.steps:
                losses.append(self._update(logger))
                self.step += 1
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
            if self._last_saved != self.step:
                self.save()
            weights = export_weights(self.model, cfg.run_dir / WEIGHTS_FILE)
        finally:
            logger.close()
        return TrainSummary(
            step=self.step,
            loss=losses[-1] if losses else None,
            losses=tuple(losses),
            resumed_from=resumed_from,
            checkpoint=self._last_checkpoint,
            weights=weights,
        )

    def save(self) -> Path:
        """Save the training state at ``self.step``; collective (every rank calls it)."""
        path = save_training_state(
            self.cfg.run_dir, step=self.step, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, data_state=self.data.state_dict(), keep_last=self.cfg.keep_last,
        )
        self._last_saved, self._last_checkpoint = self.step, path
        return path

    # --- one update -------------------------------------------------------------------------

    def _update(self, logger: MetricsLogger) -> float:
        cfg, env = self.cfg, self.env
        accum, device = cfg.grad_accum, env.device
        rng_at_start = _rng_snapshot()
        data_at_start = self.data.state_dict()
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Row ``rank`` of [world, 3, accum]: loss non-finite, gradients non-finite, loss value;
        # summed over ranks in one all_reduce, so every rank takes the same decision.
        board = torch.zeros(env.world_size, 3, accum, dtype=torch.float64, device=device)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for k in range(accum):
            batch = _to_device(self.data.next_batch(), device)
            with self._grad_sync(k == accum - 1):
                with autocast(cfg, device):
                    loss, metrics = self._call_step_fn(batch)
                (loss.float() / accum).backward()
            loss = loss.detach().float()
            board[env.rank, 0, k] = (~torch.isfinite(loss)).double()
            board[env.rank, 2, k] = loss.double()
            if k < accum - 1:  # the last micro-batch is judged by the global gradient norm below
                board[env.rank, 1, k] = _local_grads_nonfinite(self.model).double()
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + _float(key, value)
                counts[key] = counts.get(key, 0) + 1

        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = _total_norm(params)
        if env.world_size > 1:
            dist.all_reduce(board)
        board_list = board.tolist()
        grad_norm = float(_full(norm))
        problem = _first_problem(board_list)
        if problem is None and not math.isfinite(grad_norm):
            problem = self._last_micro_batch_problem()
        if problem is not None:
            self._diverged(problem, board_list, rng_at_start, data_at_start)
        if cfg.grad_clip is not None and params:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, norm)

        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        loss_mean = sum(sum(row[2]) for row in board_list) / (env.world_size * accum)
        if self.step % cfg.log_every == 0 or self.step == cfg.steps - 1:
            elapsed = time.perf_counter() - started
            values = self._gather_metrics(sums, counts, elapsed)
            values.update(loss=loss_mean, lr=lr, grad_norm=grad_norm, step_time_s=elapsed)  # ours win
            logger.log(self.step, values)
        return loss_mean

    def _call_step_fn(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
        out = self.step_fn(self.model, batch)
        loss, metrics = (out, {}) if isinstance(out, torch.Tensor) else out
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"step_fn must return (loss, metrics) with loss a scalar tensor; got loss = "
                f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}"
            )
        if not loss.requires_grad:
            raise ValueError(
                "the loss returned by step_fn does not require grad: it is not computed from the "
                "model's trainable parameters (was it detached, or computed under no_grad?)"
            )
        if metrics is None:
            metrics = {}
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"step_fn's metrics must be a dict of name -> float, got {type(metrics).__name__}"
            )
        return loss.reshape(()), metrics

    def _grad_sync(self, sync: bool):
        """DDP: skip the all-reduce on all but the last micro-batch. FSDP2 reduce-scatters every
        micro-batch (gradients stay sharded, the ZeRO-2/3 memory saving)."""
        no_sync = getattr(self.model, "no_sync", None)
        if not sync and self.cfg.parallel == "ddp" and no_sync is not None:
            return no_sync()
        return contextlib.nullcontext()

    def _gather_metrics(self, sums: dict[str, float], counts: dict[str, int],
                        elapsed: float) -> dict[str, float]:
        if self.env.world_size > 1:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, (sums, counts))
        else:
            gathered = [(sums, counts)]
        total: dict[str, float] = {}
        n: dict[str, int] = {}
        for s, c in gathered:
            for key, value in s.items():
                total[key] = total.get(key, 0.0) + value
                n[key] = n.get(key, 0) + c[key]
        out = {key: (total[key] if key == TOKENS else total[key] / n[key]) for key in sorted(total)}
        if TOKENS in out and elapsed > 0:
            out["tokens_per_s"] = out[TOKENS] / elapsed
            if self.flops_per_token is not None:
                job_peak = self.peak_flops * self.env.world_size
                out["mfu"] = mfu(out["tokens_per_s"], self.flops_per_token, job_peak)
        return out

    def _last_micro_batch_problem(self) -> tuple[int, str, tuple[int, ...]]:
        """The global gradient norm is not finite although no earlier micro-batch was: the last
        one made some gradient non-finite, or the sum of squares overflowed. Every rank gets here
        (the norm is global); one all_reduce finds which."""
        env, last = self.env, self.cfg.grad_accum - 1
        flags = torch.zeros(env.world_size, dtype=torch.float64, device=env.device)
        flags[env.rank] = _local_grads_nonfinite(self.model).double()
        if env.world_size > 1:
            dist.all_reduce(flags)
        ranks = tuple(r for r, f in enumerate(flags.tolist()) if f > 0)
        return (last, "gradients", ranks) if ranks else (last, "norm", tuple(range(env.world_size)))

    def _diverged(self, problem: tuple[int, str, tuple[int, ...]], board: list, rng_at_start: Any,
                  data_at_start: dict) -> None:
        k, what, ranks = problem
        accum = self.cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        # Save the state at the start of this update: resuming replays it exactly.
        _rng_restore(rng_at_start)
        self.data.load_state_dict(data_at_start)
        path = self._last_checkpoint if self._last_saved == self.step else self.save()
        if what == "loss":
            values = ", ".join(f"rank {r}: {board[r][2][k]}" for r in ranks)
            detail = f"the loss is not finite ({values})"
        elif what == "gradients":
            detail = f"the gradients are not finite on rank(s) {list(ranks)} (the loss was finite)"
        else:
            detail = "the global gradient norm is not finite (the loss and every gradient were finite "
            detail += "on their own: the sum of squares overflowed)"
        position = data_at_start.get("position") if isinstance(data_at_start, dict) else None
        where = f"; the data source was at {data_at_start!r:.120} when the update began" if position is None \
            else f" (batch index {position + k} of each rank's data source)"
        raise TrainingDiverged(
            f"training diverged at step {self.step}, micro-batch {k} of {accum}{where}: {detail}. "
            f"The state before this step is saved in {path} (resuming replays the step). Lower the "
            "learning rate, set or tighten grad_clip, or inspect that batch.",
            step=self.step, micro_batch=k, what=what, ranks=ranks, checkpoint=path,
        )


# --- helpers ------------------------------------------------------------------------------------

def _first_problem(board: list) -> tuple[int, str, tuple[int, ...]] | None:
    """(micro-batch, "loss" | "gradients", ranks) of the first non-finite value on the board."""
    world, accum = len(board), len(board[0][0])
    for k in range(accum):
        bad_loss = tuple(r for r in range(world) if board[r][0][k] > 0)
        if bad_loss:
            return k, "loss", bad_loss
        bad_grad = tuple(r for r in range(world) if board[r][1][k] > 0)
        if bad_grad:
            return k, "gradients", bad_grad
    return None


def _total_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (across ranks for DDP and FSDP2: a DTensor there)."""
    if not params:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if full_tensor is not None else tensor


def _local_grads_nonfinite(model: nn.Module) -> torch.Tensor:
    """Whether any gradient this rank holds (its shard, under FSDP2) has a NaN or inf; no sync."""
    grads = []
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        to_local = getattr(g, "to_local", None)
        grads.append(to_local() if to_local is not None else g)
    if not grads:
        return torch.zeros((), dtype=torch.bool)
    # The max-abs norm: finite exactly when every element is, and it never overflows.
    norms = torch._foreach_norm(grads, float("inf"))
    return ~torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        return tuple(_to_device(v, device) for v in batch)
    return batch


def _float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"step_fn metric {key!r} must be a number (float, int or 0-d tensor), got "
            f"{type(value).__name__}"
        ) from None


def _rng_snapshot() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _rng_restore(snapshot: tuple) -> None:
    py, npy, cpu, cuda = snapshot
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
