"""``CategoricalSampler``: logits -> token ids with CFG, temperature, top-k and top-p.

Order of operations (all in float32): classifier-free guidance on the raw logits, then
temperature, then top-k, then top-p, then ``torch.multinomial`` with the caller's generator.
``log_probs`` returns the final distribution, so likelihoods of sampled tokens are available to the
caller (e.g. for RL fine-tuning).

Ties. ``top_k_filter`` keeps exactly ``k`` candidates: tokens are ranked by a stable descending
sort, so among logits tied at the k-th place the lower token ids are kept. ``top_p_filter`` ranks
the same way and keeps the smallest prefix of that ranking whose probability mass is >= p. (VAR
keeps every logit tied with the k-th largest instead; that can keep more than k.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor

from nxcore.checks import check_finite, check_same_device, check_tensor
from nxcore.config import finite_number, integer
from nxcore.sampler._checks import check_uncond_sequence, is_callable
from nxcore.sampler.guidance import (
    ConstantGuidance,
    VARLinearRamp,
    as_guidance,
    guidance_weight,
    mix_guidance,
)
from nxcore.sampler.protocol import TokenSampler
from nxcore.typing import Float, Int, typecheck

__all__ = ["CategoricalSampler", "top_k_filter", "top_p_filter"]

_NEG_INF = float("-inf")


def _check_logits(name: str, logits: object, *, label: str) -> Tensor:
    logits = check_tensor(name, logits, kind="float")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{name} must be [*batch, vocab] with vocab >= 1, got shape {tuple(logits.shape)}"
        )
    check_finite(label, logits)
    return logits


@typecheck
def top_k_filter(logits: Float[Tensor, "*batch vocab"], k: int) -> Float[Tensor, "*batch vocab"]:
    """Keep exactly the ``k`` highest logits of each row, set the rest to ``-inf``.

    Ties at the k-th place go to the lower token id (stable descending sort). ``k >= vocab`` keeps
    every token. Logits that are already ``-inf`` stay ``-inf`` even when among the k kept.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k = {k!r} must be an int >= 1; to turn top-k off, skip the filter")
    _check_logits("logits", logits, label="logits")
    if k >= logits.shape[-1]:
        return logits.clone()
    keep = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    out = torch.full_like(logits, _NEG_INF)
    return out.scatter(-1, keep, logits.gather(-1, keep))


@typecheck
def top_p_filter(logits: Float[Tensor, "*batch vocab"], p: float) -> Float[Tensor, "*batch vocab"]:
    """Nucleus filter: keep the smallest prefix of the probability-ranked tokens whose mass is >= p.

    Ranking is a stable descending sort of the logits (ties go to the lower token id); the
    cumulative mass is computed in float64. ``p = 1`` keeps every token. Each row keeps at least its
    top token.
    """
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0 < p <= 1:
        raise ValueError(f"p = {p!r} must be a number in (0, 1]; use 1 to keep every token")
    _check_logits("logits", logits, label="logits")
    if p >= 1:
        return logits.clone()
    ranked, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(ranked.double(), dim=-1)
    cumulative = torch.cumsum(probs, dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], dim=-1)
    keep_ranked = mass_before < p
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    return logits.masked_fill(~keep, _NEG_INF)


@attrs.frozen(kw_only=True)
class CategoricalSampler(TokenSampler):
    """Multinomial sampling from guided, tempered, top-k / top-p filtered logits.

    Fields: ``temperature`` (> 0; small values approach argmax), ``top_k`` (0 = off, else the number
    of candidates kept), ``top_p`` (in (0, 1]; 1 = off), ``guidance`` (a schedule
    ``(step, num_steps) -> w``, a number, or any such callable; default ``ConstantGuidance(1.0)``,
    i.e. no guidance). ``uncond`` holds at most one unconditional logits tensor; CFG is
    ``uncond + w * (cond - uncond)`` on the raw logits (see ``mix_guidance``).
    """

    temperature: float = attrs.field(default=1.0, validator=finite_number(above=0))
    top_k: int = attrs.field(default=0, validator=integer(at_least=0))
    top_p: float = attrs.field(default=1.0, validator=finite_number(above=0, at_most=1))
    guidance: Callable[[int, int], float] = attrs.field(
        default=ConstantGuidance(1.0), converter=as_guidance, validator=is_callable
    )

    @classmethod
    def examples(cls) -> list[CategoricalSampler]:
        return [
            cls(),
            cls(temperature=0.7, top_k=5, top_p=0.9, guidance=ConstantGuidance(3.0)),
            cls(temperature=1.3, top_p=0.6, guidance=VARLinearRamp(1.5)),
        ]

    @typecheck
    def log_probs(
        self,
        cond: Float[Tensor, "*batch vocab"],
        uncond: Sequence[Tensor] = (),
        *,
        step: int = 0,
        num_steps: int = 1,
    ) -> Float[Tensor, "*batch vocab"]:
        """Float32 log-probabilities of the distribution ``sample`` draws from (-inf = excluded)."""
        _check_logits("cond", cond, label="cond logits")
        unconds = check_uncond_sequence(uncond, most=1, what="logits tensors")
        w = guidance_weight(self.guidance, step, num_steps)
        logits = cond.float()
        for u in unconds:
            _check_logits("uncond[0]", u, label="uncond[0] logits")
            check_same_device(cond=cond, uncond=u)
            if u.shape != cond.shape:
                raise ValueError(
                    f"uncond[0] has shape {tuple(u.shape)} but cond has {tuple(cond.shape)}; "
                    "pass unconditional logits of the same shape"
                )
            logits = mix_guidance(logits, u, w)
        row_max = logits.amax(dim=-1, keepdim=True)
        if torch.isneginf(row_max).any():
            raise ValueError(
                "a row of the (guided) logits is -inf everywhere, so no token can be sampled; "
                "leave at least one token unmasked in cond (and in uncond, when guiding)"
            )
        logits = (logits - row_max) / self.temperature
        if self.top_k:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p < 1:
            logits = top_p_filter(logits, float(self.top_p))
        return torch.log_softmax(logits, dim=-1)

    @typecheck
    def sample(
        self,
        cond: Float[Tensor, "*batch vocab"],
        uncond: Sequence[Tensor] = (),
        *,
        step: int = 0,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, " *batch"]:
        """Token ids [*batch] (int64), one draw per row of ``cond``."""
        log_p = self.log_probs(cond, uncond, step=step, num_steps=num_steps)
        batch, vocab = log_p.shape[:-1], log_p.shape[-1]
        rows = log_p.reshape(-1, vocab)
        if rows.shape[0] == 0:
            return torch.empty(batch, dtype=torch.int64, device=cond.device)
        ids = torch.multinomial(rows.exp(), 1, generator=generator)
        return ids.reshape(batch)
