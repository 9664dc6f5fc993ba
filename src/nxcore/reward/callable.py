"""``CallableReward``: any function of (images, prompts) as a ``RewardModel``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.reward.protocol import RewardModel
from nxcore.typing import Float, typecheck


def check_reward_inputs(images: Tensor, prompts: Sequence[str]) -> None:
    check_tensor("images", images, ndim=4, kind="float")
    if images.shape[1] != 3:
        raise ValueError(
            f"images must be [batch, 3, height, width], got shape {tuple(images.shape)}; "
            "convert grey or RGBA images to RGB"
        )
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of strings, one per image")
    if len(prompts) != images.shape[0]:
        raise ValueError(
            f"got {len(prompts)} prompts for {images.shape[0]} images; pass one prompt per image"
        )


class CallableReward(RewardModel):
    """Adapts ``fn(images, prompts) -> one number per image`` (a tensor, list or array).

    The result is validated (one finite value per image) and returned as float32 on the images'
    device, outside autograd.
    """

    def __init__(self, fn: Callable[[Tensor, Sequence[str]], Any], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    @classmethod
    def examples(cls) -> list[CallableReward]:
        def brightness(images: Tensor, prompts: Sequence[str]) -> Tensor:
            return images.mean(dim=(1, 2, 3))

        def prompt_length(images: Tensor, prompts: Sequence[str]) -> list[float]:
            return [float(len(p)) for p in prompts]

        return [cls(brightness), cls(prompt_length)]

    def __repr__(self) -> str:
        return f"CallableReward({self.name})"

    @typecheck
    def __call__(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]:
        check_reward_inputs(images, prompts)
        with torch.no_grad():
            raw = self.fn(images, prompts)
        rewards = torch.as_tensor(
            raw.detach().cpu() if isinstance(raw, Tensor) else raw, dtype=torch.float32
        ).reshape(-1)
        if rewards.numel() != images.shape[0]:
            raise ValueError(
                f"reward function {self.name} returned {rewards.numel()} values for "
                f"{images.shape[0]} images; it must return one number per image"
            )
        if not torch.isfinite(rewards).all():
            raise ValueError(f"reward function {self.name} returned a non-finite value: {rewards}")
        return rewards.to(images.device)
