"""Reading state dicts: safetensors files, sharded indexes, weights-only torch pickles.

Nothing here executes code from a file: safetensors holds raw tensors, and torch pickles are read
with ``torch.load(weights_only=True)`` only. A truncated or corrupt file raises ``ValueError``
naming it; a missing one ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from nxcore.checkpoint.atomic import as_path, interrupted_save_hint
from nxcore.checkpoint.safetensors_io import ALIASES_KEY, INDEX_FILE, SINGLE_FILE

__all__ = ["as_device", "load_state"]

_TORCH_SINGLE = "pytorch_model.bin"
_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_PICKLE_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")

def load_state(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a state dict; executes no code from the file.

    ``path`` is a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` torch pickle (read with
    ``weights_only=True``; a plain state dict, or one under a ``"state_dict"``/``"model"`` key), or
    a checkpoint directory holding ``model.safetensors.index.json`` + shards, ``model.safetensors``,
    or their ``pytorch_model.bin`` counterparts. Tied weights come back as aliases of one tensor.
    """
    path = as_path(path, "path")
    dev = as_device(device)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist{interrupted_save_hint(path)}")
    if path.is_dir():
        state = _load_directory(path)
    else:
        state = _load_file(path)
    moved: dict[int, Tensor] = {}
    return {k: moved.setdefault(id(t), t.to(dev)) for k, t in state.items()}


def as_device(device: object) -> torch.device:
    try:
        return torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}"
        ) from err


def _load_file(path: Path) -> dict[str, Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _load_torch_pickle(path)
    raise ValueError(
        f"cannot read {path}: unknown suffix {suffix!r}; expected .safetensors, .pt, .pth or .bin, "
        "or a checkpoint directory"
    )


def _corrupt(path: Path, err: BaseException) -> ValueError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"{path} is truncated or corrupt ({detail}); re-save it or re-download it"
    )


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as err:
        raise _corrupt(path, err) from err
    raw = metadata.get(ALIASES_KEY)
    if raw is not None:
        try:
            aliases = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _corrupt(path, err) from err
        _restore_aliases(state, aliases, path)
    return state


def _restore_aliases(state: dict[str, Tensor], aliases: object, source: Path) -> None:
    if not isinstance(aliases, dict):
        raise _corrupt(source, ValueError(f"{ALIASES_KEY} is not a JSON object"))
    for alias, key in aliases.items():
        if not isinstance(key, str) or key not in state:
            raise _corrupt(source, ValueError(f"alias {alias!r} points at missing key {key!r}"))
        state[alias] = state[key]


def _load_torch_pickle(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "weights only" not in message.lower():
            raise _corrupt(path, err) from err
        lines = [ln.strip() for ln in message.splitlines() if "Unsupported global" in ln]
        detail = f" ({lines[0]})" if lines else ""
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers{detail}; it is refused "
            "because unpickling them could run code. Re-save just the state dict "
            "(torch.save(model.state_dict(), path)) or convert it to safetensors in an "
            "environment you trust"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise _corrupt(path, err) from err
    return _state_from_pickle(obj, path)


def _is_tensor_map(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _state_from_pickle(obj: object, path: Path) -> dict[str, Tensor]:
    if _is_tensor_map(obj):
        return dict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Mapping):
        for key in _PICKLE_WRAPPERS:
            inner = obj.get(key)
            if _is_tensor_map(inner) and inner:
                return dict(inner)  # type: ignore[call-overload]
        items = list(obj.items())
        shown = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in items[:8])
        found = "{" + shown + (", ..." if len(items) > 8 else "") + "}"
    else:
        found = type(obj).__name__
    raise ValueError(
        f"{path} does not hold a state dict (str keys -> tensors), found {found}; load it with "
        "torch.load(path, weights_only=True), pick the mapping of tensors and pass that instead"
    )


def _load_directory(directory: Path) -> dict[str, Tensor]:
    for name in (INDEX_FILE, _TORCH_INDEX):
        if (directory / name).is_file():
            return _load_index(directory / name)
    for name in (SINGLE_FILE, _TORCH_SINGLE):
        if (directory / name).is_file():
            return _load_file(directory / name)
    names = sorted(os.listdir(directory))
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "nothing"
    raise FileNotFoundError(
        f"{directory} holds no checkpoint weights: expected {INDEX_FILE} (+ shards), "
        f"{SINGLE_FILE}, {_TORCH_INDEX} or {_TORCH_SINGLE}, found {shown}"
    )


def _load_index(index_path: Path) -> dict[str, Tensor]:
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _corrupt(index_path, err) from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise _corrupt(index_path, ValueError('no "weight_map" object of key -> shard file'))
    files = list(dict.fromkeys(weight_map.values()))
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(
                f"{index_path} names shard {name!r} outside its directory; refusing to read it. "
                "Shard names must be plain file names beside the index"
            )
    directory = index_path.parent
    absent = [name for name in files if not (directory / name).is_file()]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise FileNotFoundError(
            f"{index_path} names shard(s) that do not exist in {directory}: {shown}; the save or "
            "download is incomplete: re-download the missing shards or re-save the checkpoint"
        )
    keys_in: dict[str, list[str]] = {name: [] for name in files}
    for key, name in weight_map.items():
        keys_in[name].append(key)
    loaded: dict[str, Tensor] = {}
    for name in files:
        shard = _load_file(directory / name)
        for key in keys_in[name]:
            if key not in shard:
                raise ValueError(
                    f"{index_path} says {key!r} is in {name}, but that shard does not hold it; "
                    "the index and the shards come from different saves: re-save or re-download"
                )
            loaded[key] = shard[key]
    state = {key: loaded[key] for key in weight_map}
    meta = index.get("metadata")
    if isinstance(meta, dict) and ALIASES_KEY in meta:
        _restore_aliases(state, meta[ALIASES_KEY], index_path)
    return state
