"""Block-causal attention for next-scale sequences, and the KV-cache decode step.

    out = scale_attention(q, k, v, blocks)                    # training / prefill, whole sequence
    out = decode_attention(q, k_cache, v_cache, causal=False) # generation: one scale (or token) a step

Shape legend: batch; heads = query heads; kv_heads = key/value heads (GQA: heads = kv_heads * group);
seq = tokens of the sequence (for ``decode_attention``: the queries of this step); cache = keys in
the KV cache, this step's included; head_dim. Every result is ``[batch, heads, seq, head_dim]`` in
q's dtype.

``blocks`` describes the pattern (``ScaleBlocks``, or anything with ``.starts``/``.ends``/``.causal``
such as ``nxcore.layout.SequenceLayout.attention_blocks()``): blocks tile ``[0, seq)`` in order; a
query sees every key of earlier blocks and, inside its own block, every key (one scale of a
discrete image) or the keys up to itself (``causal``: text, continuous image tokens). Convert once
with ``ScaleBlocks.of(...)`` outside ``torch.compile``: a ``ScaleBlocks`` is a constant to the
compiler, tensors would break the graph.

``scale_attention`` backends, in priority order (``backend=``, ``use_backend``, ``NX_KERNELS`` pin one):

1. ``triton``: ``flex_attention`` with a BlockMask cached per schedule (``flex.py``), compiled to
   Triton kernels on CUDA; auto on CUDA only. First on the GPU because it is one fused kernel,
   forward and backward, that skips fully masked 128 x 128 tiles (most of the 38% of the scores the
   1024-level schedule masks) and needs no key copies; its cost is a compile per sequence length.
   On CPU it runs only when pinned and only forward (torch has no flex backward on CPU).
2. ``torch``: the per-scale split (``split.py``), one SDPA call per scale over its key prefix, exact
   and without a ``seq x seq`` mask; auto on every device. The CPU production path (forward and
   backward); on CUDA whole scales run FlashAttention unmasked, so it is the fallback when flex
   cannot run (no Triton, odd shapes).
3. ``xformers``: varlen ``memory_efficient_attention`` over packed key prefixes (``xformers.py``),
   GPU only and optional. It copies about 2.8 x seq keys per call and recomputes the forward in its
   backward, so it comes after the split and runs only when pinned (for comparisons).
4. ``reference``: SDPA with the dense ``[seq, seq]`` boolean mask (``reference.py``): the oracle.

``decode_attention`` backends: ``torch`` (SDPA without a mask; ``is_causal`` only when the step
and the cache have the same length, else a bottom-right ``[seq, cache]`` mask) and ``reference``
(a dense bottom-right mask whenever causal). A whole new scale attends everything cached, itself
included: no mask. Text tokens and continuous image tokens use ``causal=True``: query ``i`` of the
step sees keys ``[0, cache - seq + i]``.

Each backend declares its tolerance against the reference per dtype (``Backend.tolerance``); the
tests compare outputs and the gradients of q, k and v with them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, triton_reasons, xformers_reasons
from nxkernels.scale_attention.blocks import Chunk, ScaleBlocks
from nxkernels.scale_attention.reference import (
    attention_math,
    bottom_right_mask,
    decode_attention_reference,
    scale_attention_reference,
)
from nxkernels.typecheck import typecheck

# The backend modules import neither triton nor xformers (those load inside the kernel calls), so they
# are imported here: ``torch.compile`` cannot trace the import a first ``Backend.load()`` would do.
from nxkernels.scale_attention import flex, split, xformers  # noqa: E402, F401  isort: skip

__all__ = [
    "DECODE_ATTENTION",
    "SCALE_ATTENTION",
    "BlocksLike",
    "Chunk",
    "ScaleBlocks",
    "attention_math",
    "bottom_right_mask",
    "decode_attention",
    "decode_attention_kernel",
    "decode_attention_reference",
    "scale_attention",
    "scale_attention_reference",
]

_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_WITH_DOUBLE = (*_HALF_AND_FLOAT, torch.float64)
_ANY_DEVICE = ("cpu", "cuda", "mps", "xpu")

# Against the reference, same inputs and dtype. Both run SDPA in the input dtype, so the gap is the
# rounding of different reduction orders; bf16/fp16 gradients of k and v sum over many queries.
_TORCH_ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-12}
_TORCH_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


@runtime_checkable
class BlocksLike(Protocol):
    """Anything with ``starts``, ``ends`` (int) and ``causal`` (bool), one entry per block."""

    starts: object
    ends: object
    causal: object


def _requires_grad(*tensors) -> bool:
    return any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def _flex_available(device_type: str) -> list[str]:
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:  # pragma: no cover
        return [f"this torch ({torch.__version__}) has no torch.nn.attention.flex_attention"]
    return triton_reasons(device_type) if device_type == "cuda" else []


def _flex_check(q, k, v, blocks, scale=None) -> list[str]:
    if q.device.type == "cpu" and _requires_grad(q, k, v):
        return ["flex_attention has no backward on CPU and refuses CPU inputs that require grad; "
                "use backend='torch' (or detach the inputs for inference)"]
    return []


def _scale_shape_class(q, k, v, blocks, scale=None) -> tuple:
    return (_requires_grad(q, k, v),)


SCALE_ATTENTION = Op(
    "scale_attention",
    backends=(
        Backend(
            "triton",
            "nxkernels.scale_attention.flex:scale_attention_flex",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            atol=_TORCH_ATOL,
            rtol=_TORCH_RTOL,
            available=_flex_available,
            check=_flex_check,
            auto_devices=("cuda",),
            description="flex_attention + BlockMask per schedule (Triton on CUDA; CPU: forward, pinned)",
        ),
        Backend(
            "torch",
            "nxkernels.scale_attention.split:scale_attention_split",
            devices=_ANY_DEVICE,
            dtypes=_WITH_DOUBLE,
            atol=_TORCH_ATOL,
            rtol=_TORCH_RTOL,
            description="per-scale split: one SDPA call per scale over its key prefix, no seq x seq mask",
        ),
        Backend(
            "xformers",
            "nxkernels.scale_attention.xformers:scale_attention_xformers",
            devices=("cuda",),
            dtypes=_HALF_AND_FLOAT,
            atol=_TORCH_ATOL,
            rtol=_TORCH_RTOL,
            available=xformers_reasons,
            description="xformers varlen memory_efficient_attention over packed key prefixes (GPU)",
        ),
        Backend(
            "reference",
            "nxkernels.scale_attention.reference:scale_attention_reference",
            devices=_ANY_DEVICE,
            dtypes=_WITH_DOUBLE,
            atol=dict.fromkeys(_WITH_DOUBLE, 0.0),
            rtol=dict.fromkeys(_WITH_DOUBLE, 0.0),
            description="SDPA with the dense seq x seq boolean mask (the oracle)",
        ),
    ),
    shape_class=_scale_shape_class,
)

DECODE_ATTENTION = Op(
    "decode_attention",
    backends=(
        Backend(
            "torch",
            "nxkernels.scale_attention.split:decode_attention_torch",
            devices=_ANY_DEVICE,
            dtypes=_WITH_DOUBLE,
            atol=_TORCH_ATOL,
            rtol=_TORCH_RTOL,
            description="SDPA over the cache: no mask, or bottom-right causal (is_causal only if square)",
        ),
        Backend(
            "reference",
            "nxkernels.scale_attention.reference:decode_attention_reference",
            devices=_ANY_DEVICE,
            dtypes=_WITH_DOUBLE,
            atol=dict.fromkeys(_WITH_DOUBLE, 0.0),
            rtol=dict.fromkeys(_WITH_DOUBLE, 0.0),
            description="SDPA with a dense bottom-right mask when causal (the oracle)",
        ),
    ),
)


def _check_tensors(names: tuple[str, str, str], q, k, v) -> None:
    for name, t in zip(names, (q, k, v), strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}; convert it with .float()")
        if t.ndim != 4:
            raise ValueError(
                f"{name} must be [batch, heads, seq, head_dim], got shape {tuple(t.shape)}; "
                "from [batch, seq, heads, head_dim] use .transpose(1, 2)"
            )
    qn, kn, vn = names
    for name, t in ((kn, k), (vn, v)):
        if t.dtype != q.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {qn} has {q.dtype}; cast it with .to({qn}.dtype)"
            )
        if t.device != q.device:
            raise ValueError(
                f"{name} is on {t.device} but {qn} is on {q.device}; move it with .to({qn}.device)"
            )
    if v.shape != k.shape:
        raise ValueError(f"{vn} has shape {tuple(v.shape)} but {kn} has {tuple(k.shape)}; they must match")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"{kn} has shape {tuple(k.shape)} but {qn} has {tuple(q.shape)}; batch (dim 0) and head_dim "
            "(dim 3) must match"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"{qn} has {q.shape[1]} heads, not a multiple of the {k.shape[1]} key/value heads of {kn} "
            "(GQA needs heads = kv_heads * group)"
        )


def _check_scale(scale) -> None:
    if scale is not None and (not isinstance(scale, float) or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be None (1/sqrt(head_dim)) or a finite float > 0, got {scale!r}")


@typecheck
def scale_attention(
    q: Float[Tensor, "batch heads seq head_dim"],
    k: Float[Tensor, "batch kv_heads seq head_dim"],
    v: Float[Tensor, "batch kv_heads seq head_dim"],
    blocks: BlocksLike,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> Float[Tensor, "batch heads seq head_dim"]:
    """Block-causal attention over a whole next-scale sequence (see the module docstring).

    ``blocks`` must tile ``[0, seq)``; ``scale`` defaults to ``1 / sqrt(head_dim)``. ``backend`` pins
    one of ``triton`` (flex), ``torch`` (split), ``xformers``, ``reference``; a pinned backend that
    cannot run raises ValueError with its reasons.
    """
    _check_tensors(("q", "k", "v"), q, k, v)
    _check_scale(scale)
    blocks = ScaleBlocks.of(blocks)
    if k.shape[2] != q.shape[2] or blocks.length != q.shape[2]:
        raise ValueError(
            f"blocks cover {blocks.length} tokens but q has seq {q.shape[2]} and k has {k.shape[2]}; "
            "all three must be equal (build blocks from the same layout as the sequence)"
        )
    chosen = SCALE_ATTENTION.select(q, k, v, blocks, scale=scale, backend=backend)
    return chosen.load()(q, k, v, blocks, scale)


@typecheck
def decode_attention(
    q: Float[Tensor, "batch heads seq head_dim"],
    k_cache: Float[Tensor, "batch kv_heads cache head_dim"],
    v_cache: Float[Tensor, "batch kv_heads cache head_dim"],
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str | None = None,
) -> Float[Tensor, "batch heads seq head_dim"]:
    """One generation step: this step's queries over the whole KV cache (which holds the step too).

    ``causal=False`` (a scale of a discrete image): no mask. ``causal=True`` (text, continuous image
    tokens): bottom-right aligned, query ``i`` sees keys ``[0, cache - seq + i]``. Needs
    ``seq <= cache``.
    """
    _check_tensors(("q", "k_cache", "v_cache"), q, k_cache, v_cache)
    _check_scale(scale)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if q.shape[2] > k_cache.shape[2]:
        raise ValueError(
            f"q has {q.shape[2]} queries but the cache holds {k_cache.shape[2]} keys; append this step's "
            "keys and values to the cache before attending (seq <= cache)"
        )
    chosen = DECODE_ATTENTION.select(q, k_cache, v_cache, backend=backend)
    return chosen.load()(q, k_cache, v_cache, causal, scale)


def decode_attention_kernel(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, *, backend: str | None = None
) -> Callable[[Tensor, Tensor, Tensor, bool, float | None], Tensor]:
    """The kernel ``decode_attention`` runs for these arguments: ``kernel(q, k_cache, v_cache, causal,
    scale)``. No validation and no dispatch per call: for callers that checked their arguments and
    call it many times (``nxcore.nn.forward_layers``)."""
    _check_tensors(("q", "k_cache", "v_cache"), q, k_cache, v_cache)
    return DECODE_ATTENTION.select(q, k_cache, v_cache, backend=backend).load()
