"""The shape vocabulary of nx: dimension names, tensor aliases and the ``typecheck`` switch.

Dimension legend (the names used in every jaxtyping annotation of the three packages):

    batch       independent sequences or images
    seq         tokens of one sequence (text and image tokens together)
    tokens      a flat set of token rows (``batch * seq`` after selection)
    dim         model width (hidden size)
    heads       attention query heads;  kv_heads: key/value heads (GQA)
    head_dim    width of one attention head
    axes        coordinates per rotary position (1 for 1D RoPE, 3 for multiscale 3D RoPE)
    vocab       output classes of a head (unified text + visual codes + specials)
    scale       steps of a scale schedule (coarse to fine)
    h, w        a token grid (rows, columns) of one scale
    height, width   image pixels
    channels    image or latent channels
    code_dim    width of one codebook vector
    codes       codewords of a codebook (K);  sem_dim, pix_dim: the two halves of a dual codebook
    topk        candidates kept per row (nearest codewords, sampled tokens)
    latent_dim  width of one continuous image token (NextStep-1: 64)

Checking: ``typecheck`` wraps a function with jaxtyping + beartype when the environment variable
``NX_TYPECHECK`` is ``1``/``true``/``on`` at import time, and returns the function untouched when it is
unset, ``0``, ``false`` or ``off`` (zero cost). Any other value is an error. The test suite turns it
on. A checked function runs unchecked while ``torch.compile`` traces it. When a check fails and the
function validates its arguments itself, its own (clearer) ``ValueError``/``TypeError`` is raised,
chained to the shape error.
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from nxkernels.typecheck import typecheck, typecheck_enabled

__all__ = [
    "Bool",
    "Float",
    "Int",
    "Shaped",
    "Tensor",
    "Scalar",
    "Logits",
    "Hidden",
    "TokenIds",
    "Images",
    "typecheck",
    "typecheck_enabled",
]

Scalar = Float[Tensor, ""]
Logits = Float[Tensor, "*batch vocab"]
Hidden = Float[Tensor, "tokens dim"]
TokenIds = Int[Tensor, " *batch"]
Images = Float[Tensor, "batch channels height width"]
