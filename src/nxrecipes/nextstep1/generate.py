"""KV-cached generation of NextStep-1 image tokens (official ``generate_image`` / ``decoding``, fact
sheet §4.2): prefill the prompt rows once into a static cache, then one decode step per image token.

Shape legend: rows = branches x images (``PromptBatch``: conditional rows first, then each
unconditional branch), images = images generated, seq = prompt tokens, h, w = the token grid,
dim = model width, latent_dim = one image token (64).

Per image token k (raster order, h*w tokens in all)::

    c      = model.condition(last hidden state of every row, k)              [rows, dim]
    token  = FlowSampler over image_head's velocity fields, CFG on velocities  [images, latent_dim]
             (the branches' fields join: every row through the head in one call per sampler step;
             the fields are those of ``image_head.snapshot()``, made once per generation)
    token  = token in the model dtype; LayerNorm over latent_dim (no affine, eps 1e-6) if use_norm
    hidden = one decode step of image_in_projector(token), replicated over the branches

The cache is sized prompt + h*w tokens once (upstream's ``StaticCache``); positions continue from
the cache length (padding-agnostic, as upstream), left padding stays masked.

Noise (``ImageSampling.noise``):

- ``"tiled"`` (upstream, default): every draw is one fp32 ``randn(num_images_per_caption,
  latent_dim)`` tiled over the captions (``FlowSampler(noise_repeat=...)``), so image j of every
  caption sees the same noise and a caption's images do not depend on the rest of the batch. With a
  generator on the model's device seeded with upstream's seed, the draws are upstream's (same
  shapes, dtype and order; checked on the CPU against official ``generate_image`` runs by
  ``benchmarks/nextstep1_parity.py``: same tokens to ~2e-6 in fp32).
- ``"independent"``: one draw of [images, latent_dim] per sampler step, every image its own noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nxcore.config import boolean, finite_number, integer, one_of
from nxcore.sampler import ConstantGuidance, FlowSampler, LinearDecay
from nxcore.typing import Float
from nxrecipes.nextstep1.model import NextStep1
from nxrecipes.nextstep1.prompt import PromptBatch, guidance_branches

__all__ = [
    "TOKEN_NORM_EPS",
    "ImageSampling",
    "LatentGeneration",
    "generate_latents",
    "teacher_forced_conditions",
]

TOKEN_NORM_EPS = 1e-6
"""eps of the ``use_norm`` LayerNorm of every sampled token (upstream)."""


@attrs.frozen(kw_only=True)
class ImageSampling:
    """How every image token is sampled; the defaults are upstream ``generate_image``'s.

    ``cfg`` text guidance weight and ``cfg_img`` image guidance weight (editing), 1 = off;
    ``cfg_schedule`` "constant" or "linear" (GH-v1's ``1 + (g - 1)(N - k) / N`` over the N tokens,
    ``nxcore.sampler.LinearDecay``, for both weights); ``timesteps_shift`` (> 0, 1 = none),
    ``num_sampling_steps`` head evaluations per token, ``timesteps`` "nextstep1" (upstream grid, for
    official checkpoints) or "clean", ``method`` "sde" (upstream) or "ode" (``FlowSampler``);
    ``use_norm`` LayerNorm of each sampled token; ``noise`` "tiled" or "independent" (module docstring).

    Upstream example values: ``official_t2i()`` (NextStep-1-Large) and ``official_edit()``
    (NextStep-1-Large-Edit).
    """

    cfg: float = attrs.field(default=1.0, validator=finite_number())
    cfg_img: float = attrs.field(default=1.0, validator=finite_number())
    cfg_schedule: str = attrs.field(default="constant", validator=one_of("constant", "linear"))
    timesteps_shift: float = attrs.field(default=1.0, validator=finite_number(above=0))
    num_sampling_steps: int = attrs.field(default=20, validator=integer(at_least=1))
    timesteps: str = attrs.field(default="nextstep1", validator=one_of("nextstep1", "clean"))
    method: str = attrs.field(default="sde", validator=one_of("sde", "ode"))
    use_norm: bool = attrs.field(default=False, validator=boolean())
    noise: str = attrs.field(default="tiled", validator=one_of("tiled", "independent"))

    @classmethod
    def official_t2i(cls, **changes) -> ImageSampling:
        """``example.py``'s text-to-image settings: cfg 7.5, shift 1, 50 steps, use_norm."""
        return cls(**{"cfg": 7.5, "timesteps_shift": 1.0, "num_sampling_steps": 50, "use_norm": True,
                      **changes})

    @classmethod
    def official_edit(cls, **changes) -> ImageSampling:
        """``example.py``'s editing settings: cfg 7.5, cfg_img 2, shift 3.2, 50 steps, use_norm."""
        return cls(**{"cfg": 7.5, "cfg_img": 2.0, "timesteps_shift": 3.2, "num_sampling_steps": 50,
                      "use_norm": True, **changes})

    @property
    def branches(self) -> int:
        """Prompt rows per image these weights need (``guidance_branches``)."""
        return guidance_branches(self.cfg, self.cfg_img)

    def sampler(self, per_caption: int = 1) -> FlowSampler:
        """The ``FlowSampler`` of every image token (the guidance schedules take the token index);
        ``per_caption``: images per caption, the tile of ``noise="tiled"``."""
        schedule = ConstantGuidance if self.cfg_schedule == "constant" else LinearDecay
        return FlowSampler(
            num_steps=self.num_sampling_steps, shift=self.timesteps_shift, method=self.method,
            timesteps=self.timesteps, guidance=schedule(self.cfg), image_guidance=schedule(self.cfg_img),
            noise_repeat=per_caption if self.noise == "tiled" else None,
        )


