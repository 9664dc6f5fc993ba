"""Dead-code restarts for a residual quantizer's codebooks (the Jukebox / SoundStream trick).

Shapes:
    codes       codebook rows (one index space shared by every stream)
    rows        residual rows searched in one training forward, all steps together
    dim         width of one stream's codewords

A code that no cell picked over ``every`` training forwards is dead: it gets no gradient and never
will. ``CodeRestarts`` counts picks and, when due, moves each dead code onto a residual row of the
last forward, drawn with probability proportional to the row's distance to its codeword (k-means++
seeding: new codes go where the codebook fits worst). Rows are drawn without replacement; every
stream's codeword of a restarted index gets the same row's residual, so the halves stay paired. A
stream left out of the search (weight 0) must be left out of the restart too (``None``): its
residuals are not kept small by the search, and seeding codewords from them feeds back (a semantic
codeword copied from a large semantic residual makes the next residuals larger still).

Without restarts, Euclidean search from a random codebook keeps a handful of codes (the encoder's
features move away from the random codewords and the nearest few win every search); with them
every code stays in use, and small residuals (flat regions, fine scales) find a small codeword
instead of a random direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nxcore.tokenizer.multiscale.quantizer import ResidualQuantization

__all__ = ["CodeRestarts"]


class CodeRestarts(nn.Module):
    """Pick counts of ``codebook_size`` codes and the restart step, ``every`` training forwards.

    Use: ``restarts.step(codebooks)`` at the start of a training forward (reseeds dead codes from the
    rows ``observe`` kept, once ``every`` forwards have been observed since the last restart), then
    ``restarts.observe(q)`` with the forward's ``ResidualQuantization``. The counts are buffers (not
    saved: a resumed run restarts its count)."""

    def __init__(self, codebook_size: int, every: int) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1 (training forwards between restarts), got {every!r}")
        self.every = every
        self.register_buffer("hits", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        self.seen = 0
        self.restarted = 0
        self._residuals: tuple[tuple[Tensor, ...], ...] = ()  # the last forward's, detached
        self._distances: tuple[Tensor, ...] = ()

    @torch.no_grad()
    def observe(self, q: ResidualQuantization) -> None:
        """Count the codes of ``q`` and keep its residual rows and distances for the next restart
        (joined only then, not on every forward; the rest of ``q`` is not held)."""
        for codes in q.codes:
            self.hits += torch.bincount(codes.reshape(-1), minlength=self.hits.numel())
        if q.residuals:
            self._residuals, self._distances = q.residuals, q.distances
        self.seen += 1

    @torch.no_grad()
    def step(self, codebooks: Sequence[Tensor | None], generator: torch.Generator | None = None) -> int:
        """Reseed the dead codes of ``codebooks`` (one [codes, dim] weight per stream, in the order of
        the residuals' streams; None leaves a stream's codewords alone) if a restart is due; returns
        how many codes moved (0 if not due)."""
        if self.seen < self.every or not self._residuals:
            return 0
        rows = tuple(torch.cat(parts) for parts in zip(*self._residuals, strict=True))
        weights = torch.cat(self._distances).clamp_min(0)
        dead = (self.hits == 0).nonzero().reshape(-1)
        moved = reseed(codebooks, dead, rows, weights, generator)
        self.hits.zero_()
        self.seen = 0
        self.restarted += moved
        return moved


@torch.no_grad()
def reseed(codebooks: Sequence[Tensor | None], dead: Tensor, rows: Sequence[Tensor], weights: Tensor,
           generator: torch.Generator | None = None) -> int:
    """Copy rows drawn ∝ ``weights`` (without replacement) into the ``dead`` indices of every codebook
    (None: that stream is skipped);
    returns the number reseeded (at most the number of rows, and of rows with a positive weight
    unless all weights are 0, when rows are drawn uniformly)."""
    if len(codebooks) != len(rows):
        raise ValueError(
            f"got {len(codebooks)} codebooks but rows of {len(rows)} streams; pass one codebook per stream"
        )
    n = min(int(dead.numel()), int(weights.numel()))
    if n == 0:
        return 0
    p = weights.float()
    positive = int((p > 0).sum())
    if positive == 0:
        p = torch.ones_like(p)
    else:
        n = min(n, positive)
    picked = torch.multinomial(p, n, replacement=False, generator=generator)
    for book, r in zip(codebooks, rows, strict=True):
        if book is not None:
            book[dead[:n]] = r[picked].to(book.dtype)
    return n
