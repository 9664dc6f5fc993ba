"""The ``OutputHead`` contract: hidden states -> training loss, and -> what a ``Sampler`` consumes.

Rows are flat: ``hidden`` is [tokens, dim] (select the positions that carry a prediction first).

- ``DiscreteHead``: ``predict`` returns logits [tokens, vocab]; ``predict_range(hidden, start,
  stop)`` the logits of ids ``start .. stop`` only (equal to ``predict(hidden)[:, start:stop]``,
  without computing the others: image steps need the visual codes, not the whole unified
  vocabulary); ``loss`` takes integer targets [tokens] (``ignore_index`` rows carry no loss).
  Reference: ``LinearHead`` (one shared unified-vocabulary projection), ``SplitHead`` (separate
  text and image projections).
- ``ContinuousHead``: ``predict`` returns a ``VelocityField`` over latents [tokens, latent_dim] that a
  ``LatentSampler`` integrates; ``loss`` takes target latents [tokens, latent_dim]. Reference: the
  NextStep-1 flow-matching MLP-AdaLN head (``nxrecipes.nextstep1``).

Loss contract for every head: a finite scalar; ``weights`` [tokens] (non-negative) scale each row's
loss and the result is the weighted mean sum(w * l) / sum(w) over rows that carry loss; when no
row carries loss the result is 0 and still differentiable (no NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from nxcore.typing import Float, Int

IGNORE_INDEX = -100


@runtime_checkable
class VelocityField(Protocol):
    """v(x, t) for flow matching; t = 0 is noise, t = 1 is data (NextStep-1's convention)."""

    shape: tuple[int, ...]

    def __call__(
        self, x: Float[Tensor, "tokens latent_dim"], t: Float[Tensor, " tokens"]
    ) -> Float[Tensor, "tokens latent_dim"]: ...


@runtime_checkable
class JoinableField(VelocityField, Protocol):
    """A field that can be evaluated together with others of its kind in one call (the CFG branches of
    one head): ``join(others)`` is one field over the rows of ``self`` then each of ``others``."""

    def join(self, others: Sequence[VelocityField]) -> VelocityField: ...


@runtime_checkable
class OutputHead(Protocol):
    dim: int

    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Tensor,
        weights: Float[Tensor, " tokens"] | None = None,
    ) -> Float[Tensor, ""]: ...

    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> object: ...


@runtime_checkable
class DiscreteHead(OutputHead, Protocol):
    vocab_size: int

    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Int[Tensor, " tokens"],
        weights: Float[Tensor, " tokens"] | None = None,
    ) -> Float[Tensor, ""]: ...

    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> Float[Tensor, "tokens vocab"]: ...

    def predict_range(
        self, hidden: Float[Tensor, "tokens dim"], start: int, stop: int
    ) -> Float[Tensor, "tokens ids"]:
        """Logits of ids ``start .. stop``. This default slices ``predict``; heads that subclass
        ``DiscreteHead`` override it to compute only those ids."""
        return self.predict(hidden)[:, start:stop]


@runtime_checkable
class ContinuousHead(OutputHead, Protocol):
    latent_dim: int

    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Float[Tensor, "tokens latent_dim"],
        weights: Float[Tensor, " tokens"] | None = None,
    ) -> Float[Tensor, ""]: ...

    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> VelocityField: ...
