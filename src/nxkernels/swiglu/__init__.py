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

from nxkernels.swiglu.reference import swiglu_reference
from nxkernels.typecheck import typecheck

__all__ = ["ATOL", "RTOL", "swiglu", "swiglu_reference", "swiglu_triton"]

# Both sides compute in fp32 and round once to the output dtype, so they differ by about one unit
# in the last place of that dtype (fp32 gradients: a few ulps from the different operation order).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@typecheck
def swiglu(
    gate: Float[Tensor, "*batch hidden"], up: Float[Tensor, "*batch hidden"]
) -> Float[Tensor, "*batch hidden"]:
    """``silu(gate) * up`` in the inputs' dtype (fp32 math). Today this is ``swiglu_reference``."""
    return swiglu_reference(gate, up)


def swiglu_triton(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` with the Triton forward and backward kernels (``SwiGLUTriton``)."""
    from nxkernels.swiglu.triton import swiglu_triton as _impl

    return _impl(gate, up)
