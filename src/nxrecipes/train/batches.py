"""Resumable batch sources: what the training loop draws its micro-batches from.

A source has ``next_batch()``, ``state_dict()`` and ``load_state_dict(state)``; the state is plain
JSON data saved with every checkpoint, so a resumed run draws exactly the batches the
uninterrupted run would have drawn. ``IndexedBatches`` is that for any map-style dataset whose
``dataset[i]`` is deterministic (``ShapeWorld`` is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch.distributed as dist
from torch.utils.data import default_collate

__all__ = ["BatchSource", "IndexedBatches"]


@runtime_checkable
class BatchSource(Protocol):
    """A resumable stream of batches for one rank. Reference implementation: ``IndexedBatches``."""

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _int(name: str, value: object, at_least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < at_least:
        raise ValueError(f"{name} = {value!r} must be an int >= {at_least}")
    return int(value)


class IndexedBatches:
    """Batches of ``batch_size`` samples of ``dataset`` for rank ``rank`` of ``world_size``, epoch
    after epoch, without end.

    Epoch ``e`` shuffles the indices with ``numpy.random.default_rng([seed, e])`` and cuts them
    into global batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th slice of each,
    so ranks see disjoint samples and the same number of batches. The last incomplete global batch
    of an epoch is dropped (the next epoch's shuffle includes those samples again). The state is
    the number of batches drawn, which is also the number of global batches consumed, so
    ``load_state_dict`` resumes exactly.

    ``rank``/``world_size`` default to torch.distributed's when it is initialised (else 0 and 1):
    build the source after ``init_distributed()``. ``collate`` turns a list of samples into a
    batch (``torch.utils.data.default_collate`` by default; ``list`` keeps records as they are).
    """

    def __init__(self, dataset: Sequence[Any], batch_size: int, seed: int = 0, *, rank: int | None = None,
                 world_size: int | None = None, collate: Callable[[list[Any]], Any] | None = None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"dataset must be map-style (len() and [i]), got {type(dataset).__name__}; wrap a "
                "stream in a BatchSource of your own"
            )
        if (rank is None) != (world_size is None):
            raise ValueError(
                f"give rank and world_size together; got rank={rank!r}, world_size={world_size!r}"
            )
        if world_size is None:
            initialised = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
        self.world_size = _int("world_size", world_size, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank = {rank} must be < world_size = {world_size}")
        self.dataset = dataset
        self.batch_size = _int("batch_size", batch_size, 1)
        self.seed = _int("seed", seed, 0)
        self.collate = default_collate if collate is None else collate
        self.batches_per_epoch = len(dataset) // (self.batch_size * self.world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset has {len(dataset)} samples, fewer than one global batch of batch_size "
                f"({self.batch_size}) x world_size ({self.world_size}); use a smaller batch or more data"
            )
        self.position = 0
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self.position // self.batches_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return self._order

    def indices(self, position: int) -> list[int]:
        """The dataset indices of this rank's batch number ``position`` (0-based)."""
        epoch, batch = divmod(_int("position", position, 0), self.batches_per_epoch)
        start = (batch * self.world_size + self.rank) * self.batch_size
        return [int(i) for i in self._permutation(epoch)[start:start + self.batch_size]]

    def next_batch(self) -> Any:
        batch = self.collate([self.dataset[i] for i in self.indices(self.position)])
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "length": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from ``state_dict``).

        The seed and the dataset length must match the saved ones. With a different world size or
        batch size (a run resumed on more or fewer ranks) it continues in the same epoch at the
        first global batch that starts at or after the samples already consumed: the order of the
        samples of an epoch depends on the seed alone, so none is repeated and fewer than one
        global batch is skipped.
        """
        if not isinstance(state, dict) or "position" not in state:
            raise ValueError(f"not an IndexedBatches state (a dict with 'position'): {state!r:.200}")
        mine = self.state_dict()
        differ = {k: (state[k], mine[k]) for k in ("seed", "length") if k in state and state[k] != mine[k]}
        if differ:
            listed = ", ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in differ.items())
            raise ValueError(
                f"cannot resume these batches: {listed}. Resume with the seed and dataset of the "
                "saved run (or start a new run directory)"
            )
        position = _int("position", state["position"], 0)
        old_batch = _int("batch_size", state.get("batch_size", self.batch_size), 1)
        old_global = old_batch * _int("world_size", state.get("world_size", self.world_size), 1)
        new_global = self.batch_size * self.world_size
        if old_global != new_global:
            epoch, within = divmod(position, len(self.dataset) // old_global)
            next_batch = -(-within * old_global // new_global)  # ceil: skip rather than repeat
            position = epoch * self.batches_per_epoch + min(next_batch, self.batches_per_epoch)
        self.position = position

    def __repr__(self) -> str:
        return (f"IndexedBatches({type(self.dataset).__name__} of {len(self.dataset)}, batch_size="
                f"{self.batch_size}, seed={self.seed}, rank={self.rank}/{self.world_size}, "
                f"position={self.position})")
