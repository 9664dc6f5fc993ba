"""The flex backend (dispatch name ``"triton"``): ``flex_attention`` with a BlockMask per schedule.

Shape legend as in ``nxkernels.scale_attention.reference``.

The mask is ``mask_mod(b, h, q, kv) = kv < kv_end[q]`` over ``ScaleBlocks.kv_end``, turned into a
``BlockMask`` by ``create_block_mask`` once per (schedule, device) and cached (at most
``MAX_CACHED`` schedules). Fully masked 128 x 128 tiles are skipped and unmasked ones run without
evaluating the mask. GQA goes to ``enable_gqa``.

On CUDA the call goes through ``torch.compile(flex_attention)``, which generates Triton kernels for
the forward and the backward (hence the dispatch name); inside an outer ``torch.compile`` it calls
``flex_attention`` directly and the outer graph compiles it. On CPU it runs ``flex_attention``
eagerly, forward only: torch refuses CPU inputs that require grad ("FlexAttention does not support
backward on CPU"), so dispatch lists that as a reason and the tests check the CPU forward only.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from nxkernels.scale_attention.blocks import ScaleBlocks

__all__ = ["MAX_CACHED", "block_mask", "scale_attention_flex"]

MAX_CACHED = 64
_masks: OrderedDict[tuple, BlockMask] = OrderedDict()
_compiled: dict[str, object] = {}


def _build(blocks: ScaleBlocks, device: torch.device) -> BlockMask:
    kv_end = blocks.kv_end(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx < kv_end[q_idx]

    n = blocks.length
    return create_block_mask(mask_mod, None, None, n, n, device=device)


def block_mask(blocks: ScaleBlocks, device: torch.device | str) -> BlockMask:
    """The cached ``BlockMask`` of ``blocks`` on ``device`` (built on first use)."""
    device = torch.device(device)
    if torch.compiler.is_compiling():  # built inside the graph; the eager cache is not traced
        return _build(blocks, device)
    key = (blocks, str(device))
    mask = _masks.get(key)
    if mask is None:
        mask = _masks[key] = _build(blocks, device)
        while len(_masks) > MAX_CACHED:
            _masks.popitem(last=False)
    else:
        _masks.move_to_end(key)
    return mask


def _flex():
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(flex_attention)  # dynamic after a first recompile: many schedules
    return _compiled["fn"]


def scale_attention_flex(
    q: Tensor, k: Tensor, v: Tensor, blocks: ScaleBlocks, scale: float | None = None
) -> Tensor:
    """Block-causal attention through ``flex_attention`` (compiled on CUDA, eager on CPU)."""
    mask = block_mask(blocks, q.device)
    gqa = q.shape[1] != k.shape[1]
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
    if q.device.type == "cpu":  # eager on purpose (tests, inference): silence the "unfused" warning
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
    return _flex()(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
