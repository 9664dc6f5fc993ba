"""Modules to and from checkpoint directories: ``config.json`` + safetensors weights.

Layout written by ``save_pretrained`` (the Hugging Face layout)::

    directory/
        config.json                        # the nx Config, with its "type" import path
        model.safetensors                  # all weights, when they fit in max_shard_bytes
      or
        model-00001-of-0000N.safetensors   # shards of at most max_shard_bytes
        model.safetensors.index.json       # {"metadata": {"total_size": N}, "weight_map": {...}}
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from nxcore.checkpoint.atomic import as_path, atomic_directory, interrupted_save_hint
from nxcore.checkpoint.loading import as_device, load_state
from nxcore.checkpoint.matching import load_checked
from nxcore.checkpoint.remap import KeyMap
from nxcore.checkpoint.safetensors_io import (
    CONFIG_FILE,
    check_replaceable,
    check_shard_bytes,
    is_checkpoint_file,
    split_aliases,
    write_sharded,
    write_single,
)
from nxcore.config import Config

__all__ = ["from_pretrained", "save_pretrained"]

# --- saving ------------------------------------------------------------------------------------

def save_pretrained(
    module: nn.Module,
    directory: str | os.PathLike,
    *,
    config: Config | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Write ``module`` as a checkpoint directory (layout in the module docstring), atomically.

    ``config`` (or ``module.config`` when it is an nx ``Config``) goes to ``config.json``; its
    ``build()`` must make a module of the same structure. Weights go to one ``model.safetensors``,
    or to shards when they exceed ``max_shard_bytes``. The directory is built beside the target
    and swapped in whole: an interrupted save leaves the previous checkpoint as it was. Other
    files in an existing checkpoint directory (a README, tokenizer files) are carried over.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    directory = as_path(directory, "directory")
    if config is None:
        config = getattr(module, "config", None)
        if not isinstance(config, Config):
            raise ValueError(
                f"save_pretrained needs a config for config.json: pass config=... (an nx Config "
                f"whose build() makes this module) or give {type(module).__name__} a .config "
                "attribute; to save weights only, use save_state or save_sharded"
            )
    elif not isinstance(config, Config):
        raise TypeError(f"config must be an nx Config, got {type(config).__name__}")
    if max_shard_bytes is not None:
        check_shard_bytes(max_shard_bytes)
    text = config.to_json() + "\n"
    try:
        type(config).from_json(text)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"config {type(config).__qualname__} does not survive a JSON round trip ({err}); "
            "define config classes at module level so from_pretrained can import them"
        ) from err
    tensors, aliases = split_aliases(module.state_dict())
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    check_replaceable(directory)
    with atomic_directory(directory, keep=lambda name: not is_checkpoint_file(name)) as tmp:
        (tmp / CONFIG_FILE).write_text(text)
        if max_shard_bytes is None or total <= max_shard_bytes:
            write_single(tmp, tensors, aliases)
        else:
            write_sharded(tmp, tensors, aliases, max_shard_bytes)


# --- loading -----------------------------------------------------------------------------------

def from_pretrained(
    directory: str | os.PathLike,
    *,
    config_type: type[Config] = Config,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    key_map: KeyMap | None = None,
    strict: bool = True,
) -> nn.Module:
    """Build the module that ``directory/config.json`` describes and load its weights.

    The config is read with ``config_type.from_json`` (which checks its "type" is a
    ``config_type``), built with ``build()``, moved to ``device`` and filled with ``load_into``
    (``dtype``, ``key_map`` and ``strict`` are passed on).
    """
    directory = as_path(directory, "directory")
    if not (isinstance(config_type, type) and issubclass(config_type, Config)):
        raise TypeError(f"config_type must be an nx Config subclass, got {config_type!r}")
    dev = as_device(device)
    if not directory.exists():
        raise FileNotFoundError(
            f"checkpoint directory {directory} does not exist{interrupted_save_hint(directory)}"
        )
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a weights file, not a checkpoint directory; build the module "
            "yourself and call load_into(module, path)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist, so {directory} is not a save_pretrained checkpoint; "
            "build the module yourself and call load_into(module, directory)"
        )
    try:
        cfg = config_type.from_json(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from err
    except TypeError as err:
        raise TypeError(f"{config_path}: {err}") from err
    module = cfg.build()
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"{type(cfg).__qualname__}.build() returned {type(module).__name__}, not a "
            "torch.nn.Module; from_pretrained needs a module to load weights into"
        )
    module.to(device=dev)
    state = load_state(directory, device=dev)
    report = load_checked(
        module, state, key_map=key_map, strict=strict, dtype=dtype, source=str(directory)
    )
    if not report.ok:
        warnings.warn(
            f"from_pretrained({str(directory)!r}, strict=False) left {len(report.missing)} "
            f"missing, {len(report.unexpected)} unexpected and {len(report.mismatched)} "
            f"mis-shaped key(s) unloaded (first: {(report.missing + report.unexpected)[:3]}); "
            "call load_into on the built module for the full LoadReport",
            stacklevel=2,
        )
    return module
