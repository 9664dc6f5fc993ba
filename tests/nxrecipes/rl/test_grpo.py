"""Eq. 4 and Eq. 5 against hand-computed cases, and the KL term."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxrecipes.rl import group_advantages, grpo_loss, kl_estimate


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [0.0, 0.0, 4.0]])
    a = group_advantages(rewards, eps=0.0 + 1e-12)
    # group 0: mean 2, sample std 1
    assert torch.allclose(a[0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    # a group whose rewards are all equal carries no signal: zeros, no division by zero
    assert torch.equal(a[1], torch.zeros(3))
    # group 2: mean 4/3, sample std sqrt(16/3)
    std = math.sqrt(((4 / 3) ** 2 * 2 + (8 / 3) ** 2) / 2)
    assert torch.allclose(a[2], torch.tensor([-4 / 3, -4 / 3, 8 / 3]) / std, atol=1e-6)


def test_advantages_refuse_groups_of_one_and_non_finite_rewards():
    with pytest.raises(ValueError, match="at least 2 samples"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


# one row, two scales of 1 and 2 tokens, alpha 1: k = 1 and 1/2, token weights [1, 1/2, 1/2]
LOGP = [math.log(1.5), math.log(0.5), 0.0]


def _loss(advantage, ratio="token", **kw):
    logp = torch.tensor([LOGP], requires_grad=True)
    loss, metrics = grpo_loss(logp, torch.zeros(1, 3), torch.tensor([advantage]), scale_sizes=[1, 2], alpha=1.0,
                              clip=0.2, ratio=ratio, **kw)
    return logp, loss, metrics


def test_token_ratios_clip_as_eq5_says():
    # ratios 1.5, 0.5, 1; A = +1: min(r A, clip(r) A) = 1.2, 0.5, 1 -> (1.2 + 0.25 + 0.5) / 2
    logp, loss, metrics = _loss(1.0)
    assert loss.item() == pytest.approx(-0.975, abs=1e-6)
    assert metrics["clip_fraction"] == pytest.approx(2 / 3)
    loss.backward()
    # the clipped token (r > 1 + eps with A > 0) gets no gradient; the others -k r A / sum k
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.125, -0.25]]), atol=1e-6)
    # A = -1: min(-1.5, -1.2), min(-0.5, -0.8), -1 -> (-1.5 - 0.4 - 0.5) / 2
    assert _loss(-1.0)[1].item() == pytest.approx(1.2, abs=1e-6)


def test_scale_ratios_are_products_of_token_ratios():
    # scale 0: ratio 1.5 -> 1.2; scale 1: ratio 0.5 * 1 = 0.5; k = 1, 1/2 -> (1.2 + 0.25) / 1.5
    _, loss, _ = _loss(1.0, ratio="scale")
    assert loss.item() == pytest.approx(-(1.2 + 0.25) / 1.5, abs=1e-6)


def test_on_policy_loss_is_the_weighted_policy_gradient():
    # ratio 1 everywhere: the gradient is -A k / sum k per token, whatever the clip
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, _ = grpo_loss(logp, logp.detach(), adv, scale_sizes=[1, 2], alpha=1.0)
    loss.backward()
    k = torch.tensor([1.0, 0.5, 0.5]) / 2
    assert torch.allclose(logp.grad, -adv[:, None] * k / 2, atol=1e-6)


def test_zero_advantage_rows_contribute_nothing():
    logp = torch.randn(2, 5, requires_grad=True)
    loss, _ = grpo_loss(logp, torch.randn(2, 5), torch.tensor([0.0, 0.0]), scale_sizes=[1, 4])
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logp.grad) == 0


def _log_softmax(values):
    return torch.log_softmax(torch.tensor(values, dtype=torch.float64), dim=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6).flatmap(
    lambda a: st.tuples(st.just(a), st.lists(st.floats(-3, 3), min_size=len(a), max_size=len(a)))))
def test_k3_estimate_is_unbiased_for_kl(pair):
    # E_{x ~ p}[k3(x)] = KL(p || ref): weight every outcome x by p(x)
    a, b = pair
    logp, ref = _log_softmax(a), _log_softmax(b)
    exact = float((logp.exp() * (logp - ref)).sum())
    estimate = kl_estimate(logp[None].float(), ref[None].float(), logp.exp().float())
    assert estimate.item() == pytest.approx(exact, abs=1e-5)
    assert estimate.item() >= -1e-7


def test_kl_term_enters_with_weight_beta_and_vanishes_at_the_reference():
    logp = torch.randn(3, 5)
    ref = logp + 0.3 * torch.randn(3, 5)
    adv = torch.randn(3)
    base, _ = grpo_loss(logp, logp, adv, scale_sizes=[1, 4], ref_log_probs=ref)
    with_kl, metrics = grpo_loss(logp, logp, adv, scale_sizes=[1, 4], beta=0.5, ref_log_probs=ref)
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * metrics["kl"], abs=1e-6)
    assert metrics["kl"] > 0
    _, same = grpo_loss(logp, logp, adv, scale_sizes=[1, 4], beta=0.5, ref_log_probs=logp)
    assert same["kl"] == 0.0


def test_bad_arguments_are_named():
    logp = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="sum to 4 tokens"):
        grpo_loss(logp, logp, torch.zeros(2), scale_sizes=[1, 3])
    with pytest.raises(ValueError, match="ratio"):
        grpo_loss(logp, logp, torch.zeros(2), scale_sizes=[1, 4], ratio="sequence")
    with pytest.raises(ValueError, match="ref_log_probs"):
        grpo_loss(logp, logp, torch.zeros(2), scale_sizes=[1, 4], beta=0.1)
    with pytest.raises(ValueError, match="clip"):
        grpo_loss(logp, logp, torch.zeros(2), scale_sizes=[1, 4], clip=1.5)
    with pytest.raises(ValueError, match="3 advantages"):
        grpo_loss(logp, logp, torch.zeros(3), scale_sizes=[1, 4])
