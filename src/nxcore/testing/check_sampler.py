"""Conformance checks for ``TokenSampler`` and ``LatentSampler`` implementations.

    from nxcore.testing.check_sampler import check_latent_sampler, check_token_sampler
    def test_my_sampler():
        check_token_sampler(MySampler(temperature=0.8))

Each check raises ``AssertionError`` naming the violated property. Only properties that every
correct sampler has, whatever its algorithm, are checked:

- it is an instance of the protocol (structurally);
- output form: ids are int64 of shape ``*batch`` with values in [0, vocab) (for ``*batch`` of
  rank 0, 1 and 2); latents are a finite float tensor of ``field.shape``;
- it never modifies its inputs in place (token samplers);
- determinism: the same ``generator`` seed gives the same output, even when the global RNG is in a
  different state between the two calls (this catches a sampler that ignores ``generator``; the
  global RNG is restored afterwards). A deterministic sampler (argmax) passes;
- CFG of identical branches is the identity: ``uncond = (cond,)`` (and ``(cond, cond)`` for latent
  samplers, whose protocol allows 3-way CFG) gives the result of ``uncond = ()`` under the same
  seed, at the last step of a multi-step generation so that ramped schedules give ``w != 1``. Any
  affine mixing ``a cond + b uncond`` with ``a + b = 1`` passes; forgetting a term does not. Ids
  must be equal; latents must agree within 1e-4, since mixings written as ``(1 + w) c - w u`` are
  the identity only up to rounding;
- a token sampler never picks a token whose logit is ``-inf`` (tested without uncond: how -inf in
  an unconditional branch is mixed is a design choice left to the implementation);
- the determinism and CFG checks of latent samplers use the field ``v = -x``, whose flow keeps
  the imprint of the starting noise;
- a latent sampler calls the field with ``x`` of ``field.shape`` and ``t`` of shape ``[tokens]``
  in [0, 1], and at least once; on ``v = (x1 - x) / (1 - t)`` (the exact velocity toward the
  single point ``x1``) it ends near ``x1``: RMS distance <= 0.5 while the noise starts about 3.2
  away. The field divides by ``max(1 - t, 1e-4)``. Pass ``reaches_data=False`` for a sampler that
  by design stops short of t = 1 (e.g. ``FlowSampler(timesteps="nextstep1", shift != 1)``, whose
  ``final_time < 1``).

Not checked, because correct samplers differ: that different seeds give different outputs (argmax
is correct), the sampled distribution (temperature / top-k / top-p change it), how many times the
field is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nxcore.sampler.protocol import LatentSampler, TokenSampler

__all__ = ["check_latent_sampler", "check_token_sampler"]

_ENDPOINT_RMS = 0.5
_CFG_ATOL = 1e-4


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_seed_twice(call: Callable[[torch.Generator], Any], seed: int) -> tuple[Any, Any]:
    """Run ``call`` twice with a fresh generator seeded ``seed``, the global RNG differing between."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1_234_567)
        first = call(_generator(seed))
        torch.manual_seed(7_654_321)
        second = call(_generator(seed))
    return first, second


# --- token samplers ---------------------------------------------------------------------------

