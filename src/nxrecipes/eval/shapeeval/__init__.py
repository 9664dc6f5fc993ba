"""ShapeEval: GenEval-style scoring of images against ShapeWorld prompts, edits and captions, with a
deterministic detector (colour unmixing to the palette, connected components, shape fitting).

- ``detect(image) -> list[Detection]`` (``detect.py``)
- ``spec_satisfied``, ``partial_credit``, ``evaluate -> ShapeEvalReport``, ``edit_score``,
  ``caption_score`` (``score.py``)
- ``ShapeEvalReward``, the ``RewardModel`` for RL (``reward.py``)
"""

from nxrecipes.eval.shapeeval.detect import ACCEPTED_FORMS, detect
from nxrecipes.eval.shapeeval.reward import ShapeEvalReward
from nxrecipes.eval.shapeeval.score import (
    CaptionResult,
    EditResult,
    SampleResult,
    ShapeEvalReport,
    caption_score,
    edit_score,
    evaluate,
    partial_credit,
    requirements_met,
    spec_satisfied,
)

__all__ = [
    "ACCEPTED_FORMS",
    "CaptionResult",
    "EditResult",
    "SampleResult",
    "ShapeEvalReport",
    "ShapeEvalReward",
    "caption_score",
    "detect",
    "edit_score",
    "evaluate",
    "partial_credit",
    "requirements_met",
    "spec_satisfied",
]
