"""The ``PositionalEncoder`` family: where a token is, told to the model.

Two kinds, both computed from a ``SequenceLayout`` (shape legend in ``nxcore.typing``):

- ``RotaryPositionalEncoder``: float positions per token (``axes`` coordinates each), applied by
  rotating query/key pairs inside attention. Scores then depend only on position differences.
  References: ``RoPE1D`` (rotate-half, theta configurable) and ``MultiscaleRoPE3D`` (NextFlow Eq. 1).
  An encoder may also offer ``rotation(positions)``: a callable equal to ``apply(., positions)``,
  prepared for many eager calls without gradients (``nxcore.nn.forward_layers`` uses it for every
  layer of a stack).
- ``AdditivePositionalEncoder``: an ``nn.Module`` giving one [seq, dim] vector per token that is
  added to the input embeddings. Text tokens get zeros unless the encoder says otherwise.
  References: ``LearnedScaleEmbedding``, ``ScaleLengthEmbedding`` (sinusoidal over the number of
  scales), ``LearnedAbsolutePosition`` (VAR's ``pos_1LC`` + ``lvl_embed``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from nxcore.layout import SequenceLayout
from nxcore.typing import Float


@runtime_checkable
class RotaryPositionalEncoder(Protocol):
    head_dim: int
    num_axes: int

    def positions(self, layout: SequenceLayout) -> Float[Tensor, "seq axes"]:
        """Float coordinates of every token of ``layout`` (fractional positions allowed)."""
        ...

    def apply(
        self, x: Float[Tensor, "*batch seq head_dim"], positions: Float[Tensor, "seq axes"]
    ) -> Float[Tensor, "*batch seq head_dim"]:
        """Rotate ``x`` (queries or keys) to ``positions``; same shape and dtype as ``x``."""
        ...


@runtime_checkable
class AdditivePositionalEncoder(Protocol):
    dim: int

    def __call__(self, layout: SequenceLayout) -> Float[Tensor, "seq dim"]:
        """One vector per token of ``layout``, to add to the token embeddings."""
        ...


PositionalEncoder = RotaryPositionalEncoder | AdditivePositionalEncoder
