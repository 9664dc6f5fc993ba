"""ShapeWorld as torch datasets, and export to an image folder + ``samples.jsonl``.

Sample ``index`` is drawn from ``split_rng(split, index, seed)`` alone: the first draw picks its task
(by ``task_weights``), the maker draws the rest. So ``ShapeWorld[i]`` is the same on every call,
process and worker, and ``ShapeWorldStream`` (which yields the indices of its rank and worker shard)
yields exactly the samples of ``ShapeWorld`` with the same arguments, each once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from nxcore.checkpoint import atomic_write_text
from nxrecipes.data.shapeworld.captions import parse_prompt
from nxrecipes.data.shapeworld.render import to_pil
from nxrecipes.data.shapeworld.scenes import MAX_DISTRACTORS, check_max_distractors, check_scene_size
from nxrecipes.data.shapeworld.spec import ObjectQuery, Spec
from nxrecipes.data.shapeworld.splits import check_split, split_rng
from nxrecipes.data.shapeworld.tasks import make_sample, maker_for, task_of
from nxrecipes.data.shapeworld.world import MAX_OBJECTS, Scene, ShapeObject

SAMPLES_FILE = "samples.jsonl"


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} = {value!r} must be an int >= 0")
    return int(value)


def _check_tasks(tasks: object) -> tuple[str, ...]:
    if isinstance(tasks, str) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a sequence of task names such as ('t2i',), got {tasks!r}")
    if not tasks:
        raise ValueError("tasks is empty; name at least one task, e.g. tasks=('t2i',)")
    for task in tasks:
        maker_for(task)
    return tuple(tasks)


def _weights_tuple(weights: object) -> tuple | None:
    if weights is not None and (isinstance(weights, str) or not isinstance(weights, Sequence)):
        raise TypeError(f"task_weights must be a sequence of numbers, one per task, got {weights!r}")
    return None if weights is None else tuple(weights)


def _check_weights(weights: object, tasks: tuple[str, ...]) -> tuple[float, ...]:
    if weights is None:
        return (1.0 / len(tasks),) * len(tasks)
    weights = tuple(weights)
    if len(weights) != len(tasks):
        raise ValueError(
            f"task_weights has {len(weights)} entries for {len(tasks)} tasks {tasks}; give one per task"
        )
    valid = all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                for w in weights)
    if not valid or sum(weights) <= 0:
        raise ValueError(f"task_weights = {weights} must be finite numbers >= 0 with a positive sum")
    return tuple(w / sum(weights) for w in weights)


@attrs.frozen(kw_only=True)
class SampleSource:
    """The validated arguments of a ShapeWorld dataset; ``sample(index)`` makes sample ``index``."""

    split: str = attrs.field(validator=lambda _, __, v: check_split(v))
    size: int = attrs.field(validator=lambda _, __, v: check_scene_size(v, MAX_OBJECTS))
    tasks: tuple[str, ...] = attrs.field(converter=_check_tasks)
    seed: int = attrs.field(converter=lambda v: _non_negative_int("seed", v))
    task_weights: tuple[float, ...] | None = attrs.field(default=None, converter=_weights_tuple)
    vary_background: bool = False
    max_distractors: int = attrs.field(default=MAX_DISTRACTORS,
                                       validator=lambda _, __, v: check_max_distractors(v))
    _p: tuple[float, ...] = attrs.field(init=False)

    @_p.default
    def _normalised(self) -> tuple[float, ...]:
        return _check_weights(self.task_weights, self.tasks)

    def _draw_task(self, rng: np.random.Generator) -> str:
        return self.tasks[rng.choice(len(self.tasks), p=self._p)] if len(self.tasks) > 1 else self.tasks[0]

    def task_at(self, index: int) -> str:
        return self._draw_task(split_rng(self.split, index, self.seed))

    def sample(self, index: int) -> Any:
        rng = split_rng(self.split, index, self.seed)
        return make_sample(self._draw_task(rng), rng, self.size, self.split,
                           vary_background=self.vary_background, max_distractors=self.max_distractors)


class ShapeWorld(Dataset):
    """``length`` samples of ``split``: task records (see ``tasks``) with ``size`` px PIL images.

    With a ``DataLoader`` pass ``collate_fn=list`` (records do not stack) or a ``collate_fn`` of
    your own that tokenises them."""

    def __init__(self, split: str = "train", size: int = 64, tasks: Sequence[str] = ("t2i",),
                 length: int = 1000, seed: int = 0, task_weights: Sequence[float] | None = None,
                 vary_background: bool = False, max_distractors: int = MAX_DISTRACTORS):
        self.source = SampleSource(split=split, size=size, tasks=tasks, seed=seed, task_weights=task_weights,
                                   vary_background=vary_background, max_distractors=max_distractors)
        self.length = _non_negative_int("length", length)

    def __len__(self) -> int:
        return self.length

    def _index(self, index: object) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index) + (self.length if index < 0 else 0)
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} is out of range for a ShapeWorld of length {self.length}")
        return i

    def __getitem__(self, index: int) -> Any:
        return self.source.sample(self._index(index))

    def task_at(self, index: int) -> str:
        return self.source.task_at(self._index(index))

    def __repr__(self) -> str:
        s = self.source
        return (f"ShapeWorld(split={s.split!r}, size={s.size}, tasks={s.tasks}, length={self.length}, "
                f"seed={s.seed})")


class ShapeWorldStream(IterableDataset):
    """Samples of ``split`` as a stream, endless when ``length`` is None, sharded across distributed
    ranks and ``DataLoader`` workers: shard ``rank * num_workers + worker`` of ``world_size *
    num_workers`` yields global indices ``shard, shard + num_shards, ...``. ``rank``/``world_size``
    default to torch.distributed's when it is initialised (else 0 and 1)."""

    def __init__(self, split: str = "train", size: int = 64, tasks: Sequence[str] = ("t2i",),
                 length: int | None = None, seed: int = 0, task_weights: Sequence[float] | None = None,
                 *, rank: int | None = None, world_size: int | None = None, vary_background: bool = False,
                 max_distractors: int = MAX_DISTRACTORS):
        self.source = SampleSource(split=split, size=size, tasks=tasks, seed=seed, task_weights=task_weights,
                                   vary_background=vary_background, max_distractors=max_distractors)
        self.length = None if length is None else _non_negative_int("length", length)
        if (rank is None) != (world_size is None):
            raise ValueError(
                f"give rank and world_size together; got rank={rank!r}, world_size={world_size!r}"
            )
        if world_size is not None:
            if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
                raise ValueError(f"world_size = {world_size!r} must be an int >= 1")
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
                raise ValueError(f"rank = {rank!r} must be an int in [0, world_size = {world_size})")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless ShapeWorldStream has no length; give length=... to bound it")
        return self.length

    def _rank(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def indices(self) -> Iterator[int]:
        """The global indices this process (rank and worker) yields, in order."""
        rank, world = self._rank()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index, step = rank * workers + worker, world * workers
        while self.length is None or index < self.length:
            yield index
            index += step

    def __iter__(self) -> Iterator[Any]:
        for index in self.indices():
            yield self.source.sample(index)


# --- export -----------------------------------------------------------------------------------


def _encode(value: Any, name: str, stem: str, folder: Path) -> Any:
    """``value`` as JSON, images saved as PNG beside the JSONL (named by sample and field)."""
    if isinstance(value, torch.Tensor) and value.ndim == 3 and value.shape[0] == 3:
        value = to_pil(value)
    if isinstance(value, Image.Image):
        file = f"{stem}.png" if name == "image" else f"{stem}_{name}.png"
        value.convert("RGB").save(folder / file, format="PNG")
        return file
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_encode(v, f"{name}_{k}", stem, folder) for k, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{name}_{k}", stem, folder) for k, v in value.items()}
    if attrs.has(type(value)):
        return {f.name: _encode(getattr(value, f.name), f"{name}_{f.name}", stem, folder)
                for f in attrs.fields(type(value))}
    raise TypeError(f"cannot export field {name!r} of type {type(value).__name__}; records hold text, "
                    "numbers, images, specs and scenes")


def _records(dataset: object) -> tuple[Iterator[tuple[int, str, Any]], int]:
    if isinstance(dataset, ShapeWorldStream):
        total = len(dataset)  # raises for an endless stream
        src = dataset.source
        return ((i, src.task_at(i), src.sample(i)) for i in dataset.indices()), total
    if isinstance(dataset, ShapeWorld):
        return ((i, dataset.task_at(i), dataset[i]) for i in range(len(dataset))), len(dataset)
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return ((i, task_of(r), r) for i, r in ((i, dataset[i]) for i in range(len(dataset)))), len(dataset)
    raise TypeError(f"dataset must be a ShapeWorld, a bounded ShapeWorldStream or a sequence of records, "
                    f"got {type(dataset).__name__}")


def export(dataset: object, folder: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write every sample of ``dataset``: images as PNG into ``folder``, one JSON line per sample
    (``index``, ``task`` and the record's fields, images by file name) into ``folder/samples.jsonl``,
    written atomically last. Returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records, total = _records(dataset)
    lines = []
    for index, task, record in tqdm(records, total=total, disable=not progress, desc="export", unit="sample"):
        if not attrs.has(type(record)):
            raise TypeError(f"sample {index} is a {type(record).__name__}, not an attrs record")
        line = {"index": index, "task": task} | {
            f.name: _encode(getattr(record, f.name), f.name, f"{index:06d}", folder)
            for f in attrs.fields(type(record))
        }
        lines.append(json.dumps(line, sort_keys=False) + "\n")
    path = folder / SAMPLES_FILE
    atomic_write_text(path, "".join(lines))
    return path


# --- reading back -----------------------------------------------------------------------------


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """The ``Spec`` of its exported JSON form (``attrs.asdict`` of a Spec)."""
    try:
        objects = [ObjectQuery(**o) for o in data["objects"]]
        return Spec(data["category"], objects, relation=data.get("relation"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an exported spec: {data!r} ({e}); expected category, objects, relation") from e


def scene_from_dict(data: Mapping[str, Any]) -> Scene:
    """The ``Scene`` of its exported JSON form."""
    try:
        return Scene([ShapeObject(**o) for o in data["objects"]], tuple(data["background"]),
                     tuple(data["gradient"]))
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"not an exported scene: {data!r} ({e}); expected objects, background, gradient"
        ) from e


@attrs.frozen
class PromptSpec:
    """A prompt to score, what it asks for, and the exported ground-truth image (if any)."""

    index: int
    prompt: str
    spec: Spec
    image: str | None = None


def load_jsonl_specs(path: str | os.PathLike) -> list[PromptSpec]:
    """The prompts to score in a ``samples.jsonl`` (or in the folder holding it): every line with a
    prompt and a spec (as ``export`` writes for text-to-image and world-knowledge samples), and
    hand-written ``{"prompt": ...}`` lines, whose spec is parsed from the prompt. Other samples are
    skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no prompts file at {path}; write one with shapeworld.export(dataset, folder)"
        )
    out = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number} is not valid JSON ({e}); re-export the file") from e
        if not isinstance(line, dict):
            raise ValueError(f"{path}:{number} is not a JSON object; re-export the file")
        has_spec = "spec" in line
        if isinstance(line.get("prompt"), str) and (has_spec or line.get("task", "t2i") == "t2i"):
            index = line.get("index", len(out))
            image = line.get("image") if isinstance(line.get("image"), str) else None
            spec = spec_from_dict(line["spec"]) if has_spec else parse_prompt(line["prompt"])
            out.append(PromptSpec(index, line["prompt"], spec, image))
    return out


__all__ = [
    "SAMPLES_FILE",
    "PromptSpec",
    "SampleSource",
    "ShapeWorld",
    "ShapeWorldStream",
    "export",
    "load_jsonl_specs",
    "scene_from_dict",
    "spec_from_dict",
]
