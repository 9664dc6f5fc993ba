"""Writing state dicts: one safetensors file, or Hugging Face shards + index.

Tensors that share storage as the same view (tied weights) are written once; the other names are
recorded in the metadata under ``"nx.aliases"`` (a JSON object ``{alias: saved_key}``: in the
safetensors header of a single file, in the ``"metadata"`` object of a sharded index) and come back
as aliases of one tensor. Tensors that overlap in any other way are written as separate copies.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor

from nxcore.checkpoint.atomic import as_path, atomic_directory, atomic_path

__all__ = [
    "ALIASES_KEY",
    "CONFIG_FILE",
    "INDEX_FILE",
    "SINGLE_FILE",
    "is_checkpoint_file",
    "is_weight_file",
    "save_sharded",
    "save_state",
]

ALIASES_KEY = "nx.aliases"
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is a weights file that a save to a checkpoint directory owns."""
    return name in (SINGLE_FILE, INDEX_FILE) or _SHARD.fullmatch(name) is not None


def is_checkpoint_file(name: str) -> bool:
    return name == CONFIG_FILE or is_weight_file(name)


# --- saving ------------------------------------------------------------------------------------

def save_state(
    state: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``state`` to one safetensors file at ``path``, atomically.

    ``metadata`` (str -> str) goes into the safetensors header beside ``"format": "pt"``.
    """
    path = as_path(path, "path")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"path must end in .safetensors, got {str(path)!r}; save_state writes safetensors "
            "(name it e.g. 'model.safetensors')"
        )
    tensors, aliases = split_aliases(state)
    header = _header(metadata, aliases)
    with atomic_path(path) as tmp:
        _write_safetensors(tensors, tmp, header)


def save_sharded(
    state: Mapping[str, Tensor], directory: str | os.PathLike, max_shard_bytes: int
) -> None:
    """Write ``state`` as Hugging Face shards into ``directory``, replacing its weights atomically.

    Layout::

        directory/
            model-00001-of-0000N.safetensors   # shards of at most max_shard_bytes
            ...                                # (a tensor larger than that gets a shard alone)
            model.safetensors.index.json       # {"metadata": {"total_size": bytes},
                                               #  "weight_map": {key: shard file}}

    The directory is rebuilt beside the target and swapped in whole; files in it that are not
    weights (``config.json``, a README, ...) are carried over, old weight files are dropped.
    """
    directory = as_path(directory, "directory")
    check_shard_bytes(max_shard_bytes)
    tensors, aliases = split_aliases(state)
    check_replaceable(directory)
    with atomic_directory(directory, keep=lambda name: not is_weight_file(name)) as tmp:
        write_sharded(tmp, tensors, aliases, max_shard_bytes)


def check_shard_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"max_shard_bytes must be a positive int (bytes per shard), got {value!r}; "
            "e.g. 5 * 2**30 for 5 GiB shards"
        )
    return value


def check_replaceable(directory: Path) -> None:
    """Refuse to replace a non-empty directory that does not look like a checkpoint."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(
            f"{directory} exists and is not a directory; choose a directory path for the checkpoint"
        )
    names = sorted(os.listdir(directory))
    if names and not any(is_checkpoint_file(n) for n in names):
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"{directory} is not empty and holds no checkpoint files ({shown}); a checkpoint save "
            "replaces the whole directory, so choose a new or empty directory"
        )


def split_aliases(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors to write (dense, contiguous, no shared storage) and ``{alias: saved_key}``."""
    check_state(state, "state")
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first_of_view: dict[tuple, str] = {}
    for key, value in state.items():
        value = value.detach()
        view = view_id(value)
        if view is not None and view in first_of_view:
            aliases[key] = first_of_view[view]
            continue
        if view is not None:
            first_of_view[view] = key
        tensors[key] = value
    users = Counter(sid for t in tensors.values() if (sid := _storage_id(t)) is not None)
    for key, value in tensors.items():
        sid = _storage_id(value)
        if sid is not None and users[sid] > 1:  # overlapping but different views: own copies
            tensors[key] = value.clone(memory_format=torch.contiguous_format)
        elif not value.is_contiguous():
            tensors[key] = value.contiguous()
    return tensors, aliases


def check_state(state: object, name: str) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{name} must be a mapping from str keys to tensors, got {type(state).__name__}"
        )
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {key!r} ({type(key).__name__})")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}; keep "
                "non-tensor values in the config or in metadata"
            )
        if value.layout != torch.strided:
            raise ValueError(
                f"{name}[{key!r}] is a {value.layout} tensor; save it with .to_dense()"
            )
        if value.device.type == "meta":
            raise ValueError(
                f"{name}[{key!r}] is on the meta device and holds no data; materialise the module "
                "(e.g. module.to_empty(device='cpu') and initialise it) before saving"
            )


def view_id(t: Tensor) -> tuple | None:
    """Identity of the exact view ``t`` is: equal for tied tensors, None when it has no data."""
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def _storage_id(t: Tensor) -> tuple | None:
    storage = t.untyped_storage()
    return None if storage.nbytes() == 0 else (t.device, storage.data_ptr())


def _header(metadata: Mapping[str, str] | None, aliases: dict[str, str]) -> dict[str, str]:
    header = {"format": "pt"}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"metadata must be a mapping of str to str, got {type(metadata).__name__}"
            )
        for k, v in metadata.items():
            if not (isinstance(k, str) and isinstance(v, str)):
                raise TypeError(
                    f"metadata must map str to str, got {k!r}: {v!r}; encode other values as "
                    "text (e.g. json.dumps)"
                )
        if ALIASES_KEY in metadata:
            raise ValueError(
                f"metadata key {ALIASES_KEY!r} is reserved for tied weights; rename it"
            )
        header.update(metadata)
    if aliases:
        header[ALIASES_KEY] = json.dumps(aliases)
    return header


def write_single(directory: Path, tensors: dict[str, Tensor], aliases: dict[str, str]) -> None:
    _write_safetensors(tensors, directory / SINGLE_FILE, _header(None, aliases))


def write_sharded(
    directory: Path, tensors: dict[str, Tensor], aliases: dict[str, str], max_shard_bytes: int
) -> None:
    """Write shards and the index into ``directory`` (not atomic by itself: use a temp dir)."""
    plan: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if plan[-1] and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(key)
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(plan, start=1):
        name = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        _write_safetensors({k: tensors[k] for k in keys}, directory / name, {"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    meta: dict[str, object] = {"total_size": total}
    if aliases:
        meta[ALIASES_KEY] = aliases
    index = {"metadata": meta, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    # Serialise in memory and write the bytes ourselves: safetensors' save_file stages its own
    # temporary file beside ``path``, which a killed process would leave behind unswept.
    data = save(tensors, metadata=metadata)
    with open(path, "wb") as f:
        f.write(data)
