"""AdaLN modulation and gated residual, the reference: plain torch, fp32 math (fp64 for fp64), the
oracle for every fused backend. The inner loop of NextStep-1's flow head (``SimpleMLPAdaLN``) and of
AdaLN (DiT-style) blocks:

    adaln_modulate(x, shift, scale) = LayerNorm(x, no affine, eps) * (1 + scale) + shift
    gated_residual(x, gate, h)      = x + gate * h

Shape legend:
    batch   leading dimensions of ``x`` (e.g. [B, T] or [N])
    dim     feature width (1536 in NextStep-1's flow head)

``shift``/``scale``/``gate`` broadcast against ``x`` over the token dimension: for ``x`` [B, T, D]
they may be [B, D] (one modulation per sample, the usual case), [B, 1, D], [B, T, D] or [D]; in
general any shape that broadcasts to ``x`` after a [B, D] -> [B, 1, D] unsqueeze. LayerNorm
statistics are computed in fp32; the result has ``x``'s dtype.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.typecheck import typecheck

__all__ = ["adaln_modulate_reference", "as_broadcast", "check_float", "gated_residual_reference"]


def check_float(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype, got {value.dtype}; convert it with .float()"
        )
    return value


def as_broadcast(name: str, mod: object, x: Tensor) -> Tensor:
    """``mod`` viewed so that it broadcasts against ``x`` ([B, D] -> [B, 1, D] for a 3-d ``x``)."""
    mod = check_float(name, mod)
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension (dim), got a 0-d tensor")
    if mod.ndim == x.ndim - 1 and x.ndim >= 3:
        mod = mod.unsqueeze(-2)
    if mod.ndim > x.ndim or mod.shape[-1:] != x.shape[-1:]:
        raise ValueError(
            f"{name} has shape {tuple(mod.shape)} but x has shape {tuple(x.shape)}; {name} must be "
            f"[B, D] or [B, T, D] for x [B, T, D] (D = {x.shape[-1]}), or broadcast to x"
        )
    try:
        torch.broadcast_shapes(mod.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(mod.shape)} does not broadcast to x of shape {tuple(x.shape)}; "
            f"give it x's batch size or 1"
        ) from None
    if torch.broadcast_shapes(mod.shape, x.shape) != x.shape:
        raise ValueError(
            f"{name} of shape {tuple(mod.shape)} would enlarge x of shape {tuple(x.shape)}; it must "
            "broadcast to x's shape"
        )
    if mod.device != x.device:
        raise ValueError(f"{name} is on {mod.device} but x is on {x.device}; move it with .to()")
    return mod


def _compute(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@typecheck
def adaln_modulate_reference(
    x: Float[Tensor, "*batch dim"], shift: Float[Tensor, "..."], scale: Float[Tensor, "..."],
    eps: float = 1e-6,
) -> Float[Tensor, "*batch dim"]:
    """``LayerNorm(x) * (1 + scale) + shift`` (LayerNorm without affine, fp32 statistics)."""
    x = check_float("x", x)
    shift = as_broadcast("shift", shift, x)
    scale = as_broadcast("scale", scale, x)
    if not (isinstance(eps, int | float) and not isinstance(eps, bool) and eps >= 0):
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    compute = _compute(x, shift, scale)
    xf = x.to(compute)
    normed = torch.nn.functional.layer_norm(xf, xf.shape[-1:], eps=float(eps))
    out = normed * (1 + scale.to(compute)) + shift.to(compute)
    return out.to(x.dtype)


@typecheck
def gated_residual_reference(
    x: Float[Tensor, "*batch dim"], gate: Float[Tensor, "..."], h: Float[Tensor, "*batch dim"]
) -> Float[Tensor, "*batch dim"]:
    """``x + gate * h`` in fp32 math, returned in ``x``'s dtype."""
    x = check_float("x", x)
    h = check_float("h", h)
    gate = as_broadcast("gate", gate, x)
    if h.shape != x.shape:
        raise ValueError(f"h has shape {tuple(h.shape)} but x has shape {tuple(x.shape)}; they must match")
    if h.device != x.device:
        raise ValueError(f"h is on {h.device} but x is on {x.device}; move it with .to()")
    compute = _compute(x, gate, h)
    out = x.to(compute) + gate.to(compute) * h.to(compute)
    return out.to(x.dtype)
