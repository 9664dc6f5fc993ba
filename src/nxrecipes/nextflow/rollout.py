"""GRPO rollouts for NextFlow and the policy's log-probabilities of them, recomputed teacher-forced.

Shape legend: rows = samples (the G samples of a prompt consecutive), h, w = the grid of one scale,
tokens = the image tokens of the trained prefix (the first m scales, in schedule order), codes =
codebook size.

Generating an image is a Markov decision process over scales (paper Eq. 3): the state before scale
t is the prompt and the codes of scales < t, the action is scale t's grid of codes, and the policy
of each code is ``ImageSampling.policy`` — the model's code logits with classifier-free guidance
and temperature (top-k / top-p shape what the rollout draws but are left out of the policy so its
log-probabilities stay smooth). A ``Rollout`` records, per row, the prompt, the conditional and
unconditional prompt ``Example``s, the sampling settings (CFG included), every scale's sampled codes
— which are also the next scale's inputs, made from them by the model's code embeddings — their
log-probabilities at rollout time (π_old), the decoded images and the rewards.

``policy_log_probs`` recomputes the log-probabilities of the first m scales' codes under a model in
one teacher-forced forward with the block-causal mask: every row is the prompt followed by the
sampled image, the unconditional rows ride in the same batch when the rollout was guided, and the
forward stops after the m-th scale — later positions can influence nothing before them, so the
prefix's logits are exactly those of a full forward, and no gradient can reach a later scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from nxcore.reward.protocol import RewardModel
from nxrecipes.nextflow.generate import ImageSampling, generate_image_codes
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.nextflow.sequence import Example, Image, Text, collate
from nxrecipes.rl.grpo import group_advantages

__all__ = ["Rollout", "collect_rollout", "policy_log_probs", "prefix_length"]


@attrs.frozen(kw_only=True, eq=False)
class Rollout:
    """G samples per prompt (module docstring). ``codes`` / ``log_probs``: int64 / float32
    [rows, h_k, w_k] per scale; ``images`` [rows, 3, H, W] in [0, 1]; ``rewards`` float32 [rows]."""

    prompts: tuple[str, ...]
    cond: tuple[Example, ...]
    uncond: tuple[Example, ...]
    sampling: ImageSampling
    schedule: object
    codes: tuple[Tensor, ...]
    log_probs: tuple[Tensor, ...]
    images: Tensor
    rewards: Tensor
    group_size: int

    @property
    def rows(self) -> int:
        return len(self.prompts)

    @property
    def guided(self) -> bool:
        return self.sampling.guided(len(self.codes))

    def advantages(self, *, eps: float = 1e-4) -> Tensor:
        """[rows] Eq. 4 advantages: rewards normalised within each prompt's group."""
        return group_advantages(self.rewards.view(-1, self.group_size), eps=eps).reshape(-1)

    def prefix_log_probs(self, scales: int) -> Tensor:
        """[rows, tokens] the rollout-time log-probabilities of the first ``scales`` scales."""
        return torch.cat([lp.flatten(1) for lp in self.log_probs[:scales]], dim=1)


def prefix_length(schedule, scales: int) -> list[int]:
    """Tokens per scale of the first ``scales`` scales of ``schedule``."""
    return [h * w for h, w in tuple(schedule.steps)[:scales]]


@torch.no_grad()
def collect_rollout(pipeline: NextFlowPipeline, prompts: Sequence[str], reward: RewardModel, *,
                    group_size: int, sampling: ImageSampling, generator: torch.Generator | None = None
                    ) -> Rollout:
    """``group_size`` samples of each prompt through the KV-cached sampler, decoded and scored."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size = {group_size!r}; GRPO compares at least 2 samples per prompt")
    if not isinstance(reward, RewardModel):
        raise TypeError(
            f"reward must be a RewardModel (images, prompts -> [batch]), got {type(reward).__name__}; wrap a "
            "function in nxcore.reward.CallableReward"
        )
    rows = [p for p in prompts for _ in range(group_size)]
    encoded = {p: Text(pipeline.text_tokenizer.encode(p), loss=False) for p in prompts}
    cond = tuple(Example([encoded[p]]) for p in rows)
    uncond = tuple(Example() for _ in rows)
    out = generate_image_codes(pipeline.model, cond, pipeline.schedule, uncond=uncond, sampling=sampling,
                               generator=generator, keep_log_probs=True)
    images = pipeline.decode(out.codes)
    rewards = reward(images, rows).float().reshape(-1)
    return Rollout(prompts=tuple(rows), cond=cond, uncond=uncond, sampling=sampling,
                   schedule=pipeline.schedule, codes=tuple(out.codes), log_probs=tuple(out.log_probs or ()),
                   images=images, rewards=rewards.to(images.device), group_size=group_size)


def policy_log_probs(model: NextFlow, rollout: Rollout, scales: int) -> Tensor:
    """[rows, tokens] float32 log-probabilities under ``model`` of the rollout's codes of the first
    ``scales`` scales (module docstring); differentiable in the model's parameters."""
    steps = tuple(rollout.schedule.steps)
    if not isinstance(scales, int) or not 1 <= scales <= len(steps):
        raise ValueError(f"scales = {scales!r}; pick 1 .. {len(steps)} (the schedule's scales)")
    device = model.embed_tokens.weight.device
    n = rollout.rows

    def with_image(prompt: Example, b: int) -> Example:
        grids = [c[b] for c in rollout.codes]
        return Example([*prompt.parts, Image.of(grids, rollout.schedule)])

    examples = [with_image(p, b) for b, p in enumerate(rollout.cond)]
    guided = rollout.guided
    if guided:
        examples += [with_image(p, b) for b, p in enumerate(rollout.uncond)]
    batch = collate(examples, model.vocabulary).to(device)
    seq = batch.ids.shape[1]
    x = model.embed(batch.ids, batch.layouts, batch.images)
    positions = model.positions(batch.layouts, seq)
    mask = model.attention(batch.layouts, seq, dense=True)["attn_mask"]
    sizes = prefix_length(rollout.schedule, scales)
    (group,) = batch.images
    starts = torch.empty_like(group.starts)
    starts[group.rows] = group.starts
    end = int(starts.max()) + sum(sizes)
    hidden = model.run_layers(x[:, :end], positions[:, :end], attn_mask=mask[:, :, :end, :end])
    index = starts[:, None] + torch.arange(sum(sizes), device=device)
    picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    picked = torch.cat([model.refine_step(part, h, w) for part, (h, w)
                        in zip(picked.split(sizes, dim=1), steps, strict=False)], dim=1)
    logits = model.code_logits(picked)
    out, offset = [], 0
    for k, size in enumerate(sizes):
        part = logits[:, offset : offset + size]
        cond, un = part[:n].flatten(0, 1), [part[n:].flatten(0, 1)] if guided else []
        dist = rollout.sampling.policy(k, len(steps)).log_probs(cond, un, step=k, num_steps=len(steps))
        out.append(dist.gather(1, rollout.codes[k].reshape(-1, 1).to(device)).view(n, size))
        offset += size
    return torch.cat(out, dim=1)
