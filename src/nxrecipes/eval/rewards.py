"""``parse_reward``: a reward model from a short text, for command lines.

Forms (``REWARD_FORMS``)::

    shapeeval                          ShapeEvalReward(): ShapeEval partial credit
    shapeeval-strict                   ShapeEvalReward(partial_credit=False): 1 or 0
    shapeeval:counting=1,position=2    category weights (others weigh 0); also after shapeeval-strict
    learned=PATH                       a LearnedShapeReward checkpoint directory (from_pretrained)
    0.7*shapeeval+0.3*learned=PATH     weighted sums: terms joined by "+", each with an optional
                                       "WEIGHT*" prefix (weight 1 when absent)

A single term without a weight gives that reward itself; a weight or a "+" gives a
``WeightedReward``. Spaces around "+" and "*" are ignored. A "+" inside a path is read as a
separator, so such paths cannot be named here.
"""

from __future__ import annotations

import math
import re

import torch

from nxcore.reward import RewardModel, WeightedReward
from nxrecipes.eval.shapeeval.reward import ShapeEvalReward

__all__ = ["REWARD_FORMS", "parse_reward"]

REWARD_FORMS = (
    "shapeeval",
    "shapeeval-strict",
    "shapeeval:CATEGORY=WEIGHT,... (also shapeeval-strict:...)",
    "learned=PATH",
    "WEIGHT*TERM",
    "TERM+TERM+...",
)
_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*(.*)$", re.DOTALL)
_SPLIT = re.compile(r"(?<!\d[eE])\+")


def _error(part: str, spec: str, why: str) -> ValueError:
    return ValueError(
        f"cannot read reward term {part!r} of {spec!r}: {why}; accepted forms: {', '.join(REWARD_FORMS)}"
    )


def _categories(text: str, part: str, spec: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            eq = ""
        if not eq or not name:
            raise _error(part, spec, f"category weight {item.strip()!r} is not CATEGORY=NUMBER")
        if name in weights:
            raise _error(part, spec, f"category {name!r} is given twice")
        weights[name] = weight
    return weights


def _term(part: str, spec: str, device: torch.device | str) -> RewardModel:
    text = part.strip()
    if text.startswith("learned="):
        path = text[len("learned="):].strip()
        if not path:
            raise _error(part, spec, "learned= needs a checkpoint directory, e.g. learned=out/reward")
        from nxcore.checkpoint import from_pretrained
        from nxrecipes.eval.learned_reward.model import LearnedShapeRewardConfig

        model = from_pretrained(path, config_type=LearnedShapeRewardConfig, device=device)
        return model.eval()
    name, colon, rest = text.partition(":")
    name = name.strip()
    if name not in ("shapeeval", "shapeeval-strict"):
        raise _error(part, spec, f"unknown reward {name!r}")
    strict = name == "shapeeval-strict"
    if not colon:
        return ShapeEvalReward(partial_credit=not strict)
    try:
        return ShapeEvalReward(partial_credit=not strict, categories=_categories(rest, part, spec))
    except ValueError as e:
        if str(e).startswith("cannot read reward term"):
            raise
        raise _error(part, spec, str(e)) from e


def parse_reward(spec: str, *, device: torch.device | str = "cpu") -> RewardModel:
    """The reward model ``spec`` names (forms in the module docstring); learned rewards are loaded
    onto ``device``. A ``ValueError`` names the part it cannot read and lists the accepted forms."""
    if not isinstance(spec, str):
        raise TypeError(f"reward spec must be a str such as 'shapeeval', got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError(f"reward spec is empty; accepted forms: {', '.join(REWARD_FORMS)}")
    terms: list[tuple[RewardModel, float]] = []
    weighted = False
    for part in _SPLIT.split(spec):
        if not part.strip():
            raise _error(part, spec, "empty term (a '+' with nothing on one side)")
        weight, body = 1.0, part
        match = _WEIGHT.match(part)
        if match is not None:
            weight, body, weighted = float(match.group(1)), match.group(2), True
            if not math.isfinite(weight):
                raise _error(part, spec, f"weight {match.group(1)} is not finite")
        elif "*" in part and not part.strip().startswith("learned="):
            raise _error(part, spec, "the weight before '*' is not a number")
        terms.append((_term(body, spec, device), weight))
    if len(terms) == 1 and not weighted:
        return terms[0][0]
    return WeightedReward(terms)
