"""Reward models: images + prompts -> one float per image."""

from nxcore.reward.callable import CallableReward
from nxcore.reward.protocol import RewardModel

__all__ = ["CallableReward", "RewardModel"]
