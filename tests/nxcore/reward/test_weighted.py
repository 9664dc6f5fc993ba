"""``WeightedReward`` is the weighted sum of its terms; ``as_reward`` keeps RewardModels and wraps
(validating) plain callables; bad terms and weights raise errors that name them."""

import math

import pytest
import torch

from nxcore.reward import CallableReward, RewardModel, WeightedReward, as_reward
from nxcore.testing.check_reward import check_reward_model

IMAGES = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a", "bb", "ccc", "dddd"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def length(images, prompts):
    return [float(len(p)) for p in prompts]  # a plain list: the wrapper converts it


class Green(RewardModel):
    """An explicit RewardModel (kept as it is by as_reward)."""

    def __call__(self, images, prompts):
        if len(prompts) != len(images):
            raise ValueError("one prompt per image")
        return images[:, 1].mean(dim=(1, 2))


def test_weighted_sum_equals_the_hand_sum():
    model = WeightedReward([(brightness, 0.5), (length, -2.0), (Green(), 3.0)])
    expected = (0.5 * IMAGES.mean(dim=(1, 2, 3)) - 2.0 * torch.tensor([1.0, 2.0, 3.0, 4.0])
                + 3.0 * IMAGES[:, 1].mean(dim=(1, 2)))
    rewards = model(IMAGES, PROMPTS)
    assert rewards.dtype == torch.float32 and rewards.shape == (4,)
    torch.testing.assert_close(rewards, expected)
    # each image's reward is its own: one image alone scores the same
    torch.testing.assert_close(model(IMAGES[2:3], PROMPTS[2:3]), expected[2:3])


def test_mapping_and_sequence_forms_agree_and_repeated_terms_add_up():
    green = Green()
    as_map = WeightedReward({brightness: 1.5, green: 0.25})
    as_seq = WeightedReward([(brightness, 1.5), (green, 0.25)])
    torch.testing.assert_close(as_map(IMAGES, PROMPTS), as_seq(IMAGES, PROMPTS))
    twice = WeightedReward([(brightness, 1.0), (brightness, 1.0)])
    torch.testing.assert_close(twice(IMAGES, PROMPTS), 2 * IMAGES.mean(dim=(1, 2, 3)))


def test_nested_weighted_rewards_compose():
    inner = WeightedReward([(brightness, 2.0), (length, 1.0)])
    outer = WeightedReward([(inner, 0.5), (length, -0.5)])
    torch.testing.assert_close(outer(IMAGES, PROMPTS), IMAGES.mean(dim=(1, 2, 3)))


def test_as_reward_keeps_reward_models_and_wraps_plain_callables():
    green, wrapped = Green(), CallableReward(brightness)
    assert as_reward(green) is green and as_reward(wrapped) is wrapped
    plain = as_reward(length)
    assert isinstance(plain, CallableReward) and plain.name == "length"
    assert as_reward(brightness, name="bright").name == "bright"
    assert isinstance(WeightedReward([(brightness, 1.0)]).terms[0][0], CallableReward)
    with pytest.raises(TypeError, match="got int"):
        as_reward(3)


def test_plain_callable_outputs_are_validated():
    with pytest.raises(ValueError, match="returned 1 values for 4 images"):
        WeightedReward([(lambda images, prompts: [1.0], 1.0)])(IMAGES, PROMPTS)
    with pytest.raises(ValueError, match="non-finite"):
        WeightedReward([(lambda images, prompts: [math.nan] * 4, 1.0)])(IMAGES, PROMPTS)


class _WrongShape(RewardModel):
    def __call__(self, images, prompts):
        return torch.zeros(len(prompts), 2)


class _Infinite(RewardModel):
    def __call__(self, images, prompts):
        return torch.full((len(prompts),), math.inf)


def test_reward_models_that_break_the_contract_are_named():
    with pytest.raises(ValueError, match=r"term 1 \(_WrongShape\) returned \(4, 2\) for 4 images"):
        WeightedReward([(brightness, 1.0), (_WrongShape(), 1.0)])(IMAGES, PROMPTS)
    with pytest.raises(ValueError, match=r"term 0 \(_Infinite\) returned a non-finite"):
        WeightedReward([(_Infinite(), 0.0)])(IMAGES, PROMPTS)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, True, "1", None])
def test_bad_weights_raise(weight):
    with pytest.raises(ValueError, match=r"terms\[1\] has weight"):
        WeightedReward([(brightness, 1.0), (length, weight)])


def test_bad_terms_raise():
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward([])
    with pytest.raises(TypeError, match=r"terms\[0\]: a reward must be a RewardModel or a callable"):
        WeightedReward([("shapeeval", 1.0)])
    with pytest.raises(TypeError, match=r"terms\[0\] = .* must be a \(reward, weight\) pair"):
        WeightedReward([brightness])
    with pytest.raises(TypeError, match="mapping .* or a sequence"):
        WeightedReward(brightness)


def test_inputs_are_checked_before_any_term_runs():
    calls = []
    model = WeightedReward([(lambda images, prompts: calls.append(1) or [0.0] * len(prompts), 1.0)])
    with pytest.raises(ValueError, match="got 3 prompts for 4 images"):
        model(IMAGES, PROMPTS[:3])
    assert not calls


def test_rewards_are_outside_autograd_on_the_images_device_and_conform():
    images = IMAGES.clone().requires_grad_(True)
    rewards = WeightedReward([(brightness, 1.0), (Green(), 1.0)])(images, PROMPTS)
    assert not rewards.requires_grad and rewards.device == images.device
    for model in WeightedReward.examples():
        check_reward_model(model)


def test_repr_lists_the_terms():
    text = repr(WeightedReward([(CallableReward(brightness), 0.7), (length, -0.3)]))
    assert text == "WeightedReward(0.7 * CallableReward(brightness) + -0.3 * CallableReward(length))"
