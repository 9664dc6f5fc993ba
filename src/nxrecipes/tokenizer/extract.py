"""Offline pre-extraction (NextFlow §4): encode a dataset once into per-scale indices on disk.

Shapes:
    batch           images
    samples         rows of one shard
    h, w            the code grid of one scale

``extract(tokenizer, dataset, schedule, out_dir, shard_size=...)`` encodes every image with
``tokenizer.encode(images, schedule)`` and writes::

    out_dir/
        index.json                  written last: format, version, num_samples, schedule,
                                    codebook_size, dtype, tokenizer (type + config), self_correction
                                    (settings or null), variants, shards [{file, start, count}]
        shard-00000.safetensors     samples [start, start + count): one int tensor per scale,
        shard-00001.safetensors     "scale_00" [samples, h_0, w_0], "scale_01", ...; with
        ...                         self-correction also "sc{v}/input/scale_00" and
                                    "sc{v}/target/scale_00" ... per variant v; the header metadata
                                    holds "captions" and "indices" (dataset positions) as JSON

Indices are stored as int16 when the codebook has at most 32768 codes, int32 otherwise; the reader
returns int64. The whole directory is built beside ``out_dir`` and swapped in at once
(``nxcore.checkpoint.atomic_directory``): a reader sees the previous extraction or the new one, never
a mix. Training then reads ``ExtractedIndices(out_dir)`` and needs no tokenizer on the device.

**Self-correction** (NextFlow §2.2, §4: "100% samples, 60% tokens per scale"): with
``self_correction=SelfCorrectionConfig(...)`` every sample also gets ``variants`` (input, target)
index variants from ``nxcore.tokenizer.dual.self_correction_encode``: an image is corrupted with
probability ``p``; in a corrupted image a ``fraction`` of the cells of every scale take an input index
drawn from the ``k`` nearest codewords, the residual of later scales follows those inputs, and the
targets are the clean top-1 of that residual. The draws are seeded per batch and variant from
``seed``, so an extraction is reproducible. Works for the multi-scale VQ and the dual-codebook
tokenizer.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from nxcore.checkpoint import save_state
from nxcore.checkpoint.atomic import atomic_directory
from nxcore.config import Config, config, in_range, integer
from nxcore.schedule import ScaleSchedule, Schedule
from nxcore.typing import Int

__all__ = [
    "FORMAT",
    "INDEX_FILE",
    "ExtractedIndices",
    "SelfCorrectionConfig",
    "extract",
    "self_correction_variant",
]

FORMAT = "nx.extracted_indices"
VERSION = 1
INDEX_FILE = "index.json"


@config
class SelfCorrectionConfig(Config):
    """Self-correction variants to store (arguments of ``self_correction_encode``): ``p`` of the
    images corrupted, ``fraction`` of the cells of every scale, input indices drawn from the ``k``
    nearest codewords (uniformly, or ∝ exp(-d / ``temperature``)), ranks 2..k only with
    ``exclude_top1``; ``variants`` per sample. NextFlow: p 1.0, fraction 0.6 (its k is not given)."""

    p: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))
    fraction: float = attrs.field(default=0.6, validator=in_range(0.0, 1.0))
    k: int = attrs.field(default=8, validator=integer(at_least=1))
    temperature: float | None = attrs.field(default=None)
    exclude_top1: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    variants: int = attrs.field(default=1, validator=integer(at_least=1))

    def build(self) -> SelfCorrectionConfig:
        return self


def self_correction_variant(
    tokenizer: Any, images: Tensor, schedule: ScaleSchedule, settings: SelfCorrectionConfig,
    generator: torch.Generator,
) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, targets) of one self-correction variant of ``images``: one int64 [batch, h, w] grid
    per scale each (``nxcore.tokenizer.dual.self_correction_encode``)."""
    from nxcore.tokenizer.dual import self_correction_encode

    out = self_correction_encode(
        tokenizer, images, schedule, p=settings.p, fraction=settings.fraction, k=settings.k,
        temperature=settings.temperature, exclude_top1=settings.exclude_top1, generator=generator,
    )
    return list(out.inputs), list(out.targets)


