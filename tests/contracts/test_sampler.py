"""Every TokenSampler / LatentSampler in nx passes its conformance check; the checks reject broken
samplers."""

import pytest
import torch

from nxcore.sampler import (
    CategoricalSampler,
    FlowSampler,
    LatentSampler,
    TokenSampler,
    mix_guidance,
)
from nxcore.testing.check_sampler import check_latent_sampler, check_token_sampler
from nxcore.testing.discovery import conformance_cases


@pytest.mark.parametrize("sampler", conformance_cases(TokenSampler))
def test_token_sampler_conforms(sampler):
    check_token_sampler(sampler)


@pytest.mark.parametrize("sampler", conformance_cases(LatentSampler))
def test_latent_sampler_conforms(sampler):
    # a sampler may declare that it stops short of t = 1 (FlowSampler "nextstep1" with a shift)
    check_latent_sampler(sampler, reaches_data=getattr(sampler, "final_time", 1.0) >= 1.0)


def test_checks_pass_an_argmax_sampler_that_ignores_the_generator_legitimately():
    class Greedy(TokenSampler):
        def sample(self, cond, uncond=(), *, step=0, num_steps=1, generator=None):
            return cond.argmax(-1)

    check_token_sampler(Greedy())


# --- broken token samplers --------------------------------------------------------------------

class _Token(TokenSampler):
    """A minimal correct sampler (CFG w = 3) whose subclasses each break one property."""

    w = 3.0

    def mix(self, cond, uncond):
        return mix_guidance(cond, uncond[0], self.w) if uncond else cond

    def draw(self, probs, generator):
        return torch.multinomial(probs, 1, generator=generator)

    def sample(self, cond, uncond=(), *, step=0, num_steps=1, generator=None):
        logits = self.mix(cond, uncond)
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), -1)
        return self.draw(probs, generator).reshape(cond.shape[:-1])


class _TokenIgnoresGenerator(_Token):
    def draw(self, probs, generator):
        return torch.multinomial(probs, 1)


class _TokenInt32(_Token):
    def sample(self, cond, uncond=(), **kwargs):
        return super().sample(cond, uncond, **kwargs).int()


class _TokenFlattens(_Token):
    def sample(self, cond, uncond=(), **kwargs):
        return super().sample(cond, uncond, **kwargs).reshape(-1)


class _TokenOutOfRange(_Token):
    def sample(self, cond, uncond=(), **kwargs):
        return super().sample(cond, uncond, **kwargs) + cond.shape[-1]


class _TokenWrongCFG(_Token):
    def mix(self, cond, uncond):
        return cond + self.w * uncond[0] if uncond else cond  # forgot "- uncond"


class _TokenPicksMasked(_Token):
    def mix(self, cond, uncond):
        return super().mix(cond, uncond).nan_to_num(neginf=0.0)


class _TokenMutatesInput(_Token):
    def mix(self, cond, uncond):
        return cond.sub_(cond.amax(-1, keepdim=True))


class _NotASampler:
    def draw(self, logits):
        return logits.argmax(-1)


@pytest.mark.parametrize(
    "broken, match",
    [
        (_TokenIgnoresGenerator(), r"different ids; the sampler must draw all its randomness"),
        (_TokenInt32(), r"token ids must be int64, got torch.int32"),
        (_TokenFlattens(), r"must give ids of shape \(\), got \(1,\)"),
        (_TokenOutOfRange(), r"ids must lie in \[0, 13\)"),
        (_TokenWrongCFG(), r"with uncond equal to cond the ids differ"),
        (_TokenPicksMasked(), r"whose logit is -inf"),
        (_TokenMutatesInput(), r"modified its cond logits in place"),
        (_NotASampler(), r"does not implement TokenSampler"),
    ],
)
def test_token_check_rejects(broken, match):
    check_token_sampler(_Token())  # the unbroken base passes
    with pytest.raises(AssertionError, match=match):
        check_token_sampler(broken)


# --- broken latent samplers -------------------------------------------------------------------

class _Latent(LatentSampler):
    """Minimal correct Euler sampler (CFG w = 3) whose subclasses each break one property."""

    w, num_steps, end = 3.0, 6, 1.0

    def noise(self, shape, generator):
        return torch.randn(shape, generator=generator)

    def times(self, tokens, t):
        return torch.full((tokens,), t)

    def velocity(self, cond, uncond, x, t):
        v = cond(x, t)
        return mix_guidance(v, uncond[0](x, t), self.w) if uncond else v

    def sample(self, cond, uncond=(), *, step=0, num_steps=1, generator=None):
        x = self.noise(cond.shape, generator)
        grid = torch.linspace(0, self.end, self.num_steps + 1).tolist()
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            x = x + self.velocity(cond, uncond, x, self.times(x.shape[0], t)) * (t_next - t)
        return x


class _LatentIgnoresGenerator(_Latent):
    def noise(self, shape, generator):
        return torch.randn(shape)


class _LatentTransposed(_Latent):
    def sample(self, cond, uncond=(), **kwargs):
        return super().sample(cond, uncond, **kwargs).T


class _LatentInteger(_Latent):
    def sample(self, cond, uncond=(), **kwargs):
        return super().sample(cond, uncond, **kwargs).round().long()


class _LatentWrongCFG(_Latent):
    def velocity(self, cond, uncond, x, t):
        if not uncond:
            return cond(x, t)
        return self.w * (cond(x, t) - uncond[0](x, t))  # forgot "uncond +"


class _LatentStopsHalfway(_Latent):
    end = 0.5


class _LatentScalarTime(_Latent):
    def times(self, tokens, t):
        return torch.tensor(t)


class _LatentNeverEvaluates(_Latent):
    def sample(self, cond, uncond=(), *, step=0, num_steps=1, generator=None):
        return self.noise(cond.shape, generator)


@pytest.mark.parametrize(
    "broken, match",
    [
        (_LatentIgnoresGenerator(), r"different latents .*must draw all its randomness"),
        (_LatentTransposed(), r"latents must have the field's shape \(6, 5\), got \(5, 6\)"),
        (_LatentInteger(), r"latents must have a floating dtype, got torch.int64"),
        (_LatentWrongCFG(), r"with 1 uncond field\(s\) equal to cond the latents differ"),
        (_LatentStopsHalfway(), r"ends at RMS distance .* the integration must reach t = 1"),
        (_LatentScalarTime(), r"called the field with t = a torch.float32 tensor of shape \(\)"),
        (_LatentNeverEvaluates(), r"never evaluated the velocity field"),
        (object(), r"does not implement LatentSampler"),
    ],
)
def test_latent_check_rejects(broken, match):
    check_latent_sampler(_Latent())  # the unbroken base passes
    with pytest.raises(AssertionError, match=match):
        check_latent_sampler(broken)


def test_latent_check_skips_the_endpoint_only_when_told():
    check_latent_sampler(_LatentStopsHalfway(), reaches_data=False)
    quirk = FlowSampler(num_steps=6, timesteps="nextstep1", shift=3.2)
    assert quirk.final_time < 1.0
    check_latent_sampler(quirk, reaches_data=False)


def test_reference_samplers_are_discovered():
    token_ids = [p.id for p in conformance_cases(TokenSampler)]
    latent_ids = [p.id for p in conformance_cases(LatentSampler)]
    assert sum(i.startswith("CategoricalSampler-") for i in token_ids) == len(
        CategoricalSampler.examples()
    )
    assert sum(i.startswith("FlowSampler-") for i in latent_ids) == len(FlowSampler.examples())
