"""SwiGLU, the reference: ``silu(gate) * up`` in plain torch with fp32 math (fp64 for fp64 input),
result in the input dtype. ``swiglu_reference`` (plain autograd) is the oracle for every backend;
``KERNELS`` is the same math as the reference backend of the custom op: a forward and an analytic
backward, neither recorded by autograd.

    y  = silu(g) * u,   silu(g) = g * s,  s = sigmoid(g)
    du = dy * silu(g)
    dg = dy * u * s * (1 + g * (1 - s))

Shape legend:
    batch   any leading dimensions (batch, tokens, ...), possibly none
    hidden  the MLP's intermediate width (18944 for Qwen2.5-VL-7B, 13824 for NextStep-1)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.typecheck import typecheck

__all__ = [
    "KERNELS",
    "check_swiglu_inputs",
    "swiglu_backward_reference",
    "swiglu_forward_reference",
    "swiglu_reference",
]


def check_swiglu_inputs(gate: object, up: object) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when ``gate``/``up`` cannot be used."""
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must have a floating-point dtype, got {t.dtype}; convert it with .float()"
            )
    assert isinstance(gate, Tensor) and isinstance(up, Tensor)
    if gate.ndim < 1:
        raise ValueError("gate must have at least one dimension ([*batch, hidden]), got a 0-d tensor")
    if gate.shape != up.shape:
        raise ValueError(
            f"gate has shape {tuple(gate.shape)} but up has shape {tuple(up.shape)}; they must match "
            "(split the fused gate_up projection with .chunk(2, dim=-1))"
        )
    if gate.dtype != up.dtype:
        raise TypeError(
            f"gate has dtype {gate.dtype} but up has dtype {up.dtype}; cast one with .to(other.dtype)"
        )
    if gate.device != up.device:
        raise ValueError(f"gate is on {gate.device} but up is on {up.device}; move one with .to()")


_NATIVE = (torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@typecheck
def swiglu_reference(
    gate: Float[Tensor, "*batch hidden"], up: Float[Tensor, "*batch hidden"]
) -> Float[Tensor, "*batch hidden"]:
    """``silu(gate) * up``, computed in fp32 (fp64 for fp64), returned in the inputs' dtype."""
    check_swiglu_inputs(gate, up)
    compute = _compute_dtype(gate.dtype)
    out = torch.nn.functional.silu(gate.to(compute)) * up.to(compute)
    return out.to(gate.dtype)


def swiglu_forward_reference(gate: Tensor, up: Tensor) -> Tensor:
    """Backend form (any shape, ``gate.shape == up.shape``): ``silu(gate) * up`` in gate's dtype."""
    if gate.dtype in _NATIVE:  # the math dtype already: no casts
        return torch.nn.functional.silu(gate) * up
    compute = _compute_dtype(gate.dtype)
    return (torch.nn.functional.silu(gate.to(compute)) * up.to(compute)).to(gate.dtype)


def swiglu_backward_reference(dy: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``silu(gate) * up`` w.r.t. ``gate`` and ``up``, analytically (fp32 math)."""
    compute = _compute_dtype(gate.dtype)
    g, u, dyf = gate.to(compute), up.to(compute), dy.to(compute)
    du = dyf * torch.nn.functional.silu(g)
    dg = torch.ops.aten.silu_backward(dyf * u, g)  # the formula above in one fused pass
    return dg.to(gate.dtype), du.to(up.dtype)


KERNELS = {"forward": swiglu_forward_reference, "backward": swiglu_backward_reference}