# --- writing ----------------------------------------------------------------------------------------


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _sample(dataset: Any, i: int) -> tuple[Tensor, str | None]:
    item = dataset[i]
    caption = None
    if isinstance(item, dict):
        if "image" not in item:
            raise TypeError(f"dataset[{i}] is a dict without an 'image' key; give image (and caption)")
        caption = item.get("caption")
        item = item["image"]
    elif callable(getattr(dataset, "caption", None)):
        caption = dataset.caption(i)
    if not isinstance(item, Tensor) or item.ndim != 3 or not item.is_floating_point():
        got = f"{item.dtype} {tuple(item.shape)}" if isinstance(item, Tensor) else type(item).__name__
        raise TypeError(
            f"dataset[{i}] must be a float [3, height, width] image in [-1, 1] (or a dict with 'image'), "
            f"got {got}; build the dataset with ShapeWorldImages(...).build() or ImageFolder(...).build()"
        )
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"the caption of sample {i} must be a str or None, got {type(caption).__name__}")
    return item, caption


def _dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= 2**15 else torch.int32


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file; pass a directory for the shards and index.json")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).is_file():
        raise ValueError(
            f"out_dir {out_dir} is not empty and holds no {INDEX_FILE}: it is not an extraction, and "
            "extract replaces its directory whole; pass a new or empty directory"
        )


