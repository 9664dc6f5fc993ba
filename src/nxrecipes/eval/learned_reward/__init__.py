"""A learned ShapeWorld reward: a small network trained to predict ShapeEval's partial credit.

- ``LearnedShapeReward``, ``LearnedShapeRewardConfig`` (``model.py``): the ``RewardModel``; save
  and load it with ``save_pretrained`` / ``from_pretrained`` like any component.
- ``train_learned_reward``, ``measure_agreement`` (``train.py``).
- ``python -m nxrecipes.eval.learned_reward --minutes 1.5 --threads 1 --out DIR`` trains one, saves
  it and prints its agreement with ``ShapeEvalReward`` on held-out images.
"""

from nxrecipes.eval.learned_reward.model import LearnedShapeReward, LearnedShapeRewardConfig
from nxrecipes.eval.learned_reward.train import measure_agreement, train_learned_reward

__all__ = ["LearnedShapeReward", "LearnedShapeRewardConfig", "measure_agreement", "train_learned_reward"]