def _check_ids(ids: object, batch: tuple[int, ...], vocab: int, what: str) -> Tensor:
    if not isinstance(ids, Tensor):
        raise AssertionError(f"{what}: sample must return a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise AssertionError(f"{what}: token ids must be int64, got {ids.dtype}")
    if tuple(ids.shape) != batch:
        raise AssertionError(
            f"{what}: logits of shape {(*batch, vocab)} must give ids of shape {batch}, got "
            f"{tuple(ids.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise AssertionError(
            f"{what}: ids must lie in [0, {vocab}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


def check_token_sampler(sampler: TokenSampler, *, vocab_size: int = 13, seed: int = 0) -> None:
    """Check the ``TokenSampler`` contract; raises ``AssertionError`` on a violation."""
    name = type(sampler).__name__
    if not isinstance(sampler, TokenSampler):
        raise AssertionError(f"{name} does not implement TokenSampler (a sample(cond, ...) method)")
    data = _generator(seed + 1)

    for batch in [(), (5,), (2, 3)]:
        logits = 2.0 * torch.randn(*batch, vocab_size, generator=data)
        before = logits.clone()
        ids = sampler.sample(logits, generator=_generator(seed))
        _check_ids(ids, batch, vocab_size, f"{name} on logits {tuple(logits.shape)}")
        if not torch.equal(logits, before):
            raise AssertionError(f"{name}.sample modified its cond logits in place")

    logits = 2.0 * torch.randn(64, vocab_size, generator=data)
    first, second = _same_seed_twice(lambda g: sampler.sample(logits, generator=g), seed)
    if not torch.equal(first, second):
        raise AssertionError(
            f"{name}: two calls with generators seeded {seed} gave different ids; the sampler must "
            "draw all its randomness from `generator`, not from the global RNG"
        )

    where = {"step": 2, "num_steps": 3}
    plain = sampler.sample(logits, **where, generator=_generator(seed))
    uncond = logits.clone()
    guided = sampler.sample(logits, [uncond], **where, generator=_generator(seed))
    _check_ids(guided, (64,), vocab_size, f"{name} with uncond")
    if not torch.equal(uncond, logits):
        raise AssertionError(f"{name}.sample modified its uncond logits in place")
    if not torch.equal(plain, guided):
        raise AssertionError(
            f"{name}: with uncond equal to cond the ids differ from sampling cond alone "
            f"({int((plain != guided).sum())} of 64 rows); CFG of identical branches must be the "
            "identity, e.g. uncond + w * (cond - uncond)"
        )

    for trial in range(3):
        logits = 2.0 * torch.randn(256, vocab_size, generator=data)
        masked = torch.rand(256, vocab_size, generator=data) < 0.6
        keep = torch.randint(0, vocab_size, (256,), generator=data)
        masked[torch.arange(256), keep] = False
        logits = logits.masked_fill(masked, float("-inf"))
        ids = _check_ids(
            sampler.sample(logits, generator=_generator(seed + trial)), (256,), vocab_size,
            f"{name} on masked logits",
        )
        picked = masked[torch.arange(256), ids]
        if picked.any():
            row = int(picked.nonzero()[0])
            raise AssertionError(
                f"{name} picked token {int(ids[row])}, whose logit is -inf (row {row}); masked "
                "tokens must have zero probability"
            )


# --- latent samplers --------------------------------------------------------------------------

class _Field:
    """A structural ``VelocityField`` that records its calls and checks what the sampler passes.

    Not an nx implementation (no explicit subclassing), so discovery ignores it.
    """

    def __init__(self, velocity: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, int]):
        self.velocity = velocity
        self.shape = shape
        self.device = torch.device("cpu")
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        if not isinstance(x, Tensor) or tuple(x.shape) != self.shape or not x.is_floating_point():
            raise AssertionError(
                f"the sampler called the field with x = {_describe(x)}; expected a float tensor "
                f"of the field's shape {self.shape}"
            )
        if not isinstance(t, Tensor) or tuple(t.shape) != (self.shape[0],):
            raise AssertionError(
                f"the sampler called the field with t = {_describe(t)}; expected one time per "
                f"token, shape ({self.shape[0]},)"
            )
        if ((t < 0) | (t > 1) | torch.isnan(t)).any():
            raise AssertionError(f"the sampler called the field with t outside [0, 1]: {t}")
        return self.velocity(x.float(), t.float()).to(x.dtype)


def _toward(target: Tensor) -> _Field:
    """v = (x1 - x) / max(1 - t, 1e-4): the exact velocity toward the single point ``x1``."""
    return _Field(
        lambda x, t: (target - x) / (1.0 - t).clamp_min(1e-4)[:, None], tuple(target.shape)
    )


def _contracting(shape: tuple[int, int]) -> _Field:
    """v = -x: the output depends on the starting noise (unlike the field toward one point)."""
    return _Field(lambda x, t: -x, shape)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def _check_latents(out: object, shape: tuple[int, ...], what: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise AssertionError(f"{what}: sample must return a torch.Tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise AssertionError(f"{what}: latents must have a floating dtype, got {out.dtype}")
    if tuple(out.shape) != shape:
        raise AssertionError(
            f"{what}: latents must have the field's shape {shape}, got {tuple(out.shape)}"
        )
    if not torch.isfinite(out).all():
        raise AssertionError(f"{what}: latents contain NaN or inf")
    return out


def check_latent_sampler(
    sampler: LatentSampler,
    *,
    tokens: int = 6,
    latent_dim: int = 5,
    reaches_data: bool = True,
    seed: int = 0,
) -> None:
    """Check the ``LatentSampler`` contract; raises ``AssertionError`` on a violation."""
    name = type(sampler).__name__
    if not isinstance(sampler, LatentSampler):
        raise AssertionError(f"{name} does not implement LatentSampler (a sample(cond, ...) method)")
    signs = torch.randint(0, 2, (tokens, latent_dim), generator=_generator(seed + 1))
    target = 3.0 * (2.0 * signs.float() - 1.0)
    shape = (tokens, latent_dim)

    field = _toward(target)
    out = _check_latents(sampler.sample(field, generator=_generator(seed)), shape, name)
    if field.calls == 0:
        raise AssertionError(f"{name} never evaluated the velocity field")

    first, second = _same_seed_twice(
        lambda g: sampler.sample(_contracting(shape), generator=g), seed
    )
    if not torch.equal(first, second):
        raise AssertionError(
            f"{name}: two calls with generators seeded {seed} gave different latents (max "
            f"difference {(first - second).abs().max().item():.3g}); the sampler must draw all "
            "its randomness from `generator`, not from the global RNG"
        )

    where = {"step": 2, "num_steps": 3}
    plain = sampler.sample(_contracting(shape), **where, generator=_generator(seed))
    for count in (1, 2):
        same = _contracting(shape)
        guided = sampler.sample(same, [same] * count, **where, generator=_generator(seed))
        _check_latents(guided, shape, f"{name} with {count} uncond")
        gap = (guided.float() - plain.float()).abs().max().item()
        if gap > _CFG_ATOL:
            raise AssertionError(
                f"{name}: with {count} uncond field(s) equal to cond the latents differ from "
                f"sampling cond alone by up to {gap:.3g}; CFG of identical branches must be the "
                "identity, e.g. v_u + w * (v_c - v_u)"
            )

    if reaches_data:
        rms = (out.float() - target).pow(2).mean().sqrt().item()
        if rms > _ENDPOINT_RMS:
            raise AssertionError(
                f"{name}: on the field v = (x1 - x) / (1 - t) the sample ends at RMS distance "
                f"{rms:.3g} from x1 (allowed {_ENDPOINT_RMS}); the integration must reach t = 1. "
                "Pass reaches_data=False if this sampler stops short of t = 1 by design"
            )
