"""Training state that loses nothing: atomic, sharded, resumable checkpoints.

One checkpoint per saved step, under the run directory::

    run_dir/checkpoints/
        latest                     # text: the name of the newest complete checkpoint
        step-00000120/
            meta.json              # step, world size, what is inside; written last, by rank 0
            dcp/                   # model + optimizer through torch.distributed.checkpoint
                .metadata          #   (sharded: each rank writes its own shards; reshardable)
                __0_0.distcp ...
            scheduler.pt           # the LR scheduler's state_dict (rank 0; same on every rank)
            rank-0.json            # this rank's data position: {"step", "rank", "world_size",
            rank-0.pt              #   "data_state"}; its RNG states (torch CPU, CUDA, numpy, python)
            rank-1.json ...
        step-00000121/ ...

Every function here is collective: all ranks call it, in the same order.

**Atomic.** A save writes into a hidden temporary directory beside its final name
(``.step-00000121.nxtmp.<host>.<pid>.<random>``, the naming of :mod:`nxcore.checkpoint.atomic`),
every rank writes its part, all ranks meet at a barrier, and rank 0 fsyncs the tree and renames it
into place in one step; only then does it rewrite ``latest`` (atomically) and delete checkpoints
beyond ``keep_last`` (renaming each to a hidden name first, so a killed deletion never leaves a
half-deleted directory under a complete-looking name). A directory named ``step-NNNNNNNN`` is
therefore always complete; a killed save leaves only a hidden temporary directory, which the next
save or load sweeps away once the process that wrote it is gone (on the same host).

**Newest.** :func:`latest_checkpoint` returns the complete checkpoint with the highest step. The
``latest`` file always names that checkpoint after a save; it is there for people and outside
tools (``cat run/checkpoints/latest``), and resuming never depends on it, so a kill between the
rename and the pointer update loses nothing.

**Exact resume.** Model and optimizer go through ``torch.distributed.checkpoint`` (``dcp.save`` of
``get_state_dict(model, optimizer)``), which works for plain modules, DDP and FSDP2
(``fully_shard``) alike and in a single process without a process group. Each rank's RNG states
are restored on load (torch CPU; CUDA for the process's current device, one device per rank as
under torchrun; numpy's and Python's global generators), so dropout, noise and shuffling continue
exactly where the saved run was: a run killed at any moment and resumed from its newest
checkpoint ends with the same weights, bit for bit, as one never interrupted
(``tests/nxrecipes/train/test_state.py`` kills a 2-process run several times to show it).

**A different world size.** DCP reshards model and optimizer to the new number of ranks. RNG
states belong to ranks, though, and cannot be carried over to a different set of them: the load
warns, and seeds torch, numpy and ``random`` on every rank from the step and the rank instead
(:func:`fallback_seed`), so the resumed run is reproducible but no longer bit-identical to an
uninterrupted one. Every rank then gets rank 0's ``data_state``: make the data position global
(e.g. the number of global batches consumed), not per rank, and it stays valid.

Several hosts: ``run_dir`` must be on a filesystem every rank sees (rank 0 names the temporary
directory and every rank writes its shards into it); stale temporaries are swept only by a process
on the host that wrote them.

``data_state`` must be JSON (dicts, lists, str, numbers, bools, None; tuples come back as lists).
Files are read back with ``torch.load(weights_only=True)``: loading executes no code from a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from nxcore.checkpoint import atomic_path, atomic_write_text, save_state
from nxcore.checkpoint.atomic import as_path, fsync_dir, host_tag, process_alive, remove_path
from nxrecipes.train.seeding import seed_all

__all__ = [
    "CHECKPOINTS_DIR",
    "ResumeInfo",
    "export_weights",
    "fallback_seed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_latest_training_state",
    "save_training_state",
]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
META_FILE = "meta.json"
DCP_DIR = "dcp"
SCHEDULER_FILE = "scheduler.pt"
FORMAT = "nx.training_state"
VERSION = 1

_STEP_NAME = re.compile(r"step-(\d{8,})")
# Hidden siblings left by killed saves or deletions: ``.<name>.<tag>.<host>.<pid>.<random>`` (the
# naming of nxcore.checkpoint.atomic for nxtmp/nxold; nxdel is ours, for checkpoints being deleted).
_HIDDEN = re.compile(r"\.(step-\d{8,})\.(nxtmp|nxold|nxdel)\.([A-Za-z0-9_-]+)\.(\d+)\.[0-9a-f]+")


@dataclass(frozen=True)
class ResumeInfo:
    """What :func:`load_latest_training_state` restored.

    ``step``: the step the checkpoint was saved at (continue with ``step + 1``). ``data_state``:
    the ``data_state`` this rank saved (rank 0's when the world size changed). ``path``: the
    checkpoint directory. ``rng_restored``: False when the world size changed and the RNGs were
    seeded with :func:`fallback_seed` instead of restored. ``world_size``: the saving run's.
    """

    step: int
    data_state: dict
    path: Path
    rng_restored: bool = True
    world_size: int = 1


# --- public API -----------------------------------------------------------------------------------

def save_training_state(
    run_dir: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    data_state: dict,
    keep_last: int | None = 3,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:08d}/`` atomically; collective (every rank calls it).

    Saves the model and optimizer (sharded, through ``torch.distributed.checkpoint``), the
    scheduler's state, ``step``, this rank's ``data_state`` (JSON) and this rank's RNG states, then
    points ``latest`` at the newest checkpoint and keeps only the newest ``keep_last`` checkpoints
    (``None`` keeps all). Returns the checkpoint directory, on every rank, once it is in place.
    """
    root = _checkpoints_dir(run_dir)
    step = _check_step(step)
    keep_last = _check_keep_last(keep_last)
    data_json = _encode_data_state(data_state)
    _check_module(model)
    rank, world, distributed = _dist_info()
    final = root / step_name(step)

    with contextlib.ExitStack() as stack:
        tmp: Path | None = None
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            sweep_stale(root)
            newer = [s for s, _ in list_checkpoints(run_dir) if s > step]
            if newer:
                warnings.warn(
                    f"saving step {step} into {root}, which already holds a checkpoint of step "
                    f"{max(newer)}; load_latest_training_state resumes from the highest step, so "
                    "use a new run_dir for a new run",
                    stacklevel=2,
                )
            tmp = stack.enter_context(atomic_path(final))
            tmp.mkdir()
        tmp = Path(_broadcast(None if tmp is None else str(tmp)))

        states = _model_optim_states(model, optimizer)
        with _quiet_single_process():
            dcp.save(
                states,
                storage_writer=dcp.FileSystemWriter(tmp / DCP_DIR, sync_files=True),
                no_dist=not distributed,
            )
        rank_info = {"step": step, "rank": rank, "world_size": world, "data_state": data_json}
        _write_bytes(tmp / f"rank-{rank}.json", (json.dumps(rank_info, indent=1) + "\n").encode())
        _write_torch(tmp / f"rank-{rank}.pt", {"rng": _capture_rng()})
        if rank == 0 and scheduler is not None:
            _write_torch(tmp / SCHEDULER_FILE, scheduler.state_dict())
        _barrier()
        if rank == 0:
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "step": step,
                "world_size": world,
                "optimizer": optimizer is not None,
                "scheduler": scheduler is not None,
                "torch": torch.__version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_bytes(tmp / META_FILE, (json.dumps(meta, indent=1) + "\n").encode())
        # leaving the stack on rank 0 fsyncs the tree and renames it to ``final``

    if rank == 0:
        newest = latest_checkpoint(run_dir)
        if newest is not None:
            atomic_write_text(root / LATEST_FILE, newest.name + "\n")
        if keep_last is not None:
            _prune(root, keep_last, protect=final.name)
    _barrier()
    return final


def load_latest_training_state(
    run_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
) -> ResumeInfo | None:
    """Restore the newest complete checkpoint of ``run_dir`` in place; collective.

    Loads model and optimizer (resharded to this world if needed), the scheduler and this rank's
    RNG states, and returns :class:`ResumeInfo`; returns ``None`` (on every rank) when ``run_dir``
    holds no complete checkpoint. Wrap the model (DDP / ``fully_shard``) and build the optimizer
    before calling. Also sweeps temporary directories that killed saves left behind.
    """
    _check_module(model)
    root = _checkpoints_dir(run_dir)
    rank, world, distributed = _dist_info()
    found: str | None = None
    if rank == 0:
        if root.is_dir():
            sweep_stale(root)
        newest = latest_checkpoint(run_dir)
        found = None if newest is None else str(newest)
    found = _broadcast(found)
    if found is None:
        return None
    path = Path(found)
    meta = _read_meta(path)
    step = int(meta["step"])
    saved_world = int(meta["world_size"])

    use_optimizer = optimizer
    if optimizer is not None and not meta.get("optimizer", True):
        warnings.warn(
            f"{path} holds no optimizer state (it was saved with optimizer=None); the optimizer "
            "starts fresh",
            stacklevel=2,
        )
        use_optimizer = None
    states = _model_optim_states(model, use_optimizer)
    with _quiet_single_process():
        dcp.load(
            states, storage_reader=dcp.FileSystemReader(path / DCP_DIR), no_dist=not distributed
        )
    if use_optimizer is None:
        set_model_state_dict(model, states["model"])
    else:
        set_state_dict(
            model, use_optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"]
        )

    if scheduler is not None:
        sched_file = path / SCHEDULER_FILE
        if sched_file.is_file():
            scheduler.load_state_dict(torch.load(sched_file, weights_only=True))
        else:
            warnings.warn(
                f"{path} holds no scheduler state (saved with scheduler=None); the scheduler "
                "keeps its current state",
                stacklevel=2,
            )

    if saved_world == world:
        info = _read_json(path / f"rank-{rank}.json")
        rng = torch.load(path / f"rank-{rank}.pt", weights_only=True)["rng"]
        _restore_rng(rng)
        rng_restored = True
    else:
        info = _read_json(path / "rank-0.json")
        seed = fallback_seed(step, rank)
        seed_all(seed)
        rng_restored = False
        if rank == 0:
            warnings.warn(
                f"{path} was saved by {saved_world} rank(s) and is loaded by {world}: model and "
                "optimizer were resharded, but per-rank RNG states cannot be carried over to a "
                f"different set of ranks, so torch/numpy/random were seeded with "
                f"fallback_seed(step={step}, rank) instead (the run stays reproducible but is not "
                "bit-identical to an uninterrupted one); every rank gets rank 0's data_state",
                stacklevel=2,
            )
    _barrier()
    return ResumeInfo(
        step=step,
        data_state=info["data_state"],
        path=path,
        rng_restored=rng_restored,
        world_size=saved_world,
    )


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint of ``run_dir`` with the highest step, or ``None``.

    Temporary directories of unfinished saves are never returned. Not collective (reads only).
    """
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``run_dir``, oldest first."""
    root = _checkpoints_dir(run_dir)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        match = _STEP_NAME.fullmatch(entry.name)
        if match and entry.is_dir() and os.path.isfile(os.path.join(entry.path, META_FILE)):
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def export_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Gather the full (unsharded) model state dict on rank 0 and write it as safetensors; collective.

    ``path`` ends in ``.safetensors``; the write is atomic. Keys are the model's own names (no
    ``module.`` prefix from DDP, no FSDP wrappers). Every rank returns once the file exists.
    """
    path = as_path(path, "path")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"path must end in .safetensors, got {str(path)!r}; export_weights writes one "
            "safetensors file (e.g. 'run/model.safetensors')"
        )
    _check_module(model)
    rank, _, distributed = _dist_info()
    if distributed:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
    else:
        state = {k: v.detach().cpu() for k, v in get_model_state_dict(model).items()}
    if rank == 0:
        save_state(state, path)
    _barrier()
    return path


def fallback_seed(step: int, rank: int) -> int:
    """The seed for torch, numpy and ``random`` on ``rank`` when RNG states cannot be restored."""
    return (int(step) * 1_000_003 + int(rank) * 7_919 + 104_729) % 2**31


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def sweep_stale(root: Path) -> list[Path]:
    """Remove what killed saves and deletions left in ``root``; return what was removed.

    Only entries of processes on this host that are gone are touched. A previous checkpoint that
    an interrupted swap set aside (``.nxold.``) is renamed back when its name is free.
    """
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    host = host_tag()
    for entry in entries:
        match = _HIDDEN.fullmatch(entry.name)
        if match is None:
            continue
        name, tag, owner_host, pid = match.group(1), match.group(2), match.group(3), int(match.group(4))
        if owner_host != host or pid == os.getpid() or process_alive(pid):
            continue
        path = Path(entry.path)
        try:
            if tag == "nxold" and not os.path.lexists(root / name):
                os.rename(path, root / name)
                continue
            remove_path(path)
            removed.append(path)
        except OSError:
            pass
    fsync_dir(root)
    return removed


# --- internals -----------------------------------------------------------------------------------

def _checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return as_path(run_dir, "run_dir") / CHECKPOINTS_DIR


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(
            f"step must be a non-negative int (optimizer steps done), got {step!r}"
        )
    return int(step)


def _check_keep_last(keep_last: object) -> int | None:
    if keep_last is None:
        return None
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(
            f"keep_last must be a positive int (checkpoints to keep) or None to keep all, got "
            f"{keep_last!r}"
        )
    return keep_last


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _encode_data_state(data_state: object) -> Any:
    if not isinstance(data_state, dict):
        raise TypeError(
            f"data_state must be a dict (the data source's state_dict()), got "
            f"{type(data_state).__name__}"
        )
    try:
        return json.loads(json.dumps(data_state, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"data_state must be JSON (dicts, lists, str, int, float, bool, None): {err}; store "
            "positions and seeds as plain numbers (e.g. int(tensor))"
        ) from err


def _dist_info() -> tuple[int, int, bool]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast(value: Any) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _quiet_single_process():
    # dcp warns that it "assumes the intent is to save in a single process" even with
    # no_dist=True; without a process group that is exactly our intent.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _model_optim_states(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def _capture_rng() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only: get_rng_state_all() would create a context on every GPU.
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    npy = rng["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
         npy["cached_gaussian"])
    )
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)  # this process's current device
    elif cuda is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        warnings.warn(
            "the checkpoint holds no CUDA RNG state (it was saved without using CUDA); the CUDA "
            "RNG keeps its current state",
            stacklevel=3,
        )




def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_torch(path: Path, obj: Any) -> None:
    with open(path, "xb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{path} is missing from checkpoint {path.parent}; the checkpoint was altered after it "
            "was written: delete it to resume from the previous one"
        ) from err


def _read_meta(path: Path) -> dict:
    meta = _read_json(path / META_FILE)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path / META_FILE} is not an nx training checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return meta


def _prune(root: Path, keep_last: int, protect: str) -> None:
    complete = list_checkpoints(root.parent)
    doomed = [p for _, p in complete[: max(len(complete) - keep_last, 0)] if p.name != protect]
    for path in doomed:
        trash = path.with_name(f".{path.name}.nxdel.{host_tag()}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(path, trash)  # the complete-looking name goes first, atomically
        except FileNotFoundError:
            continue
        fsync_dir(root)
        remove_path(trash)







