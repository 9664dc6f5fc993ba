"""Load VAR's official VQVAE layout (``vae_ch160v4096z32.pth``) and write it back.

The official file is a torch pickle of ``VQVAE.state_dict()`` (FoundationVision/VAR
``models/vqvae.py``), read here with ``torch.load(weights_only=True)`` only::

    encoder.*, decoder.*                       as in ``cnn.py`` (same names here)
    quant_conv.{weight,bias}, post_quant_conv.{weight,bias}
    quantize.embedding.weight                  [4096, 32]
    quantize.quant_resi.qresi_ls.{i}.*         4 φ convs (share_quant_resi = 4, released)
    quantize.quant_resi.qresi.*                (share_quant_resi = 1: one shared φ)
    quantize.quant_resi.{i}.*                  (share_quant_resi = 0: one φ per step)
    quantize.ema_vocab_hit_SV                  [steps, 4096] training code-hit statistics

The φ layouts all load into ``quantize.quant_resi.qresi_ls``; the code-hit buffer is dropped (it is
not a weight; ``code_usage`` computes the statistics from codes). The file holds no config:
``config_from_official_state`` reads the sizes from the tensor shapes (GroupNorm groups and the φ
blend cannot be read from shapes: VAR's are 32 and 0.5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from nxcore.checkpoint import load_state
from nxcore.checkpoint.matching import load_checked
from nxcore.tokenizer.multiscale.config import MultiScaleVQConfig, QuantizerConfig
from nxcore.tokenizer.multiscale.tokenizer import MultiScaleVQTokenizer

__all__ = [
    "OFFICIAL_VAE_FILE",
    "config_from_official_state",
    "from_official",
    "official_key",
    "to_official_state",
]

OFFICIAL_VAE_FILE = "vae_ch160v4096z32.pth"
HIT_BUFFER = "quantize.ema_vocab_hit_SV"
_SHARED_PHI = re.compile(r"^quantize\.quant_resi\.qresi\.")
_PER_STEP_PHI = re.compile(r"^quantize\.quant_resi\.(\d+)\.")


def official_key(key: str) -> str | None:
    """Our key for an official key (None: not a weight, dropped)."""
    if key == HIT_BUFFER:
        return None
    key = _SHARED_PHI.sub("quantize.quant_resi.qresi_ls.0.", key)
    return _PER_STEP_PHI.sub(r"quantize.quant_resi.qresi_ls.\1.", key)


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(
            f"the state dict has no {key!r}; it is not VAR's VQVAE layout (encoder.*, decoder.*, quant_conv, "
            "post_quant_conv, quantize.*)"
        )
    return tuple(state[key].shape)


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def config_from_official_state(state: Mapping[str, Tensor], **changes: Any) -> MultiScaleVQConfig:
    """The ``MultiScaleVQConfig`` whose shapes match an official-layout state dict (already renamed
    with ``official_key`` or not). ``changes`` override fields (CNN fields or ``QuantizerConfig``
    fields, e.g. ``inputs="residual"``, ``norm_groups``)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a state dict (str -> tensor mapping), got {type(state).__name__}")
    state = {new: v for k, v in state.items() if (new := official_key(k)) is not None}
    ch, in_channels = _shape(state, "encoder.conv_in.weight")[:2]
    levels = max(_count(state, r"^encoder\.down\.(\d+)\."), 1)
    widths = [_shape(state, f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise ValueError(f"encoder widths {widths} are not multiples of ch = {ch}; not VAR's VQVAE layout")
    codes, code_dim = _shape(state, "quantize.embedding.weight")
    last = levels - 1
    quantizer_fields = {"codebook_size": codes, "code_dim": code_dim,
                        "phi_count": _count(state, r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.")}
    fields: dict[str, Any] = {
        "in_channels": in_channels,
        "ch": ch,
        "ch_mult": tuple(w // ch for w in widths),
        "num_res_blocks": _count(state, r"^encoder\.down\.0\.block\.(\d+)\."),
        "level_attention": f"encoder.down.{last}.attn.0.qkv.weight" in state,
        "mid_attention": "encoder.mid.attn_1.qkv.weight" in state,
        "quant_conv_kernel": _shape(state, "quant_conv.weight")[-1],
    }
    q_names = {a.name for a in attrs.fields(QuantizerConfig)}
    quantizer_fields.update({k: v for k, v in changes.items() if k in q_names})
    fields.update({k: v for k, v in changes.items() if k not in q_names})
    return MultiScaleVQConfig(quantizer=QuantizerConfig(**quantizer_fields), **fields)


def from_official(
    source: str | os.PathLike | Mapping[str, Tensor],
    *,
    config: MultiScaleVQConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **changes: Any,
) -> MultiScaleVQTokenizer:
    """Build a tokenizer and load VAR's official VQVAE weights (a ``.pth`` path or a state dict).

    ``config`` defaults to ``config_from_official_state`` of the file (with ``changes``; e.g.
    ``inputs="residual"``). Every weight must match: missing, unexpected or mis-shaped keys raise
    ``nxcore.checkpoint.CheckpointMismatchError`` listing them all. Nothing in the file is executed.
    """
    if isinstance(source, str | os.PathLike):
        state = load_state(source)
        origin = str(source)
    elif isinstance(source, Mapping):
        state, origin = dict(source), None
    else:
        raise TypeError(
            f"source must be a path to {OFFICIAL_VAE_FILE} (str or os.PathLike) or a state dict, got "
            f"{type(source).__name__}"
        )
    if config is None:
        config = config_from_official_state(state, **changes)
    elif changes:
        raise TypeError(f"pass either config or field changes {sorted(changes)}, not both")
    model = MultiScaleVQTokenizer(config)
    load_checked(model, state, key_map=official_key, strict=True, dtype=dtype, source=origin)
    return model.to(device)


def to_official_state(tokenizer: MultiScaleVQTokenizer, *, num_steps: int = 10) -> dict[str, Tensor]:
    """Our weights in VAR's layout (``qresi_ls`` φ bank), plus a zero code-hit buffer
    [num_steps, codebook_size] so that VAR's ``VQVAE.load_state_dict`` takes it as is."""
    if not isinstance(tokenizer, MultiScaleVQTokenizer):
        raise TypeError(f"tokenizer must be a MultiScaleVQTokenizer, got {type(tokenizer).__name__}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1 (VAR's len(v_patch_nums)), got {num_steps!r}")
    state = {k: v.detach().clone() for k, v in tokenizer.state_dict().items()}
    state[HIT_BUFFER] = torch.zeros(num_steps, tokenizer.codebook_size)
    return state
