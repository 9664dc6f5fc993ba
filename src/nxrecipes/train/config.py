"""``TrainConfig``: every knob of the shared training loop, frozen and JSON round-trippable.

Batch sizes: ``batch_size`` samples per rank and micro-batch; one optimizer step consumes
``grad_accum`` micro-batches on every rank, so the global batch is
``batch_size * grad_accum * world_size`` samples.

Steps: ``steps`` optimizer updates in all. A checkpoint "at step N" holds the state after N
updates; metrics logged "at step i" describe update i (0-based), so a run resumed from step N
logs N, N + 1, ... and never logs one step twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from nxcore.config import Config, boolean, config, finite_number, in_range, integer, non_negative, one_of

__all__ = ["MIXED_PRECISION", "PARALLEL", "TrainConfig"]

PARALLEL = ("none", "ddp", "fsdp")
MIXED_PRECISION = ("fp32", "bf16")


def _betas(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    )
    if not ok:
        raise ValueError(
            f"{type(instance).__qualname__}.betas = {value!r} is not allowed; expected two numbers "
            "in [0, 1), e.g. (0.9, 0.95)"
        )


def _grad_clip(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        finite_number(above=0)(instance, attribute, value)


def _run_dir(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value:
        return Path(value)
    raise TypeError(f"TrainConfig.run_dir must be a non-empty path (str or Path), got {value!r}")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@config
class TrainConfig(Config):
    """The shared loop's settings (see the module docstring for batch and step conventions).

    - ``lr`` is the peak learning rate: linear warmup over ``warmup_steps`` updates, then a cosine
      decay to ``lr * min_lr_ratio`` at the last update.
    - ``grad_clip``: clip the global gradient norm to this value; ``None`` never clips (the norm
      is still computed, logged and checked for NaN/inf).
    - ``parallel``: ``"none"`` (one process, or each rank on its own), ``"ddp"``
      (DistributedDataParallel) or ``"fsdp"`` (FSDP2 ``fully_shard`` per block, then the root).
    - ``mixed_precision``: ``"bf16"`` computes in bfloat16 with fp32 master weights and fp32
      gradient reduction (FSDP2's ``MixedPrecisionPolicy``; ``torch.autocast`` otherwise).
    - ``activation_checkpointing``: recompute each block's activations in the backward pass.
    - ``checkpoint_every``: save the training state every this many updates (``0``: only at the
      end); ``keep_last`` checkpoints are kept.
    """

    run_dir: Path = attrs.field(converter=_run_dir)
    steps: int = attrs.field(default=1000, validator=integer(at_least=1))
    batch_size: int = attrs.field(default=8, validator=integer(at_least=1))
    grad_accum: int = attrs.field(default=1, validator=integer(at_least=1))
    lr: float = attrs.field(default=3e-4, validator=finite_number(above=0))
    min_lr_ratio: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    warmup_steps: int = attrs.field(default=0, validator=integer(at_least=0))
    weight_decay: float = attrs.field(default=0.1, validator=[finite_number(), non_negative()])
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.95), converter=_tuple, validator=_betas)
    grad_clip: float | None = attrs.field(default=1.0, validator=_grad_clip)
    parallel: str = attrs.field(default="none", validator=one_of(*PARALLEL))
    mixed_precision: str = attrs.field(default="fp32", validator=one_of(*MIXED_PRECISION))
    activation_checkpointing: bool = attrs.field(default=False, validator=boolean())
    checkpoint_every: int = attrs.field(default=500, validator=integer(at_least=0))
    keep_last: int = attrs.field(default=3, validator=integer(at_least=1))
    log_every: int = attrs.field(default=10, validator=integer(at_least=1))
    seed: int = attrs.field(default=0, validator=integer(at_least=0))

    def __attrs_post_init__(self) -> None:
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"TrainConfig.warmup_steps = {self.warmup_steps} is more than steps = {self.steps}; "
                "the warmup must fit in the run: lower warmup_steps or raise steps"
            )

    def global_batch_size(self, world_size: int) -> int:
        """Samples per optimizer step over all ranks."""
        return self.batch_size * self.grad_accum * world_size
