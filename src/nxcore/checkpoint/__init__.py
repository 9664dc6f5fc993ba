"""Checkpoints: safetensors state dicts, Hugging Face directories, atomic writes, key remapping.

A checkpoint directory (``save_pretrained`` / ``from_pretrained``) is the Hugging Face layout::

    directory/
        config.json                        # the nx Config; its "type" names the class to build
        model.safetensors                  # all weights in one file, or, when sharded:
        model-00001-of-0000N.safetensors   # shards of at most max_shard_bytes each
        model.safetensors.index.json       # {"metadata": {"total_size": N},
                                           #  "weight_map": {key: shard file name}}

``load_state`` also reads official checkpoints: ``.safetensors`` files, shard indexes, and
``.pt``/``.pth``/``.bin`` torch pickles through ``torch.load(weights_only=True)``; nothing loaded
executes code from the file. Every write is atomic: a crash or a kill mid-save leaves the previous
file or directory exactly as it was. Tied weights are stored once and come back tied.
"""

from nxcore.checkpoint.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from nxcore.checkpoint.loading import load_state
from nxcore.checkpoint.matching import CheckpointMismatchError, KeyMismatch, LoadReport, load_into
from nxcore.checkpoint.pretrained import from_pretrained, save_pretrained
from nxcore.checkpoint.remap import remap_keys
from nxcore.checkpoint.safetensors_io import save_sharded, save_state

__all__ = [
    "CheckpointMismatchError",
    "KeyMismatch",
    "LoadReport",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "from_pretrained",
    "load_into",
    "load_state",
    "remap_keys",
    "save_pretrained",
    "save_sharded",
    "save_state",
]
