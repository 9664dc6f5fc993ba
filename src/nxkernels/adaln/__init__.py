"""AdaLN: ``adaln_modulate(x, shift, scale)`` = LayerNorm(x, no affine) * (1 + scale) + shift, and
``gated_residual(x, gate, h)`` = x + gate * h — the inner loop of NextStep-1's flow head and of
AdaLN blocks. ``shift``/``scale``/``gate`` broadcast over the token dimension ([B, D] or [B, T, D]
against x [B, T, D]).

The public functions are the pure-PyTorch reference for now (``nxkernels.adaln.reference``); the
dispatcher puts the Triton backend (``adaln_modulate_triton``, ``gated_residual_triton``: fused
forward and backward) behind these same signatures. The ``*_triton`` functions import triton only
when first called. ``ATOL``/``RTOL`` are the per-dtype tolerances of the Triton backend against the
reference, read by the parity tests.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.adaln.reference import adaln_modulate_reference, gated_residual_reference
from nxkernels.typecheck import typecheck

__all__ = [
    "ATOL",
    "RTOL",
    "adaln_modulate",
    "adaln_modulate_reference",
    "adaln_modulate_triton",
    "gated_residual",
    "gated_residual_reference",
    "gated_residual_triton",
]

# Both sides use fp32 statistics and round once to the output dtype, so outputs differ by about
# one ulp of that dtype; gradients of broadcast shift/scale/gate sum many rows in fp32 in a
# different order, hence the larger fp32 atol.
ATOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


@typecheck
def adaln_modulate(
    x: Float[Tensor, "*batch dim"], shift: Float[Tensor, "..."], scale: Float[Tensor, "..."],
    eps: float = 1e-6,
) -> Float[Tensor, "*batch dim"]:
    """LayerNorm(x) (no affine, fp32 statistics) * (1 + scale) + shift, in ``x``'s dtype."""
    return adaln_modulate_reference(x, shift, scale, eps)


@typecheck
def gated_residual(
    x: Float[Tensor, "*batch dim"], gate: Float[Tensor, "..."], h: Float[Tensor, "*batch dim"]
) -> Float[Tensor, "*batch dim"]:
    """``x + gate * h`` (fp32 math), in ``x``'s dtype."""
    return gated_residual_reference(x, gate, h)


def adaln_modulate_triton(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """Fused Triton forward and backward of ``adaln_modulate`` (``AdaLNModulateTriton``)."""
    from nxkernels.adaln.triton import adaln_modulate_triton as _impl

    return _impl(x, shift, scale, eps)


def gated_residual_triton(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """Triton forward and backward of ``gated_residual`` (``GatedResidualTriton``)."""
    from nxkernels.adaln.triton import gated_residual_triton as _impl

    return _impl(x, gate, h)
