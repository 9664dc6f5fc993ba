"""Process groups and model wrapping: one process, DDP, or FSDP2, on CPU (gloo) or CUDA (nccl).

Launch with ``torchrun`` for several processes (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); plain ``python`` runs one process::

    env = init_distributed()                 # idempotent; a 1-rank group with force=True
    model = wrap_model(model, cfg, env=env, block_types=(DecoderBlock,))
    ...
    shutdown()

Under FSDP2 every rank must run every forward: a forward on rank 0 alone (say, for logging)
issues collectives the other ranks never join, and the job hangs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator

import attrs
import torch
import torch.distributed as dist
from torch import nn

from nxrecipes.train.config import TrainConfig

__all__ = [
    "DistEnv",
    "autocast",
    "barrier",
    "init_distributed",
    "shutdown",
    "wrap_model",
]

_TIMEOUT = datetime.timedelta(minutes=30)


@attrs.frozen(kw_only=True)
class DistEnv:
    """Where this process stands: its rank among ``world_size``, its device and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        """Whether a default process group exists (collectives work)."""
        return dist.is_available() and dist.is_initialized()

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or an initialised
        group's rank, or the single-process defaults. CUDA device ``local_rank`` when CUDA is
        available, else the CPU."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", rank if world == 1 else 0)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(
                f"RANK = {rank} and WORLD_SIZE = {world} do not fit: need 0 <= RANK < WORLD_SIZE"
            )
        if torch.cuda.is_available():
            return cls(rank=rank, world_size=world, local_rank=local_rank,
                       device=torch.device("cuda", local_rank % torch.cuda.device_count()),
                       backend="nccl")
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=torch.device("cpu"),
                   backend="gloo")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} = {text!r} must be an integer") from None


def _launched() -> bool:
    """Whether torchrun (or a launcher like it) started this process as one of a group."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(*, force: bool = False) -> DistEnv:
    """Initialise the default process group if it is not yet, and describe this process.

    Under torchrun it joins the group (``nccl`` on CUDA, ``gloo`` on CPU) and, on CUDA, selects
    device ``LOCAL_RANK``. In a plain single process nothing is initialised unless ``force``, which
    makes a 1-rank group over an in-memory store (no network), so DDP and FSDP2 also run alone.
    Calling it again returns the same environment.
    """
    if not dist.is_available():
        if force or _launched():
            raise RuntimeError("torch.distributed is not available in this PyTorch build")
        return DistEnv.from_env()
    if not dist.is_initialized():
        env = DistEnv.from_env()
        if env.device.type == "cuda":
            torch.cuda.set_device(env.device)
        if _launched():
            dist.init_process_group(backend=env.backend, timeout=_TIMEOUT)
        elif force:
            if env.world_size != 1:
                raise ValueError(
                    f"WORLD_SIZE = {env.world_size} but MASTER_ADDR/MASTER_PORT are not set; "
                    "launch several processes with torchrun"
                )
            dist.init_process_group(backend=env.backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=_TIMEOUT)
    return DistEnv.from_env()


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    """Destroy the default process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's precision context: ``torch.autocast`` to bf16 for ``mixed_precision="bf16"``
    without FSDP2 (FSDP2 casts parameters itself through its ``MixedPrecisionPolicy``), else a
    no-op."""
    if cfg.mixed_precision == "bf16" and cfg.parallel != "fsdp":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _outermost(model: nn.Module, block_types: tuple[type, ...]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, block) for each block not inside another block, in module order."""

    def visit(parent: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
        for name, child in parent.named_children():
            if isinstance(child, block_types):
                yield parent, name, child
            else:
                yield from visit(child)

    yield from visit(model)


def _check_block_types(block_types: Iterable[type]) -> tuple[type, ...]:
    types = tuple(block_types)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"block_types must hold nn.Module subclasses, got {t!r}")
    return types


def wrap_model(model: nn.Module, cfg: TrainConfig, *, block_types: Iterable[type] = (),
               env: DistEnv | None = None) -> nn.Module:
    """Move ``model`` to this process's device and wrap it for ``cfg.parallel``.

    - ``"none"``: the model itself; ``"ddp"``: ``DistributedDataParallel``; ``"fsdp"``: FSDP2
      ``fully_shard`` on every block (the outermost modules whose type is in ``block_types``), then
      on the root, with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` for bf16.
    - ``cfg.activation_checkpointing``: each block is replaced in its parent by a
      ``checkpoint_wrapper`` (non-reentrant ``torch.utils.checkpoint``, RNG state preserved, so
      dropout recomputes identically). State-dict keys are unchanged.

    Blocks are modified in place; DDP and FSDP2 need an initialised process group
    (``init_distributed(force=True)`` for one process). Call the wrapped model's ``forward``
    (``model(...)``), not other methods, so DDP and FSDP2 see every computation.
    """
    types = _check_block_types(block_types)
    env = env or DistEnv.from_env()
    if cfg.parallel != "none" and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"parallel = {cfg.parallel!r} needs a process group; call init_distributed() under "
            "torchrun, or init_distributed(force=True) for a single process"
        )
    if (cfg.activation_checkpointing or cfg.parallel == "fsdp") and types:
        if not any(True for _ in _outermost(model, types)):
            names = [t.__name__ for t in types]
            raise ValueError(
                f"block_types {names} match no submodule of {type(model).__name__}; pass the class "
                "of the model's repeated blocks (e.g. its decoder layer)"
            )
    if cfg.activation_checkpointing and not types:
        raise ValueError(
            "activation_checkpointing=True needs block_types: the classes of the blocks whose "
            "activations are recomputed (e.g. block_types=(DecoderBlock,))"
        )
    model = model.to(env.device)
    slots = [(parent, name) for parent, name, _ in _outermost(model, types)]
    if cfg.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            checkpoint_wrapper,
        )

        for parent, name in slots:
            block = getattr(parent, name)
            setattr(parent, name, checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.device.index] if env.device.type == "cuda" else None
        # A multimodal batch may skip a branch (a text-only NextFlow batch leaves the image embeddings
        # unused); DDP must then be told to look for parameters without gradients.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if cfg.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(env.device.type, (dist.get_world_size(),))
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if cfg.mixed_precision == "bf16"
            else MixedPrecisionPolicy()
        )
        # One unit per block (its checkpoint wrapper when there is one): each gathers its
        # parameters for the forward and again for the recomputation + backward, then frees them.
        for parent, name in slots:
            fully_shard(getattr(parent, name), mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return model
