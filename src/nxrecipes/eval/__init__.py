"""Evaluation: ShapeEval (GenEval-style scoring on ShapeWorld), reconstruction metrics, FLOPs, and
the reward models built on it (``parse_reward``; the learned reward in ``eval.learned_reward``)."""

from nxrecipes.eval.rewards import REWARD_FORMS, parse_reward

__all__ = ["REWARD_FORMS", "parse_reward"]