def extract(
    tokenizer: Any,
    dataset: Any,
    schedule: ScaleSchedule,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 4096,
    self_correction: SelfCorrectionConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Encode every image of ``dataset`` into per-scale indices under ``out_dir``; return the path
    of ``index.json`` (layout in the module docstring).

    ``tokenizer``: a ``DiscreteImageTokenizer`` (``encode(images, schedule)``, ``codebook_size``).
    ``dataset``: ``len`` and ``[i]`` -> float [3, H, W] image in [-1, 1] (a ``CaptionedImages``,
    whose ``caption(i)`` is stored), or a dict with ``image`` and ``caption``.
    """
    encode = getattr(tokenizer, "encode", None)
    codebook_size = getattr(tokenizer, "codebook_size", None)
    if not callable(encode) or not isinstance(codebook_size, int):
        raise TypeError(
            f"tokenizer must be a discrete image tokenizer (encode(images, schedule) and codebook_size), "
            f"got {type(tokenizer).__name__}; a continuous autoencoder has no indices to extract"
        )
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(
            f"schedule must be a ScaleSchedule (e.g. Schedule(steps)), got {type(schedule).__name__}"
        )
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be map-style (len() and [i]), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty; there is nothing to extract")
    shard_size = _positive("shard_size", shard_size)
    batch_size = _positive("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if self_correction is not None and not isinstance(self_correction, SelfCorrectionConfig):
        raise TypeError(
            f"self_correction must be a SelfCorrectionConfig or None, got {type(self_correction).__name__}"
        )
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)

    steps = [tuple(s) for s in schedule.steps]
    dtype = _dtype(codebook_size)
    variants = 0 if self_correction is None else self_correction.variants
    device = _device(tokenizer)
    n = len(dataset)
    shards: list[dict[str, Any]] = []
    was_training = getattr(tokenizer, "training", False)
    if hasattr(tokenizer, "eval"):
        tokenizer.eval()
    try:
        with atomic_directory(out_dir) as tmp:
            buffer = _ShardBuffer(len(steps), variants)
            bar = tqdm(total=n, desc="extract", unit="image", disable=not progress)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                items = [_sample(dataset, i) for i in range(start, stop)]
                images = torch.stack([im for im, _ in items]).to(device)
                with torch.no_grad():
                    codes = _check_grids(encode(images, schedule), steps, len(items), "encode")
                    extra = []
                    for v in range(variants):
                        generator = torch.Generator().manual_seed(_batch_seed(seed, start // batch_size, v))
                        inputs, targets = self_correction_variant(
                            tokenizer, images, schedule, self_correction, generator
                        )
                        extra.append((_check_grids(inputs, steps, len(items), "self-correction inputs"),
                                      _check_grids(targets, steps, len(items), "self-correction targets")))
                buffer.add(codes, extra, [c for _, c in items], list(range(start, stop)))
                while len(buffer) >= shard_size or (stop == n and len(buffer)):
                    shards.append(buffer.flush(tmp, len(shards), sum(s["count"] for s in shards), shard_size,
                                               dtype))
                bar.update(stop - start)
            bar.close()
            index = {
                "format": FORMAT,
                "version": VERSION,
                "num_samples": n,
                "shard_size": shard_size,
                "schedule": [list(s) for s in steps],
                "codebook_size": codebook_size,
                "dtype": str(dtype).removeprefix("torch."),
                "tokenizer": _describe(tokenizer),
                "self_correction": None if self_correction is None else self_correction.to_dict(),
                "variants": variants,
                "seed": seed,
                "shards": shards,
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    finally:
        if hasattr(tokenizer, "train"):
            tokenizer.train(was_training)
    return out_dir / INDEX_FILE


def _device(tokenizer: Any) -> torch.device:
    parameters = getattr(tokenizer, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return torch.device("cpu")


def _batch_seed(seed: int, batch: int, variant: int) -> int:
    return (seed * 1_000_003 + batch * 7_919 + variant * 104_729) % 2**63


def _check_grids(grids: object, steps: list[tuple[int, int]], batch: int, what: str) -> list[Tensor]:
    if isinstance(grids, Tensor) or not isinstance(grids, Sequence) or len(grids) != len(steps):
        count = len(grids) if isinstance(grids, Sequence) else type(grids).__name__
        raise ValueError(
            f"{what} gave {count} code grids for a {len(steps)}-step schedule; expected one per step"
        )
    out = []
    for k, (g, (h, w)) in enumerate(zip(grids, steps, strict=True)):
        if not isinstance(g, Tensor) or tuple(g.shape) != (batch, h, w) or g.is_floating_point():
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"{what}: grid {k} is {shape}, expected int [{batch}, {h}, {w}]")
        out.append(g.detach().to("cpu", torch.int64))
    return out


def _describe(tokenizer: Any) -> dict[str, Any]:
    cfg = getattr(tokenizer, "config", None)
    return {
        "type": f"{type(tokenizer).__module__}:{type(tokenizer).__qualname__}",
        "config": cfg.to_dict() if isinstance(cfg, Config) else None,
    }


def _name(k: int, variant: int | None = None, part: str | None = None) -> str:
    return f"scale_{k:02d}" if variant is None else f"sc{variant}/{part}/scale_{k:02d}"


class _ShardBuffer:
    """Rows waiting to be written: per-scale code grids (and variants), captions, dataset indices."""

    def __init__(self, num_scales: int, variants: int) -> None:
        self.codes: list[list[Tensor]] = [[] for _ in range(num_scales)]
        self.extra: list[tuple[list[list[Tensor]], list[list[Tensor]]]] = [
            ([[] for _ in range(num_scales)], [[] for _ in range(num_scales)]) for _ in range(variants)
        ]
        self.captions: list[str | None] = []
        self.indices: list[int] = []

    def __len__(self) -> int:
        return len(self.indices)

    def add(self, codes: list[Tensor], extra: list[tuple[list[Tensor], list[Tensor]]],
            captions: list[str | None], indices: list[int]) -> None:
        for k, grid in enumerate(codes):
            self.codes[k].append(grid)
        for (inputs, targets), (ins, tgs) in zip(self.extra, extra, strict=True):
            for k in range(len(codes)):
                inputs[k].append(ins[k])
                targets[k].append(tgs[k])
        self.captions.extend(captions)
        self.indices.extend(indices)

    def flush(self, folder: Path, number: int, start: int, shard_size: int,
              dtype: torch.dtype) -> dict[str, Any]:
        """Write the first ``shard_size`` rows as shard ``number``; keep the rest."""
        count = min(shard_size, len(self))
        tensors: dict[str, Tensor] = {}

        def take(chunks: list[Tensor], name: str) -> list[Tensor]:
            whole = torch.cat(chunks)
            tensors[name] = whole[:count].to(dtype).contiguous()
            return [whole[count:]] if whole.shape[0] > count else []

        for k in range(len(self.codes)):
            self.codes[k] = take(self.codes[k], _name(k))
        for v, (inputs, targets) in enumerate(self.extra):
            for k in range(len(self.codes)):
                inputs[k] = take(inputs[k], _name(k, v, "input"))
                targets[k] = take(targets[k], _name(k, v, "target"))
        metadata = {
            "captions": json.dumps(self.captions[:count]),
            "indices": json.dumps(self.indices[:count]),
        }
        file = f"shard-{number:05d}.safetensors"
        save_state(tensors, folder / file, metadata=metadata)
        self.captions, self.indices = self.captions[count:], self.indices[count:]
        return {"file": file, "start": start, "count": count}


# --- reading ----------------------------------------------------------------------------------------


class ExtractedIndices(Dataset):
    """The samples of an extraction (``extract``'s ``out_dir``) as a torch ``Dataset``.

    ``dataset[i]`` is a dict: ``codes`` (one int64 [h_k, w_k] grid per scale), ``caption`` (str or
    None), ``index`` (its position in the source dataset) and, when the extraction has
    self-correction variants, ``inputs`` and ``targets`` (one list of grids per variant).
    ``schedule``, ``codebook_size``, ``variants`` and ``info`` (the whole index) describe it.
    Shards are read when first needed; the last ``cache_shards`` stay in memory.
    """

    def __init__(self, out_dir: str | os.PathLike, *, cache_shards: int = 2) -> None:
        self.root = Path(out_dir)
        index_file = self.root / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{index_file} does not exist: {self.root} is not an extraction (or it is still being "
                "written); run `nx data extract` or extract(...) first"
            )
        try:
            info = json.loads(index_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_file} is not valid JSON: {err}") from err
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{index_file} is not an nx extraction index (format {FORMAT!r})")
        if info.get("version") != VERSION:
            raise ValueError(f"{index_file} has version {info.get('version')!r}; this reader reads {VERSION}")
        self.info = info
        self.schedule = Schedule(tuple(tuple(s) for s in info["schedule"]))
        self.codebook_size = int(info["codebook_size"])
        self.variants = int(info.get("variants", 0))
        self._starts = [int(s["start"]) for s in info["shards"]]
        total = sum(int(s["count"]) for s in info["shards"])
        if total != info["num_samples"]:
            raise ValueError(
                f"{index_file}: shards hold {total} samples but num_samples is {info['num_samples']}"
            )
        self._cache: dict[int, tuple[dict[str, Tensor], list, list]] = {}
        self._cache_shards = _positive("cache_shards", cache_shards)

    def __len__(self) -> int:
        return int(self.info["num_samples"])

    def _shard(self, number: int) -> tuple[dict[str, Tensor], list, list]:
        if number in self._cache:
            return self._cache[number]
        path = self.root / self.info["shards"][number]["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read shard {path}: {err}; re-run the extraction") from err
        entry = (tensors, json.loads(meta.get("captions", "[]")), json.loads(meta.get("indices", "[]")))
        if len(self._cache) >= self._cache_shards:
            self._cache.pop(next(iter(self._cache)))
        self._cache[number] = entry
        return entry

    def _locate(self, index: object) -> tuple[int, int]:
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index)  # numpy / 0-d tensor indices
            except (TypeError, ValueError):
                raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        n = len(self)
        i = index + (n if index < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for an extraction of {n} samples")
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def codes(self, index: int) -> list[Int[Tensor, "h w"]]:
        """The per-scale indices of sample ``index`` (int64)."""
        shard, row = self._locate(index)
        tensors = self._shard(shard)[0]
        return [tensors[_name(k)][row].long() for k in range(self.schedule.num_steps)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = self._locate(index)
        tensors, captions, indices = self._shard(shard)
        k_steps = range(self.schedule.num_steps)
        sample: dict[str, Any] = {
            "codes": [tensors[_name(k)][row].long() for k in k_steps],
            "caption": captions[row] if row < len(captions) else None,
            "index": indices[row] if row < len(indices) else None,
        }
        if self.variants:
            sample["inputs"] = [[tensors[_name(k, v, "input")][row].long() for k in k_steps]
                                for v in range(self.variants)]
            sample["targets"] = [[tensors[_name(k, v, "target")][row].long() for k in k_steps]
                                 for v in range(self.variants)]
        return sample

    def __repr__(self) -> str:
        return (f"ExtractedIndices({str(self.root)!r}, samples={len(self)}, "
                f"scales={self.schedule.num_steps}, shards={len(self._starts)}, variants={self.variants})")
