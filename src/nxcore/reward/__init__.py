"""Reward models: images + prompts -> one float per image."""

from nxcore.reward.callable import CallableReward
from nxcore.reward.protocol import RewardModel
from nxcore.reward.weighted import WeightedReward, as_reward

__all__ = ["CallableReward", "RewardModel", "WeightedReward", "as_reward"]
