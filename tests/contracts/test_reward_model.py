"""Every RewardModel in nx passes the conformance check; the check rejects broken ones."""

import pytest
import torch

from nxcore.reward import CallableReward, RewardModel
from nxcore.testing.check_reward import check_reward_model
from nxcore.testing.discovery import conformance_cases


@pytest.mark.parametrize("model", conformance_cases(RewardModel))
def test_reward_conforms(model):
    check_reward_model(model)


class _BatchRelative:
    """Reward normalised across the batch: one image's reward depends on the others."""

    def __call__(self, images, prompts):
        if len(prompts) != len(images):
            raise ValueError("mismatch")
        m = images.mean(dim=(1, 2, 3))
        return (m - m.mean()).float()


class _NoPromptCheck:
    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class _Float64:
    def __call__(self, images, prompts):
        if len(prompts) != len(images):
            raise ValueError("mismatch")
        return images.mean(dim=(1, 2, 3)).double()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_BatchRelative(), "depends on the other images"),
        (_NoPromptCheck(), "must raise ValueError"),
        (_Float64(), "finite float32"),
        (CallableReward(lambda images, prompts: [float("nan")] * len(prompts)), "non-finite"),
    ],
)
def test_check_rejects_broken_rewards(model, message):
    with pytest.raises((AssertionError, ValueError), match=message):
        check_reward_model(model)


def test_callable_reward_validates_the_function_output():
    wrong_count = CallableReward(lambda images, prompts: [1.0])
    with pytest.raises(ValueError, match="returned 1 values for 2 images"):
        wrong_count(torch.rand(2, 3, 8, 8), ["a", "b"])
    with pytest.raises(TypeError, match="fn must be callable"):
        CallableReward(3)


@pytest.mark.parametrize(
    ("images", "prompts", "error", "message"),
    [
        (torch.rand(2, 1, 8, 8), ["a", "b"], ValueError, r"\[batch, 3, height, width\]"),
        (torch.rand(3, 8, 8), ["a"], ValueError, "must have 4 dimensions"),
        (torch.rand(2, 3, 8, 8), "ab", TypeError, "sequence of strings"),
        (torch.randint(0, 255, (1, 3, 8, 8)), ["a"], TypeError, "floating-point dtype"),
    ],
)
def test_callable_reward_validates_inputs(images, prompts, error, message):
    model = CallableReward(lambda im, pr: im.float().mean(dim=(1, 2, 3)))
    with pytest.raises(error, match=message):
        model(images, prompts)
