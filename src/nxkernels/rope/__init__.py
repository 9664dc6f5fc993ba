"""Rotary position embedding: ``apply_rope`` / ``apply_rope_qk`` from float positions, and backends.

    y = apply_rope(x, positions, inv_freq, sections)              # [*batch, seq, head_dim]
    q, k = apply_rope_qk(q, k, positions, inv_freq, sections)     # queries and keys, GQA allowed

Shape legend:
    batch      any leading dimensions (batch, heads, ...), possibly none
    seq        tokens
    head_dim   width of one attention head (even)
    pairs      rotary pairs, head_dim // 2
    axes       coordinates per position: 1 for 1D RoPE, 3 for multiscale 3D RoPE (M-RoPE)

Pair p turns channels (p, p + pairs) by ``positions[n, axis(p)] * inv_freq[p]``, where ``sections``
gives the pairs per axis (``None``: one axis drives every pair); see ``reference.py``. The angles
are computed from the float positions on the fly, so fractional coordinates cost nothing extra.

Backends, in priority order: ``triton`` (CUDA tensors; CPU tensors only when pinned, under
``TRITON_INTERPRET=1``), ``reference`` (plain torch, fp32 math). The choice follows
``nxkernels.dispatch`` (``backend=``, ``use_backend``, ``NX_KERNELS``). The op is the
``torch.library`` custom op ``nxkernels::rope``; its backward is the same op with ``inverse``
flipped (the inverse rotation), so it traces under ``torch.compile`` and passes
``torch.library.opcheck``. Gradients flow to ``x`` only: ``positions`` and ``inv_freq`` are buffers.
Eager calls that need no gradient skip the custom op and run the backend's ``inference`` kernel when
it has one (the reference's memoises the cos / sin table per positions tensor: every layer of a
model rotates to the same positions), else its forward.

``apply_rope_reference(x, cos, sin)`` with ``rope_cos_sin`` is the cos/sin form: the autograd
oracle the backends are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, eager_inference, triton_reasons
from nxkernels.rope.reference import (
    _check_float,
    apply_rope_reference,
    resolve_sections,
    rope_cos_sin,
    rotate_half,
)
from nxkernels.typecheck import typecheck

__all__ = [
    "ROPE",
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_reference",
    "rope_cos_sin",
    "rope_inference_kernel",
    "rotate_half",
]

_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_HEAD_DIM = 8192


def _triton_check(x, positions, inv_freq, sections=None) -> list[str]:
    reasons = []
    for name, t in (("positions", positions), ("inv_freq", inv_freq)):
        if t.dtype not in _HALF_AND_FLOAT:
            reasons.append(
                f"{name} dtype {t.dtype} is not supported (fp32, fp16, bf16; the kernel computes "
                "angles in fp32)"
            )
    return reasons


def _shape_class(x, positions, inv_freq, sections=None) -> tuple:
    return (x.shape[-1], positions.dtype, inv_freq.dtype)


ROPE = Op(
    "rope",
    backends=(
        Backend(
            "triton",
            "nxkernels.rope.triton:KERNELS",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            # Against the reference (outputs and gradients): the same fp32 math; the difference is
            # cos/sin rounding (~1e-7) plus one rounding step of the output (the interpreter rounds
            # fp32 -> bf16 towards zero, so bf16 may be one ulp off).
            atol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2},
            rtol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2},
            max_last_dim=TRITON_MAX_HEAD_DIM,
            available=triton_reasons,
            check=_triton_check,
            auto_devices=("cuda",),
            description="angles from float positions inside the kernel; any strides; backward = "
            "the same kernel, inverse rotation",
        ),
        Backend(
            "reference",
            "nxkernels.rope.reference:KERNELS",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=(*_HALF_AND_FLOAT, torch.float64),
            atol=dict.fromkeys((*_HALF_AND_FLOAT, torch.float64), 0.0),
            rtol=dict.fromkeys((*_HALF_AND_FLOAT, torch.float64), 0.0),
            description="plain torch cos/sin table, fp32 math (the oracle)",
        ),
    ),
    shape_class=_shape_class,
)


def _kernels(backend: str) -> dict:
    return ROPE.backend(backend).load()


def _rope_forward(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: list[int], inverse: bool, backend: str
) -> Tensor:
    kernel = _kernels(backend)["backward" if inverse else "forward"]
    return kernel(x, positions, inv_freq, sections)


_rope = torch.library.custom_op("nxkernels::rope", mutates_args=())(_rope_forward)


@_rope.register_fake
def _(x, positions, inv_freq, sections, inverse, backend):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, positions, inv_freq, sections, inverse, backend = inputs
    ctx.save_for_backward(positions, inv_freq)
    ctx.sections, ctx.inverse, ctx.backend = sections, inverse, backend


def _backward(ctx, dy):
    positions, inv_freq = ctx.saved_tensors
    dx = torch.ops.nxkernels.rope(dy, positions, inv_freq, ctx.sections, not ctx.inverse, ctx.backend)
    return dx, None, None, None, None, None


_rope.register_autograd(_backward, setup_context=_setup_context)


def _validate(x, positions, inv_freq, sections, name: str = "x") -> tuple[int, ...]:
    """Every argument checked (the message names it and the fix); the resolved sections."""
    _check_float(name, x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions ([*batch, seq, head_dim]), got shape "
            f"{tuple(x.shape)}"
        )
    _check_float("positions", positions, ndim=2)
    _check_float("inv_freq", inv_freq, ndim=1)
    seq, head_dim = x.shape[-2], x.shape[-1]
    if head_dim % 2:
        raise ValueError(
            f"{name} has head_dim {head_dim} (last dimension); RoPE rotates pairs, so it must be even"
        )
    if positions.shape[0] != seq:
        raise ValueError(
            f"positions has shape {tuple(positions.shape)} but {name} [*batch, seq, head_dim] has "
            f"shape {tuple(x.shape)}; give one position per token: positions must be [{seq}, axes]"
        )
    if inv_freq.shape[0] != head_dim // 2:
        raise ValueError(
            f"inv_freq has shape {tuple(inv_freq.shape)} but {name} has head_dim {head_dim}; it needs "
            f"one frequency per rotary pair: [{head_dim // 2}] (head_dim // 2)"
        )
    for arg, t in (("positions", positions), ("inv_freq", inv_freq)):
        if t.device != x.device:
            raise ValueError(
                f"{arg} is on {t.device} but {name} is on {x.device}; move it with .to({name}.device)"
            )
        if t.requires_grad:
            raise ValueError(
                f"{arg} requires grad, but apply_rope gives gradients for {name} only ({arg} is a "
                f"buffer); pass {arg}.detach()"
            )
    return resolve_sections(sections, positions.shape[1], head_dim // 2,
                            positions_shape=tuple(positions.shape))


@typecheck
def apply_rope(
    x: Float[Tensor, "*batch seq head_dim"],
    positions: Float[Tensor, "seq axes"],
    inv_freq: Float[Tensor, " pairs"],
    sections: tuple[int, ...] | None = None,
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch seq head_dim"]:
    """Rotate queries or keys ``x`` to float ``positions``; same shape and dtype, contiguous.

    ``inv_freq`` [head_dim // 2] holds the frequency of each pair; ``sections[a]`` consecutive
    pairs follow axis a of ``positions`` (they sum to head_dim // 2; ``None`` for one axis). The
    math runs in fp32 (the reference: fp64 for fp64 input). ``x`` may have any strides. Gradients
    flow to ``x`` only; ``positions`` and ``inv_freq`` must not require grad. ``backend`` pins a
    backend (``"triton"``, ``"reference"``); a pinned backend that cannot run raises ValueError.
    """
    sections = _validate(x, positions, inv_freq, sections)
    chosen = ROPE.select(x, positions, inv_freq, sections, backend=backend)
    if eager_inference(x):
        return _rope_inference(x, positions, inv_freq, sections, chosen)
    return torch.ops.nxkernels.rope(x, positions, inv_freq, list(sections), False, chosen.name)


def _rope_inference(x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...],
                    chosen: Backend) -> Tensor:
    return _inference_kernel(chosen)(x, positions, inv_freq, sections)


RopeKernel = Callable[[Tensor, Tensor, Tensor, "tuple[int, ...]"], Tensor]


def rope_inference_kernel(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | None = None, *,
    backend: str | None = None,
) -> tuple[RopeKernel, tuple[int, ...]]:
    """The kernel ``apply_rope`` runs for an eager call without gradients, chosen for these arguments,
    and the resolved sections: ``kernel(x, positions, inv_freq, sections) -> rotated x``. No
    validation and no dispatch per call: for callers that checked their arguments and call it many
    times (``RoPE1D.rotation``)."""
    sections = _validate(x, positions, inv_freq, sections)
    return _inference_kernel(ROPE.select(x, positions, inv_freq, sections, backend=backend)), sections


def _inference_kernel(chosen: Backend) -> RopeKernel:
    """The backend's ``inference`` kernel when it has one, else its forward (no custom op)."""
    kernels = chosen.load()
    inference = kernels.get("inference")
    if inference is not None:
        return inference
    forward = kernels["forward"]
    return lambda x, positions, inv_freq, sections: forward(x, positions, inv_freq, list(sections))


@typecheck
def apply_rope_qk(
    q: Float[Tensor, "*batch seq head_dim"],
    k: Float[Tensor, "*kv_batch seq head_dim"],
    positions: Float[Tensor, "seq axes"],
    inv_freq: Float[Tensor, " pairs"],
    sections: tuple[int, ...] | None = None,
    *,
    backend: str | None = None,
) -> tuple[Float[Tensor, "*batch seq head_dim"], Float[Tensor, "*kv_batch seq head_dim"]]:
    """``apply_rope`` on queries and keys at the same positions: ``(q_rotated, k_rotated)``.

    ``q`` and ``k`` share seq, head_dim, dtype and device; their leading dimensions may differ
    (e.g. [batch, heads, seq, head_dim] and [batch, kv_heads, seq, head_dim] for GQA). One backend
    is chosen for both.
    """
    sections = _validate(q, positions, inv_freq, sections, name="q")
    _validate(k, positions, inv_freq, sections, name="k")
    if k.shape[-2:] != q.shape[-2:]:
        raise ValueError(
            f"k has shape {tuple(k.shape)} but q has shape {tuple(q.shape)}; they must share the "
            "last two dimensions [seq, head_dim]"
        )
    if k.dtype != q.dtype:
        raise TypeError(f"k has dtype {k.dtype} but q has {q.dtype}; cast it with .to(q.dtype)")
    chosen = ROPE.select(q, positions, inv_freq, sections, backend=backend)
    if eager_inference(q, k):
        return (_rope_inference(q, positions, inv_freq, sections, chosen),
                _rope_inference(k, positions, inv_freq, sections, chosen))
    args = (positions, inv_freq, list(sections), False, chosen.name)
    return torch.ops.nxkernels.rope(q, *args), torch.ops.nxkernels.rope(k, *args)
