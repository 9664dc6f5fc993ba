"""``WeightedReward``: a weighted sum of reward models; ``as_reward``: any callable as one.

Plain callables: the ``RewardModel`` protocol only asks for ``__call__``, so any function passes an
``isinstance`` check but promises nothing about what it returns. ``as_reward`` therefore keeps
explicit ``RewardModel`` implementations (classes that subclass the protocol, the house rule) as
they are and wraps every other callable in ``CallableReward``, which checks that it returns one
finite number per image and converts the result to float32 on the images' device.
``WeightedReward`` passes each of its terms through ``as_reward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nxcore.reward.callable import CallableReward, check_reward_inputs
from nxcore.reward.protocol import RewardModel
from nxcore.typing import Float, typecheck

__all__ = ["WeightedReward", "as_reward"]


def as_reward(model: RewardModel | Callable[[Tensor, Sequence[str]], Any], name: str | None = None
              ) -> RewardModel:
    """``model`` itself when its class subclasses ``RewardModel``; any other callable
    ``fn(images, prompts) -> one number per image`` wrapped in ``CallableReward`` (so its output is
    validated); a ``TypeError`` for anything not callable."""
    if RewardModel in type(model).__mro__:
        return model
    if not callable(model):
        raise TypeError(
            f"a reward must be a RewardModel or a callable fn(images, prompts) -> one number per image, "
            f"got {type(model).__name__}"
        )
    return CallableReward(model, name=name)


def _weight(value: object, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"terms[{index}] has weight {value!r}; a weight must be a finite number")
    return float(value)


def _short(model: RewardModel) -> str:
    """``repr(model)`` when it is one line of its own, else the class name."""
    if type(model).__repr__ is object.__repr__:
        return type(model).__name__
    text = repr(model)
    return text if "\n" not in text else type(model).__name__


class WeightedReward(RewardModel):
    """``sum_i weight_i * reward_i(images, prompts)``.

    ``terms``: a mapping ``{reward: weight}`` or a sequence of ``(reward, weight)`` pairs; each
    reward is a ``RewardModel`` or any callable (wrapped by ``as_reward``), each weight a finite
    number (negative weights make penalties). Every term is evaluated, so a term that rejects the
    prompts raises even when its weight is 0; an error names the term. The result is float32 on
    the images' device.
    """

    def __init__(self, terms: Mapping[Any, float] | Sequence[tuple[Any, float]]) -> None:
        if isinstance(terms, Mapping):
            pairs = list(terms.items())
        elif isinstance(terms, Sequence) and not isinstance(terms, str | bytes):
            pairs = list(terms)
        else:
            raise TypeError(
                f"terms must be a mapping {{reward: weight}} or a sequence of (reward, weight) pairs, got "
                f"{type(terms).__name__}"
            )
        if not pairs:
            raise ValueError("WeightedReward needs at least one (reward, weight) term")
        checked = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise TypeError(f"terms[{i}] = {pair!r} must be a (reward, weight) pair")
            model, weight = pair
            try:
                model = as_reward(model)
            except TypeError as e:
                raise TypeError(f"terms[{i}]: {e}") from e
            checked.append((model, _weight(weight, i)))
        self.terms: tuple[tuple[RewardModel, float], ...] = tuple(checked)

    @classmethod
    def examples(cls) -> list[WeightedReward]:
        return [
            cls([(_brightness, 1.0)]),
            cls({CallableReward(_brightness): 0.7, _redness: 0.3}),
            cls([(_brightness, 2.0), (_redness, -0.5), (_brightness, 0.25)]),
        ]

    def __repr__(self) -> str:
        return "WeightedReward(" + " + ".join(f"{w:g} * {_short(m)}" for m, w in self.terms) + ")"

    @typecheck
    def __call__(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]:
        check_reward_inputs(images, prompts)
        total = torch.zeros(images.shape[0], dtype=torch.float32, device=images.device)
        for i, (model, weight) in enumerate(self.terms):
            rewards = model(images, prompts)
            if not isinstance(rewards, Tensor) or tuple(rewards.shape) != (images.shape[0],):
                shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
                raise ValueError(
                    f"term {i} ({_short(model)}) returned {shape} for {images.shape[0]} images; a "
                    "RewardModel returns a float32 tensor [batch]"
                )
            if not torch.isfinite(rewards).all():
                raise ValueError(f"term {i} ({_short(model)}) returned a non-finite reward: {rewards}")
            total += weight * rewards.detach().to(device=images.device, dtype=torch.float32)
        return total


def _brightness(images: Tensor, prompts: Sequence[str]) -> Tensor:
    return images.mean(dim=(1, 2, 3))


def _redness(images: Tensor, prompts: Sequence[str]) -> Tensor:
    return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))
