"""``ShapeEvalReward``: the ShapeEval score of each image against its prompt, as a ``RewardModel``."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from nxcore.reward.callable import check_reward_inputs
from nxcore.reward.protocol import RewardModel
from nxcore.typing import Float, typecheck
from nxrecipes.data.shapeworld.captions import parse_prompt
from nxrecipes.data.shapeworld.spec import Spec
from nxrecipes.eval.shapeeval.detect import detect
from nxrecipes.eval.shapeeval.score import partial_credit

__all__ = ["ShapeEvalReward"]


@functools.lru_cache(maxsize=4096)
def _spec_of(prompt: str) -> Spec:
    try:
        return parse_prompt(prompt)
    except ValueError as e:
        raise ValueError(
            f"prompt {prompt!r} is not a ShapeWorld prompt ({e}); ShapeEvalReward scores prompts such "
            "as 'a red circle', 'two blue squares' or 'a green triangle above a yellow star'"
        ) from e


class ShapeEvalReward(RewardModel):
    """Reward = 1.0 when ShapeEval's detector finds the prompt's spec satisfied in the image.

    Otherwise, with ``partial_credit=True`` (the default), the fraction of the spec's requirements
    met: each object query counts one (present in the asked number: exactly for counting prompts, at
    least otherwise) and a position prompt's relation counts one more. So "a red circle above a blue
    square" drawn with both objects side by side earns 2/3, with only the circle 1/3 (or 0 when the
    relation also fails), and a wrong count earns 0. With ``partial_credit=False`` the reward is 0
    or 1, GenEval's per-image score.

    Prompts are read by ``captions.parse_prompt``; one it cannot read raises ``ValueError`` naming
    it, before any image is scored. Runs on the CPU (numpy/scipy) and returns float32 on the
    images' device.
    """

    def __init__(self, *, partial_credit: bool = True) -> None:
        if not isinstance(partial_credit, bool):
            raise TypeError(f"partial_credit must be a bool, got {partial_credit!r}")
        self.partial_credit = partial_credit

    @classmethod
    def examples(cls) -> list[ShapeEvalReward]:
        return [cls(), cls(partial_credit=False)]

    def __repr__(self) -> str:
        return f"ShapeEvalReward(partial_credit={self.partial_credit})"

    def score(self, image: object, prompt: str) -> float:
        """The reward of one image (any form ``detect`` takes) for one prompt."""
        credit = partial_credit(detect(image), _spec_of(prompt))
        return credit if self.partial_credit else float(credit == 1.0)

    @typecheck
    def __call__(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]:
        check_reward_inputs(images, prompts)
        for prompt in prompts:
            _spec_of(prompt)
        pixels = images.detach().float().cpu()
        rewards = []
        for i, prompt in enumerate(prompts):
            try:
                rewards.append(self.score(pixels[i], prompt))
            except ValueError as e:
                raise ValueError(f"images[{i}]: {e}") from e
        return torch.tensor(rewards, dtype=torch.float32).to(images.device)
