"""GRPO for next-scale generation (NextFlow §3.2.5).

Shape legend: groups = prompts of a step, group = samples per prompt (G), rows = groups · group
(the samples of a prompt consecutive), tokens = the image tokens a loss reads (the first m scales,
in schedule order), scales = the m scales they belong to.

- ``group_advantages`` (Eq. 4): A_i = (R_i - mean_G R) / std_G R within each group; the std is the
  sample (n - 1) std plus ``eps``, so a group whose rewards are all equal gets A = 0 (no signal)
  instead of a division by zero.
- ``grpo_loss`` (Eq. 5, negated to minimise): -(1/rows) Σ_i J_i + β KL, with scale weights
  k_t = (h_t w_t)^-alpha, the pretraining reweighting (Eq. 2). ``ratio`` picks the action:
  - ``"scale"`` — Eq. 5 as written: one action per scale, ratio R_t = exp(Σ_tokens Δlog p),
    J = Σ_t k_t min(R_t A, clip(R_t, 1-ε, 1+ε) A) / Σ_t k_t;
  - ``"token"`` (default) — every token of a scale is an action of weight k_t, as GRPO for language
    models clips per token: J = Σ_j k_t(j) min(r_j A, clip(r_j) A) / Σ_j k_t(j). A scale's ratio
    is a product of h·w token ratios, which leaves [1-ε, 1+ε] after any sizeable update on a large
    scale; per-token ratios keep the clip meaningful there.
- ``kl_estimate``: the k3 estimator exp(ref - logp) - (ref - logp) - 1 per sampled token — unbiased
  for KL(π_θ ‖ π_ref) and never negative — averaged with the same token weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nxcore.typing import Float, typecheck

__all__ = ["group_advantages", "grpo_loss", "kl_estimate"]

RATIOS = ("token", "scale")


@typecheck
def group_advantages(rewards: Float[Tensor, "groups group"], *, eps: float = 1e-4
                     ) -> Float[Tensor, "groups group"]:
    """Eq. 4 within each row of ``rewards`` (module docstring)."""
    if rewards.shape[1] < 2:
        raise ValueError(
            f"rewards is {tuple(rewards.shape)}: a group needs at least 2 samples to normalise "
            "advantages within it; raise the group size"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards hold a NaN or inf; the reward model must return finite values")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def _token_weights(scale_sizes: Sequence[int], alpha: float, device: torch.device) -> tuple[Tensor, Tensor]:
    sizes = torch.tensor([int(n) for n in scale_sizes], dtype=torch.float32, device=device)
    if sizes.numel() == 0 or bool((sizes < 1).any()):
        raise ValueError(f"scale_sizes must hold one token count >= 1 per trained scale, got {scale_sizes!r}")
    per_scale = sizes.pow(-float(alpha))
    return per_scale, per_scale.repeat_interleave(sizes.long())


@typecheck
def kl_estimate(log_probs: Float[Tensor, "rows tokens"], ref_log_probs: Float[Tensor, "rows tokens"],
                token_weights: Float[Tensor, " tokens"]) -> Float[Tensor, " rows"]:
    """The k3 KL estimate of each row, a weighted mean over its tokens (module docstring)."""
    delta = ref_log_probs - log_probs
    per_token = torch.exp(delta) - delta - 1
    return (per_token * token_weights).sum(dim=1) / token_weights.sum()


@typecheck
def grpo_loss(
    log_probs: Float[Tensor, "rows tokens"],
    old_log_probs: Float[Tensor, "rows tokens"],
    advantages: Float[Tensor, " rows"],
    *,
    scale_sizes: Sequence[int],
    alpha: float = 0.9,
    clip: float = 0.2,
    beta: float = 0.0,
    ref_log_probs: Tensor | None = None,
    ratio: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """The loss to minimise and metrics (``objective``, ``kl``, ``clip_fraction``, ``ratio_mean``);
    ``log_probs`` carry the gradient, the rest are constants (module docstring)."""
    if ratio not in RATIOS:
        raise ValueError(f"ratio = {ratio!r}; pick one of {RATIOS}")
    if not (isinstance(clip, int | float) and 0 < clip < 1):
        raise ValueError(f"clip = {clip!r} must be in (0, 1) (the paper's ε; 0.2 is usual)")
    if not (isinstance(beta, int | float) and beta >= 0):
        raise ValueError(f"beta = {beta!r} must be >= 0 (0 turns the KL term off)")
    if beta > 0 and ref_log_probs is None:
        raise ValueError("beta > 0 needs ref_log_probs, the reference policy's log-probabilities")
    per_scale, weights = _token_weights(scale_sizes, alpha, log_probs.device)
    if weights.numel() != log_probs.shape[1]:
        raise ValueError(
            f"scale_sizes {list(scale_sizes)} sum to {weights.numel()} tokens but log_probs has "
            f"{log_probs.shape[1]} per row; give the token count of each trained scale"
        )
    if old_log_probs.shape != log_probs.shape:
        raise ValueError(f"old_log_probs is {tuple(old_log_probs.shape)}, log_probs {tuple(log_probs.shape)}")
    if advantages.shape[0] != log_probs.shape[0]:
        raise ValueError(f"{advantages.shape[0]} advantages for {log_probs.shape[0]} rows; give one per row")
    delta = log_probs - old_log_probs.detach()
    adv = advantages.detach()[:, None]
    if ratio == "scale":
        sums = [part.sum(dim=1) for part in torch.split(delta, [int(n) for n in scale_sizes], dim=1)]
        delta, w = torch.stack(sums, dim=1), per_scale
    else:
        w = weights
    r = torch.exp(delta)
    clipped = r.clamp(1 - clip, 1 + clip)
    term = torch.minimum(r * adv, clipped * adv)
    objective = (term * w).sum(dim=1) / w.sum()
    loss = -objective.mean()
    metrics = {
        "objective": float(objective.mean().detach()),
        "clip_fraction": float(((r - clipped).abs() > 0).float().mean()),
        "ratio_mean": float(r.detach().mean()),
    }
    if ref_log_probs is not None:
        kl = kl_estimate(log_probs, ref_log_probs.detach(), weights).mean()
        metrics["kl"] = float(kl.detach())
        if beta > 0:
            loss = loss + beta * kl
    return loss, metrics
