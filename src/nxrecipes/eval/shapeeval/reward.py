"""``ShapeEvalReward``: the ShapeEval score of each image against its prompt, as a ``RewardModel``,
optionally weighted per prompt category."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from nxcore.reward.callable import check_reward_inputs
from nxcore.reward.protocol import RewardModel
from nxcore.typing import Float, typecheck
from nxrecipes.data.shapeworld.captions import parse_prompt
from nxrecipes.data.shapeworld.spec import CATEGORIES, Spec
from nxrecipes.eval.shapeeval.detect import detect
from nxrecipes.eval.shapeeval.score import partial_credit

__all__ = ["ShapeEvalReward", "check_category_weights", "prompt_spec"]


@functools.lru_cache(maxsize=4096)
def prompt_spec(prompt: str) -> Spec:
    """The ``Spec`` of a ShapeWorld prompt (``captions.parse_prompt``, cached), or a ``ValueError``
    that names the prompt and shows prompts the ShapeWorld rewards read."""
    try:
        return parse_prompt(prompt)
    except ValueError as e:
        raise ValueError(
            f"prompt {prompt!r} is not a ShapeWorld prompt ({e}); the ShapeWorld rewards score prompts "
            "such as 'a red circle', 'two blue squares' or 'a green triangle above a yellow star'"
        ) from e


def check_category_weights(categories: object) -> dict[str, float]:
    """``categories`` (category -> weight) as a dict over every name of ``CATEGORIES``, the ones
    left out weighing 0. Names must be ShapeWorld categories, weights finite numbers >= 0, and at
    least one weight positive."""
    if not isinstance(categories, Mapping):
        raise TypeError(
            f"categories must be a mapping of category -> weight such as {{'counting': 1.0}}, got "
            f"{type(categories).__name__}"
        )
    weights = dict.fromkeys(CATEGORIES, 0.0)
    for name, weight in categories.items():
        if name not in CATEGORIES:
            raise ValueError(f"unknown category {name!r} in categories; choose among {list(CATEGORIES)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"categories[{name!r}] = {weight!r} must be a finite number >= 0")
        weights[name] = float(weight)
    if not any(weights.values()):
        raise ValueError(
            f"categories = {dict(categories)!r} gives no category a positive weight, so every reward "
            "would be 0; weigh at least one category above 0"
        )
    return weights


class ShapeEvalReward(RewardModel):
    """Reward = 1.0 when ShapeEval's detector finds the prompt's spec satisfied in the image.

    Otherwise, with ``partial_credit=True`` (the default), the fraction of the spec's requirements
    met: each object query counts one (present in the asked number: exactly for counting prompts, at
    least otherwise) and a position prompt's relation counts one more. So "a red circle above a blue
    square" drawn with both objects side by side earns 2/3, with only the circle 1/3 (or 0 when the
    relation also fails), and a wrong count earns 0. With ``partial_credit=False`` the reward is 0
    or 1, GenEval's per-image score.

    ``categories`` weighs the reward by the prompt's category (``spec.CATEGORIES``): with
    ``{"counting": 1.0, "position": 2.0}`` a position prompt's reward is twice its credit, a
    counting prompt's its credit, and every other category's 0 (those images are not even
    scored), so ``{"counting": 1.0}`` is the counting-only reward. ``None`` (the default) weighs
    every category 1.

    Prompts are read by ``captions.parse_prompt``; one it cannot read raises ``ValueError`` naming
    it, before any image is scored. Runs on the CPU (numpy/scipy) and returns float32 on the
    images' device.
    """

    def __init__(self, *, partial_credit: bool = True, categories: Mapping[str, float] | None = None) -> None:
        if not isinstance(partial_credit, bool):
            raise TypeError(f"partial_credit must be a bool, got {partial_credit!r}")
        self.partial_credit = partial_credit
        self.weights = (dict.fromkeys(CATEGORIES, 1.0) if categories is None
                        else check_category_weights(categories))
        self.categories = None if categories is None else dict(categories)

    @classmethod
    def examples(cls) -> list[ShapeEvalReward]:
        return [cls(), cls(partial_credit=False), cls(categories={"counting": 1.0, "position": 2.0})]

    def __repr__(self) -> str:
        if self.categories is None:
            return f"ShapeEvalReward(partial_credit={self.partial_credit})"
        return f"ShapeEvalReward(partial_credit={self.partial_credit}, categories={self.categories})"

    def score(self, image: object, prompt: str) -> float:
        """The reward of one image (any form ``detect`` takes) for one prompt."""
        spec = prompt_spec(prompt)
        weight = self.weights[spec.category]
        if weight == 0.0:
            return 0.0
        credit = partial_credit(detect(image), spec)
        return weight * (credit if self.partial_credit else float(credit == 1.0))

    @typecheck
    def __call__(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]:
        check_reward_inputs(images, prompts)
        for prompt in prompts:
            prompt_spec(prompt)
        pixels = images.detach().float().cpu()
        rewards = []
        for i, prompt in enumerate(prompts):
            try:
                rewards.append(self.score(pixels[i], prompt))
            except ValueError as e:
                raise ValueError(f"images[{i}]: {e}") from e
        return torch.tensor(rewards, dtype=torch.float32).to(images.device)