@attrs.frozen(eq=False)
class LatentGeneration:
    """``latents`` [images, h, w, latent_dim] in the model dtype (after ``use_norm``), ready for
    the image tokenizer's ``decode``; ``conditions`` [h*w, rows, dim], the head condition of every
    row at every token (only when asked for: the teacher-forcing check)."""

    latents: Float[Tensor, "images h w latent_dim"]
    conditions: Float[Tensor, "tokens rows dim"] | None = None


def _check(model: object, prompts: object, sampling: ImageSampling) -> None:
    if not isinstance(model, NextStep1):
        raise TypeError(f"model must be a NextStep1, got {type(model).__name__}")
    if not isinstance(prompts, PromptBatch):
        raise TypeError(f"prompts must be a PromptBatch (build_prompts), got {type(prompts).__name__}")
    if not isinstance(sampling, ImageSampling):
        raise TypeError(f"sampling must be an ImageSampling, got {type(sampling).__name__}")
    if sampling.branches > prompts.branches:
        raise ValueError(
            f"sampling guides with cfg = {sampling.cfg}, cfg_img = {sampling.cfg_img} ({sampling.branches} "
            f"rows per image) but the prompts hold {prompts.branches}; build them with build_prompts(..., "
            f"cfg={sampling.cfg}, cfg_img={sampling.cfg_img})"
        )


@torch.no_grad()
def generate_latents(
    model: NextStep1,
    prompts: PromptBatch,
    *,
    sampling: ImageSampling | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    keep_conditions: bool = False,
) -> LatentGeneration:
    """Image tokens for every image of ``prompts`` (module docstring). The prompts' branches are
    mixed with ``sampling``'s weights (weights of 1 make a branch inert). ``generator`` (default: one
    seeded from the global RNG) should live on the model's device for upstream's draws."""
    sampling = sampling or ImageSampling()
    _check(model, prompts, sampling)
    device = model.embed_tokens.weight.device
    if generator is None:
        generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, ())))
    prompts = prompts.to(device)
    h, w = prompts.grid
    total = h * w
    rows, seq = prompts.ids.shape
    n, k = prompts.images, prompts.branches
    caches = model.new_caches(rows, seq + total)
    mask = torch.ones(rows, seq + total, dtype=torch.bool, device=device)
    mask[:, :seq] = prompts.attention_mask
    hidden = model(prompts.ids, prompts.context, attention_mask=mask[:, :seq], caches=caches)[:, -1]
    use_index = model.gen_pos_embed is not None
    sampler = sampling.sampler(prompts.per_caption)
    head = model.image_head.snapshot()  # the head's inference form, built once per generation
    tokens, kept = [], []
    for step in tqdm(range(total), desc="image tokens", disable=not progress, leave=False):
        cond = model.condition(hidden, step if use_index else None)
        if keep_conditions:
            kept.append(cond)
        fields = [head.predict(branch) for branch in cond.chunk(k)]
        token = sampler.sample(fields[0], fields[1:], step=step, num_steps=total, generator=generator)
        token = token.to(cond.dtype)
        if sampling.use_norm:
            token = F.layer_norm(token, token.shape[-1:], None, None, TOKEN_NORM_EPS)
        tokens.append(token)
        if step + 1 < total:
            x = model.image_in_projector(token)
            x = (torch.cat([x] * k) if k > 1 else x)[:, None]
            hidden = model.forward_embeds(x, attention_mask=mask[:, : seq + step + 1], caches=caches)[:, -1]
    latents = torch.stack(tokens, dim=1).view(n, h, w, -1)
    return LatentGeneration(latents, torch.stack(kept) if keep_conditions else None)


@torch.no_grad()
def teacher_forced_conditions(
    model: NextStep1, prompts: PromptBatch, latents: Tensor
) -> Float[Tensor, "tokens rows dim"]:
    """The head conditions of every row at every token from one forward (no cache) over the final
    sequence: the prompt, then h*w placeholders holding ``latents`` [images, h, w, latent_dim] in
    every branch. Equals ``generate_latents(..., keep_conditions=True).conditions`` (to rounding)."""
    device = model.embed_tokens.weight.device
    prompts = prompts.to(device)
    h, w = prompts.grid
    total = h * w
    placeholder = model.config.image_placeholder_id
    rows, seq = prompts.ids.shape
    ids = torch.cat([prompts.ids, torch.full((rows, total), placeholder, device=device)], dim=1)
    ones = torch.ones(rows, total, dtype=torch.bool, device=device)
    mask = torch.cat([prompts.attention_mask, ones], dim=1)
    generated = latents.to(device).reshape(prompts.images, total, -1).repeat(prompts.branches, 1, 1)
    per_row = _row_context(prompts, placeholder, generated.shape[-1])
    context = torch.cat([torch.cat([c.to(g.dtype), g]) for c, g in zip(per_row, generated, strict=True)])
    hidden = model(ids, context, attention_mask=mask)
    index = torch.arange(total, device=device) if model.gen_pos_embed is not None else None
    at = hidden[:, seq - 1 : seq - 1 + total].transpose(0, 1)  # [tokens, rows, dim]
    return model.condition(at, None if index is None else index[:, None].expand(total, rows))


def _row_context(prompts: PromptBatch, placeholder: int, latent_dim: int) -> Sequence[Tensor]:
    """The prompt's context latents split by row."""
    counts = (prompts.ids == placeholder).sum(dim=1).tolist()
    if prompts.context is None:
        return [prompts.ids.new_zeros((0, latent_dim), dtype=torch.float32)] * len(counts)
    return list(prompts.context.split(counts))
