"""Conformance checks for ``RewardModel`` implementations."""

from __future__ import annotations

import torch

from nxcore.reward.protocol import RewardModel


def check_reward_model(model: RewardModel, *, size: int = 32, seed: int = 0) -> None:
    """One finite float32 per image, deterministic, and a clear error on mismatched prompts."""
    if not isinstance(model, RewardModel):
        raise AssertionError(f"{type(model).__name__} is not callable as a RewardModel")
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, size, size, generator=gen)
    prompts = ["a red circle", "two blue squares", "a green triangle above a yellow star"]
    rewards = model(images, prompts)
    if not isinstance(rewards, torch.Tensor) or tuple(rewards.shape) != (3,):
        raise AssertionError(f"rewards must be a tensor [3] for 3 images, got {rewards!r}")
    if rewards.dtype != torch.float32 or not torch.isfinite(rewards).all():
        raise AssertionError(f"rewards must be finite float32, got {rewards.dtype}: {rewards}")
    if rewards.requires_grad:
        raise AssertionError("rewards must not require grad (they are advantages, not losses)")
    if not torch.equal(model(images, prompts), rewards):
        raise AssertionError("the same images and prompts gave different rewards")
    single = model(images[1:2], prompts[1:2])
    if not torch.allclose(single, rewards[1:2], atol=1e-5):
        raise AssertionError("an image's reward depends on the other images in the batch")
    try:
        model(images, prompts[:2])
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError("3 images with 2 prompts must raise ValueError")
