"""The ``RewardModel`` contract: images + prompts -> one float per image (higher is better).

``images`` are float [batch, 3, height, width] in [0, 1]; ``prompts`` has one string per image. The
result is a float32 tensor [batch] on the images' device, finite. Rewards are not differentiated
through (GRPO uses them as advantages). References: ``CallableReward`` (adapts any function),
``WeightedReward`` (a weighted sum of rewards; ``as_reward`` wraps plain functions), and, with
ShapeWorld in ``nxrecipes.eval``, ``ShapeEvalReward`` (partial credit, per-category weights) and
``LearnedShapeReward`` (a small trained CNN, saved and loaded with ``save_pretrained``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from nxcore.typing import Float


@runtime_checkable
class RewardModel(Protocol):
    def __call__(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]: ...
