"""AdaLN modulation and gated residual, the reference: plain torch, fp32 math (fp64 for fp64). The
inner loop of NextStep-1's flow head (``SimpleMLPAdaLN``) and of AdaLN (DiT-style) blocks:

    adaln_modulate(x, shift, scale) = LayerNorm(x, no affine, eps) * (1 + scale) + shift
    gated_residual(x, gate, h)      = x + gate * h

``adaln_modulate_reference`` and ``gated_residual_reference`` (plain autograd) are the oracles for
every backend. ``ADALN_MODULATE_KERNELS`` and ``GATED_RESIDUAL_KERNELS`` are the reference backend
of the custom ops: the same forward math and an analytic backward, neither recorded by autograd.
With ``xhat = (x - mean) * rstd`` (fp32 statistics, one per row):

    dshift = sum_broadcast(dy),  dscale = sum_broadcast(dy * xhat),  w = dy * (1 + scale)
    dx = rstd * (w - mean_D(w) - xhat * mean_D(w * xhat))
    gated: dx = dy,  dgate = sum_broadcast(dy * h),  dh = dy * gate

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

__all__ = [
    "ADALN_MODULATE_KERNELS",
    "GATED_RESIDUAL_KERNELS",
    "adaln_modulate_backward_reference",
    "adaln_modulate_forward_reference",
    "adaln_modulate_reference",
    "as_broadcast",
    "check_eps",
    "check_float",
    "check_h",
    "gated_residual_backward_reference",
    "gated_residual_forward_reference",
    "gated_residual_reference",
    "stats_dtype",
]


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
    given, read = tuple(mod.shape), ""
    if mod.ndim == x.ndim - 1 and x.ndim >= 3:
        mod = mod.unsqueeze(-2)
        read = f" (read as {tuple(mod.shape)})"
    if mod.ndim > x.ndim or mod.shape[-1:] != x.shape[-1:]:
        raise ValueError(
            f"{name} has shape {given} but x has shape {tuple(x.shape)}; {name} must be "
            f"[B, D], [B, 1, D], [B, T, D] or [D] for x [B, T, D] (D = {x.shape[-1]}), or broadcast to x"
        )
    try:
        torch.broadcast_shapes(mod.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {given}{read} does not broadcast to x of shape {tuple(x.shape)}; "
            f"give it x's batch size or 1"
        ) from None
    if torch.broadcast_shapes(mod.shape, x.shape) != x.shape:
        raise ValueError(
            f"{name} of shape {given}{read} would enlarge x of shape {tuple(x.shape)}; it must "
            "broadcast to x's shape"
        )
    if mod.device != x.device:
        raise ValueError(f"{name} is on {mod.device} but x is on {x.device}; move it with .to()")
    return mod


def check_eps(eps: object) -> None:
    if not (isinstance(eps, int | float) and not isinstance(eps, bool) and eps >= 0):
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def check_h(h: object, x: Tensor) -> Tensor:
    h = check_float("h", h)
    if h.shape != x.shape:
        raise ValueError(f"h has shape {tuple(h.shape)} but x has shape {tuple(x.shape)}; they must match")
    if h.device != x.device:
        raise ValueError(f"h is on {h.device} but x is on {x.device}; move it with .to()")
    return h


def _compute(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def stats_dtype(x: Tensor, shift: Tensor, scale: Tensor) -> torch.dtype:
    """The dtype of the saved mean and rstd: fp32, or fp64 when an input is fp64."""
    return _compute(x, shift, scale)


@typecheck
def adaln_modulate_reference(
    x: Float[Tensor, "*batch dim"],
    shift: Float[Tensor, "..."],
    scale: Float[Tensor, "..."],
    eps: float = 1e-6,
) -> Float[Tensor, "*batch dim"]:
    """``LayerNorm(x) * (1 + scale) + shift`` (LayerNorm without affine, fp32 statistics)."""
    x = check_float("x", x)
    shift = as_broadcast("shift", shift, x)
    scale = as_broadcast("scale", scale, x)
    check_eps(eps)
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
    gate = as_broadcast("gate", gate, x)
    h = check_h(h, x)
    compute = _compute(x, gate, h)
    out = x.to(compute) + gate.to(compute) * h.to(compute)
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# backend form: x [*batch, dim]; shift/scale/gate already broadcast to x by torch's rules (at most
# x.ndim dimensions, see as_broadcast); gradients come back in each input's own shape and dtype


def _sum_to(t: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``t`` summed over the dimensions a tensor of ``shape`` is broadcast along, as a new tensor."""
    padded = (1,) * (t.ndim - len(shape)) + tuple(shape)
    out = t.sum_to_size(padded).reshape(shape)
    return out.to(dtype, copy=padded == tuple(t.shape))  # never hand back (a view of) t itself


def adaln_modulate_forward_reference(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)``: y in x's dtype; mean and rstd ``[*batch]`` in ``stats_dtype``."""
    compute = stats_dtype(x, shift, scale)
    xf = x.to(compute)
    normed, mean, rstd = torch.native_layer_norm(xf, xf.shape[-1:], None, None, float(eps))
    y = normed * (1 + scale.to(compute)) + shift.to(compute)
    return y.to(x.dtype), mean.squeeze(-1), rstd.squeeze(-1)


def adaln_modulate_backward_reference(
    dy: Tensor,
    x: Tensor,
    scale: Tensor,
    mean: Tensor,
    rstd: Tensor,
    shift_shape: tuple[int, ...],
    shift_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dshift, dscale)``, analytically; ``shift`` is needed only for its shape and dtype."""
    compute = mean.dtype
    xf, dyf = x.to(compute), dy.to(compute)
    m, r = mean.unsqueeze(-1), rstd.unsqueeze(-1)
    xhat = (xf - m) * r
    w = dyf * (1 + scale.to(compute))
    dx = r * (w - w.mean(-1, keepdim=True) - xhat * (w * xhat).mean(-1, keepdim=True))
    dshift = _sum_to(dyf, tuple(shift_shape), shift_dtype)
    dscale = _sum_to(dyf * xhat, tuple(scale.shape), scale.dtype)
    return dx.to(x.dtype), dshift, dscale


def gated_residual_forward_reference(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``x + gate * h`` in fp32 math, in x's dtype."""
    compute = _compute(x, gate, h)
    return (x.to(compute) + gate.to(compute) * h.to(compute)).to(x.dtype)


def gated_residual_backward_reference(dy: Tensor, gate: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(dgate, dh)``; the gradient of x is ``dy`` itself (the caller passes it on)."""
    compute = _compute(dy, gate, h)
    dyf = dy.to(compute)
    dgate = _sum_to(dyf * h.to(compute), tuple(gate.shape), gate.dtype)
    dh = (dyf * gate.to(compute)).to(h.dtype)
    return dgate, dh


ADALN_MODULATE_KERNELS = {
    "forward": adaln_modulate_forward_reference,
    "backward": adaln_modulate_backward_reference,
}
GATED_RESIDUAL_KERNELS = {
    "forward": gated_residual_forward_reference,
    "backward": gated_residual_backward_reference,
}
