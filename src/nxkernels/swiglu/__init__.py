"""SwiGLU: ``swiglu(gate, up) = silu(gate) * up``, the gated activation of Qwen2.5 / NextStep-1 MLPs.

    y = swiglu(gate, up)        # [*batch, hidden], [*batch, hidden] -> [*batch, hidden]

Backends, in priority order: ``triton`` (CUDA tensors; CPU tensors only when pinned, under
``TRITON_INTERPRET=1``), ``reference`` (plain torch, fp32 math; see ``reference.py``). The choice
follows ``nxkernels.dispatch`` (``backend=``, ``use_backend``, ``NX_KERNELS``). The op is the
``torch.library`` custom op ``nxkernels::swiglu_fwd`` (with ``nxkernels::swiglu_bwd`` for its
backward), so it traces under ``torch.compile`` and passes ``torch.library.opcheck``. Backends take
tensors of any strides; the ops return contiguous tensors.

Shape legend:
    batch   any leading dimensions (batch, tokens, ...), possibly none
    hidden  the MLP's intermediate width
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, eager_inference, triton_reasons
from nxkernels.swiglu.reference import check_swiglu_inputs, swiglu_reference
from nxkernels.typecheck import typecheck

__all__ = ["SWIGLU", "swiglu", "swiglu_inference_kernel", "swiglu_reference"]

_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_ALL = (*_HALF_AND_FLOAT, torch.float64)

SWIGLU = Op(
    "swiglu",
    backends=(
        Backend(
            "triton",
            "nxkernels.swiglu.triton:KERNELS",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            # Both sides compute in fp32 and round once to the output dtype: about one ulp of that
            # dtype apart (fp32: a few ulps from the different operation order).
            atol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2},
            rtol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2},
            available=triton_reasons,
            auto_devices=("cuda",),
            description="fused forward + backward (the backward recomputes the sigmoid)",
        ),
        Backend(
            "reference",
            "nxkernels.swiglu.reference:KERNELS",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=_ALL,
            atol=dict.fromkeys(_ALL, 0.0),
            rtol=dict.fromkeys(_ALL, 0.0),
            description="plain torch, fp32 math (the oracle)",
        ),
    ),
    shape_class=lambda gate, up: (gate.shape[-1] if gate.ndim else 0,),
)


def _kernels(backend: str) -> dict:
    return SWIGLU.backend(backend).load()


def _swiglu_forward(gate: Tensor, up: Tensor, backend: str) -> Tensor:
    return _kernels(backend)["forward"](gate, up).contiguous()


_swiglu_fwd = torch.library.custom_op("nxkernels::swiglu_fwd", mutates_args=())(_swiglu_forward)


@_swiglu_fwd.register_fake
def _(gate, up, backend):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("nxkernels::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dy: Tensor, gate: Tensor, up: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    dg, du = _kernels(backend)["backward"](dy, gate, up)
    return dg.contiguous(), du.contiguous()


@_swiglu_bwd.register_fake
def _(dy, gate, up, backend):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup_context(ctx, inputs, output):
    gate, up, backend = inputs
    ctx.save_for_backward(gate, up)
    ctx.backend = backend


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    dg, du = torch.ops.nxkernels.swiglu_bwd(dy, gate, up, ctx.backend)
    return dg, du, None


_swiglu_fwd.register_autograd(_backward, setup_context=_setup_context)


@typecheck
def swiglu(
    gate: Float[Tensor, "*batch hidden"],
    up: Float[Tensor, "*batch hidden"],
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch hidden"]:
    """``silu(gate) * up`` in the inputs' dtype (fp32 math), differentiable in both.

    ``backend`` pins a backend (``"triton"``, ``"reference"``); a pinned backend that cannot run
    raises ValueError with its reasons.
    """
    check_swiglu_inputs(gate, up)
    chosen = SWIGLU.select(gate, up, backend=backend)
    if eager_inference(gate, up):
        return _inference_kernel(chosen)(gate, up)
    return torch.ops.nxkernels.swiglu_fwd(gate, up, chosen.name)


def swiglu_inference_kernel(gate: Tensor, up: Tensor, *, backend: str | None = None) -> Callable[
    [Tensor, Tensor], Tensor
]:
    """The kernel ``swiglu`` runs for an eager call without gradients, chosen for these arguments:
    ``kernel(gate, up) -> silu(gate) * up`` (contiguous). No validation and no dispatch per call: for
    callers that checked their arguments and call it many times (``nxcore.nn.forward_layers``)."""
    check_swiglu_inputs(gate, up)
    return _inference_kernel(SWIGLU.select(gate, up, backend=backend))


def _inference_kernel(chosen: Backend) -> Callable[[Tensor, Tensor], Tensor]:
    kernel = _KERNELS.get(chosen.name)
    if kernel is None:
        forward = chosen.load()["forward"]

        def kernel(gate: Tensor, up: Tensor) -> Tensor:
            return forward(gate, up).contiguous()

        _KERNELS[chosen.name] = kernel
    return kernel


_KERNELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
