"""Load the official NextStep-1 tokenizer layout: ``config.json`` + ``checkpoint.pt``.

The official directory (``stepfun-ai/NextStep-1-f8ch16-Tokenizer``) holds::

    config.json     {"in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "z_channels",
                     "scaling_factor", "shift_factor", "encoder_norm", "psz", "deterministic",
                     "resolution"}  (any subset; absent keys take the official code's defaults)
    checkpoint.pt   a torch pickle of the state dict, keys as in ``encoder_decoder`` (read with
                    ``weights_only=True``; a dict nesting it under "state_dict"/"model" is accepted)

Two official code versions read ``config.json`` differently (``convention``):

- ``"gh-v1"`` (GitHub, Aug 2025, ``nextstep/models/modeling_flux_vae.py``): defaults scaling 0.3611,
  shift 0.1159, ``encoder_norm`` false, ``psz`` null; ``encoder_norm`` with ``psz`` null normalises
  each latent pixel over its channels (``norm_patch_size = 1``).
- ``"gh-v2"`` (GitHub, Feb 2026, diffusers-based VAE): defaults scaling 1, shift 0, ``encoder_norm``
  true, ``psz`` 1; ``encoder_norm`` with ``psz`` null normalises nothing.

Both agree whenever ``config.json`` states ``encoder_norm`` and an integer ``psz``. ``resolution`` only
sized a debugging attribute upstream and ``deterministic`` only matters for posterior sampling
(``encode`` always uses the posterior mean, which equals a deterministic sample), so both are
accepted and ignored. Other keys are ignored with a warning, as the official loader ignores them.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from nxcore.checkpoint import load_into
from nxcore.tokenizer.autoencoder.config import AutoencoderConfig
from nxcore.tokenizer.autoencoder.tokenizer import NextStepAutoencoder

__all__ = ["OFFICIAL_CONFIG_FILE", "OFFICIAL_WEIGHTS_FILE", "config_from_official", "from_official"]

OFFICIAL_CONFIG_FILE = "config.json"
OFFICIAL_WEIGHTS_FILE = "checkpoint.pt"
Convention = Literal["gh-v1", "gh-v2"]

_SHARED = {"in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
           "z_channels": 16}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gh-v1": {**_SHARED, "scaling_factor": 0.3611, "shift_factor": 0.1159, "encoder_norm": False,
              "psz": None},
    "gh-v2": {**_SHARED, "scaling_factor": 1.0, "shift_factor": 0.0, "encoder_norm": True, "psz": 1},
}
_IGNORED = {"resolution", "deterministic"}


def config_from_official(
    data: Mapping[str, Any], *, patch_size: int = 2, convention: Convention = "gh-v1"
) -> AutoencoderConfig:
    """The ``AutoencoderConfig`` that an official ``config.json`` (parsed) describes.

    ``patch_size`` is the NextStep model's ``latent_patch_size`` (2), which the tokenizer's own
    config does not hold. ``convention`` picks how absent keys and ``psz: null`` are read (module
    docstring).
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be the parsed config.json (a dict), got {type(data).__name__}")
    if convention not in _DEFAULTS:
        raise ValueError(
            f"convention must be one of {sorted(_DEFAULTS)}, got {convention!r}; 'gh-v1' reads configs "
            "as the original GitHub release, 'gh-v2' as the Feb 2026 training release"
        )
    unknown = sorted(set(data) - set(_DEFAULTS[convention]) - _IGNORED)
    if unknown:
        warnings.warn(
            f"official autoencoder config keys {unknown} are not autoencoder parameters; ignoring them "
            "(as the official loader does)",
            stacklevel=2,
        )
    c = {**_DEFAULTS[convention], **{k: v for k, v in data.items() if k in _DEFAULTS[convention]}}
    psz, encoder_norm = c["psz"], c["encoder_norm"]
    if psz is not None and (not isinstance(psz, int) or isinstance(psz, bool) or psz < 1):
        raise ValueError(f"official config psz = {psz!r} is not allowed; expected null or an int >= 1")
    if psz is None and convention == "gh-v2":
        encoder_norm = False
    ch_mult = c["ch_mult"]
    return AutoencoderConfig(
        in_channels=c["in_channels"],
        out_channels=c["out_ch"],
        ch=c["ch"],
        ch_mult=tuple(ch_mult) if isinstance(ch_mult, list | tuple) else ch_mult,
        num_res_blocks=c["num_res_blocks"],
        z_channels=c["z_channels"],
        norm_groups=32,
        patch_size=patch_size,
        encoder_norm=encoder_norm,
        norm_patch_size=1 if psz is None else psz,
        scaling_factor=c["scaling_factor"],
        shift_factor=c["shift_factor"],
    )


def from_official(
    path: str | os.PathLike,
    *,
    patch_size: int = 2,
    convention: Convention = "gh-v1",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> NextStepAutoencoder:
    """Build and load the autoencoder in an official tokenizer directory (layout above).

    Every key must match: a missing, unexpected or mis-shaped key raises
    ``nxcore.checkpoint.CheckpointMismatchError`` listing them all. Nothing in the files is executed.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a directory path (str or os.PathLike), got {type(path).__name__}")
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory; pass the official tokenizer directory holding "
            f"{OFFICIAL_CONFIG_FILE} and {OFFICIAL_WEIGHTS_FILE}"
        )
    absent = [n for n in (OFFICIAL_CONFIG_FILE, OFFICIAL_WEIGHTS_FILE) if not (directory / n).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{directory} lacks {' and '.join(absent)}; an official NextStep-1 tokenizer directory holds "
            f"{OFFICIAL_CONFIG_FILE} and {OFFICIAL_WEIGHTS_FILE}"
        )
    config_path = directory / OFFICIAL_CONFIG_FILE
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-download it") from err
    try:
        config = config_from_official(data, patch_size=patch_size, convention=convention)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{config_path}: {err}") from err
    model = NextStepAutoencoder(config)
    load_into(model, directory / OFFICIAL_WEIGHTS_FILE, dtype=dtype)
    return model.to(device)
