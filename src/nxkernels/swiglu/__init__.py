"""SwiGLU: ``swiglu(gate, up) = silu(gate) * up``, the gated activation of Qwen2.5 / NextStep-1 MLPs.

``swiglu`` is the pure-PyTorch reference for now (``nxkernels.swiglu.reference``); the dispatcher
puts the Triton backend (``swiglu_triton``, forward and backward kernels) behind this same signature.
``swiglu_triton`` imports triton only when first called. ``ATOL``/``RTOL`` are the per-dtype
tolerances of the Triton backend against the reference, read by the parity tests.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, triton_reasons
from nxkernels.swiglu.reference import check_swiglu_inputs, swiglu_reference
from nxkernels.typecheck import typecheck

__all__ = ["ATOL", "RTOL", "SWIGLU", "swiglu", "swiglu_reference", "swiglu_triton"]

# Both sides compute in fp32 and round once to the output dtype, so they differ by about one unit
# in the last place of that dtype (fp32 gradients: a few ulps from the different operation order).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_ALL = (*_HALF_AND_FLOAT, torch.float64)

# Backends in priority order (nxkernels.dispatch): Triton on CUDA (on CPU only when pinned, under
# TRITON_INTERPRET=1), then the reference.
SWIGLU = Op(
    "swiglu",
    backends=(
        Backend("triton", "nxkernels.swiglu.triton:swiglu_triton", devices=("cuda", "cpu"),
                dtypes=_HALF_AND_FLOAT, atol=ATOL, rtol=RTOL, available=triton_reasons,
                auto_devices=("cuda",), description="fused forward + backward (SwiGLUTriton)"),
        Backend("reference", "nxkernels.swiglu.reference:swiglu_reference",
                devices=("cpu", "cuda", "mps", "xpu"), dtypes=_ALL, atol=dict.fromkeys(_ALL, 0.0),
                rtol=dict.fromkeys(_ALL, 0.0), description="plain torch, fp32 math (the oracle)"),
    ),
    shape_class=lambda gate, up: (gate.shape[-1] if gate.ndim else 0,),
)


@typecheck
def swiglu(
    gate: Float[Tensor, "*batch hidden"],
    up: Float[Tensor, "*batch hidden"],
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch hidden"]:
    """``silu(gate) * up`` in the inputs' dtype (fp32 math); ``backend`` pins a backend."""
    check_swiglu_inputs(gate, up)
    return SWIGLU.select(gate, up, backend=backend).load()(gate, up)


def swiglu_triton(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` with the Triton forward and backward kernels (``SwiGLUTriton``)."""
    from nxkernels.swiglu.triton import swiglu_triton as _impl

    return _impl(gate, up)
