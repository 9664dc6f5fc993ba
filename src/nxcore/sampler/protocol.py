"""The ``Sampler`` family: turns a head's prediction into tokens, with classifier-free guidance.

- ``TokenSampler``: logits [*batch, vocab] -> token ids [*batch] (int64). ``uncond`` holds at most
  one unconditional logits tensor of the same shape; guidance is mixed on logits before
  temperature / top-k / top-p. Reference: ``CategoricalSampler``.
- ``LatentSampler``: a ``VelocityField`` -> latents of ``field.shape`` by integrating from noise
  (t = 0) to data (t = 1). ``uncond`` holds 0, 1 (2-way CFG) or 2 (3-way image+text CFG)
  unconditional fields. Reference: ``FlowSampler``.

``step`` / ``num_steps`` say where in the generation this call sits (the scale index of next-scale
prediction, or the token index of NextStep-1) so guidance can follow a schedule. Samplers are
deterministic given ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from nxcore.head.protocol import VelocityField
from nxcore.typing import Float, Int


@runtime_checkable
class TokenSampler(Protocol):
    def sample(
        self,
        cond: Float[Tensor, "*batch vocab"],
        uncond: Sequence[Float[Tensor, "*batch vocab"]] = (),
        *,
        step: int = 0,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, " *batch"]: ...


@runtime_checkable
class LatentSampler(Protocol):
    def sample(
        self,
        cond: VelocityField,
        uncond: Sequence[VelocityField] = (),
        *,
        step: int = 0,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "tokens latent_dim"]: ...


Sampler = TokenSampler | LatentSampler
