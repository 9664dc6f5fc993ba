"""Reinforcement learning for next-scale image generators: GRPO's group advantages (NextFlow Eq. 4)
and its clipped, scale-reweighted objective with a KL term (Eq. 5). Model-agnostic: the inputs are
per-token log-probabilities and rewards; ``nxrecipes.nextflow.grpo`` supplies them for NextFlow."""

from nxrecipes.rl.grpo import group_advantages, grpo_loss, kl_estimate

__all__ = ["group_advantages", "grpo_loss", "kl_estimate"]
