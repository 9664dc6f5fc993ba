"""Rotary position embedding: ``apply_rope`` and ``rope_cos_sin``.

For now both are the pure-PyTorch reference (``nxkernels.rope.reference``: rotate-half convention,
fp32 math, result in the input dtype). A later issue adds fused backends (Triton, in place on
q and k) and a dispatcher behind this same signature; callers need not change.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from nxkernels.rope.reference import apply_rope_reference, rope_cos_sin, rotate_half
from nxkernels.typecheck import typecheck

__all__ = ["apply_rope", "apply_rope_reference", "rope_cos_sin", "rotate_half"]


@typecheck
def apply_rope(
    x: Float[Tensor, "*batch seq head_dim"],
    cos: Float[Tensor, "seq head_dim"],
    sin: Float[Tensor, "seq head_dim"],
) -> Float[Tensor, "*batch seq head_dim"]:
    """Rotate queries or keys ``x`` by ``cos``/``sin`` from ``rope_cos_sin``; same shape and dtype.

    Today this is ``apply_rope_reference``; backend dispatch arrives with the fused kernels.
    """
    return apply_rope_reference(x, cos, sin)
