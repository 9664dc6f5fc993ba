"""AdamW with two parameter groups, and the warmup + cosine learning-rate schedule.

Build the optimizer after ``wrap_model``: FSDP2 replaces parameters by sharded DTensors, and the
optimizer must hold those. Parameter names seen through DDP (``module.``), FSDP2 and activation
checkpointing wrappers are the same for the rules below, which look at module classes and at the
last two name components only.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from nxrecipes.train.config import TrainConfig

__all__ = ["build_optimizer", "lr_factor", "no_decay", "param_groups", "warmup_cosine"]

# A parameter, or the module holding it, named like an embedding or a position table.
_EMBED_NAME = re.compile(r"embed|^pos(_|$|ition)", re.IGNORECASE)


def _decay_split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay_: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        owner = module_name.rsplit(".", 1)[-1]
        exempt_module = "Norm" in type(module).__name__ or isinstance(module, nn.Embedding)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue  # frozen, or tied to a parameter already placed
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            exempt = (
                exempt_module
                or param.ndim < 2
                or name == "bias"
                or _EMBED_NAME.search(name) is not None
                or _EMBED_NAME.search(owner) is not None
            )
            (no_decay_ if exempt else decay).append((full, param))
    return decay, no_decay_


def no_decay(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that get no weight decay (see ``param_groups``)."""
    return [name for name, _ in _decay_split(model)[1]]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on matrices, none on the rest.

    No decay for: parameters of any module whose class name contains ``"Norm"`` (LayerNorm,
    RMSNorm, GroupNorm, ...), 1-D parameters (biases, gains, scales), parameters named ``bias``,
    ``nn.Embedding`` weights, and parameters whose own name or whose module's name contains
    ``embed`` or starts with ``pos`` / ``pos_`` / ``position`` (``pos_embed``, ``embed_tokens``,
    ``position_embeddings``; ``post_proj`` is not one). Frozen parameters are left out; a tied
    parameter appears once. Empty groups are dropped.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or not (
        math.isfinite(weight_decay) and weight_decay >= 0
    ):
        raise ValueError(f"weight_decay = {weight_decay!r} must be a finite number >= 0")
    decay, exempt = _decay_split(model)
    if not decay and not exempt:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (all requires_grad=False?); "
            "nothing to optimize"
        )
    groups = [
        {"params": [p for _, p in decay], "weight_decay": float(weight_decay)},
        {"params": [p for _, p in exempt], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, cfg.weight_decay)`` with ``cfg.lr`` and ``cfg.betas``.

    The fused CUDA kernel is used when every parameter is on a CUDA device; on CPU the plain
    (foreach) implementation runs, ``fused=False``.
    """
    groups = param_groups(model, cfg.weight_decay)
    on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=on_cuda)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier of ``cfg.lr`` for update ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` updates, so the
    last of them runs at the peak; then a half cosine from that peak down to ``min_lr_ratio``,
    reached at the last update ``steps - 1``. Without warmup the first update runs at the peak.
    Past the end it stays at ``min_lr_ratio``.
    """
    warmup, total, floor = cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    if step >= total:
        return floor
    peak = max(warmup - 1, 0)
    span = total - 1 - peak
    if span <= 0:
        return 1.0
    progress = (step - peak) / span
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``lr_factor``: step the optimizer, then the scheduler, every update.

    The factor is a plain function of ``cfg``, so the scheduler's ``state_dict`` holds only plain
    data (its step count and base learning rates): a resumed run takes the schedule from its config.
    """

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
