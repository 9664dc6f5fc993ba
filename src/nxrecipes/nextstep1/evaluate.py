"""ShapeWorld quality of a NextStep-1 pipeline: ShapeEval per category of text-to-image samples on a
split, and the editing score. Every set is drawn from ``ShapeWorld(split, tasks=(task,), length=n,
seed=seed)``, so two evaluations with the same arguments see the same prompts.

``teacher_forced`` separates the head from the autoregression: every image token is sampled by the
head from the backbone's reading of the *true* preceding tokens (optionally perturbed by Gaussian noise
of std ``context_noise``), and the tokens so sampled are decoded together. Its ShapeEval bounds what
free-running generation could reach with this head; the fall with ``context_noise`` measures how
brittle the model is to context that is not exactly on the data, as its own samples never are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image as PILImage

from nxrecipes.data.shapeworld import ShapeWorld, to_pil
from nxrecipes.eval.shapeeval import edit_score, evaluate
from nxrecipes.nextstep1.data import RowBuilder
from nxrecipes.nextstep1.generate import ImageSampling
from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
from nxrecipes.viz import image_grid

__all__ = ["default_sampling", "edit_accuracy", "sample_grid", "shapeeval", "teacher_forced"]


def default_sampling(cfg: float = 3.0, method: str = "ode", *, cfg_img: float = 1.0,
                     steps: int = 20) -> ImageSampling:
    """The evaluation sampler of models trained here: the clean time grid, ``steps`` head evaluations
    per token, guidance ``cfg`` (and ``cfg_img`` when editing), independent noise per image."""
    return ImageSampling(cfg=cfg, cfg_img=cfg_img, num_sampling_steps=steps, timesteps="clean",
                         method=method, noise="independent")


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def shapeeval(pipeline: NextStep1Pipeline, split: str, n: int, *, size: int,
              sampling: ImageSampling | None = None, seed: int = 1, batch: int = 16) -> dict[str, Any]:
    """ShapeEval of ``n`` text-to-image prompts of ``split`` at ``size`` px: ``overall`` and
    ``categories`` (every requirement met), ``partial`` (the mean fraction of each prompt's
    requirements met) and ``drawn`` (``ShapeEvalReport.summary``)."""
    sampling = sampling or default_sampling()
    data = list(ShapeWorld(split=split, size=size, tasks=("t2i",), length=n, seed=seed))
    images = [to_pil(x) for chunk in _chunks(data, batch) for x in pipeline.text_to_image(
        [r.prompt for r in chunk], hw=(size, size), sampling=sampling, seed=seed, progress=False)]
    return evaluate(images, [r.spec for r in data]).summary()


@torch.no_grad()
def teacher_forced(pipeline: NextStep1Pipeline, split: str, n: int, *, size: int, context_noise: float = 0.0,
                   steps: int = 20, method: str = "ode", max_distractors: int | None = None, seed: int = 1,
                   batch: int = 16) -> dict[str, Any]:
    """ShapeEval (``shapeeval``'s summary) of ``n`` text-to-image examples of ``split`` at ``size`` px
    whose every token is sampled given the true preceding tokens (module docstring); the context
    read by the backbone gets noise of std ``context_noise``; ``steps``/``method``: the head's
    sampler (no guidance). ``max_distractors``: as ``ShapeWorld``'s (None: its default)."""
    if not (isinstance(context_noise, int | float) and context_noise >= 0):
        raise ValueError(f"context_noise must be a number >= 0, got {context_noise!r}")
    extra = {} if max_distractors is None else {"max_distractors": max_distractors}
    data = list(ShapeWorld(split=split, size=size, tasks=("t2i",), length=n, seed=seed, **extra))
    model, device = pipeline.model, pipeline.device
    builder = RowBuilder(text=pipeline.text_tokenizer, image_tokenizer=pipeline.image_tokenizer,
                         drop_text_prob=0.0)
    sampler = ImageSampling(num_sampling_steps=steps, method=method, timesteps="clean").sampler()
    generator = torch.Generator(device).manual_seed(seed)
    grid = pipeline.grid((size, size))
    images = []
    for chunk in _chunks(data, batch):
        b = builder.build(chunk, list(range(len(chunk)))).to(device)
        context = b.latents + context_noise * torch.randn(b.latents.shape, generator=generator, device=device)
        hidden = model(b.ids, context.to(model.embed_tokens.weight.dtype), attention_mask=b.attention_mask)
        cond = model.image_conditions(hidden, b.ids)
        latents = sampler.sample(model.image_head.predict(cond), generator=generator)
        images += [to_pil(x) for x in pipeline.decode(latents.view(len(chunk), *grid, -1))]
    return evaluate(images, [r.spec for r in data]).summary()


def edit_accuracy(pipeline: NextStep1Pipeline, n: int, *, size: int, sampling: ImageSampling | None = None,
                  seed: int = 1, batch: int = 16) -> float:
    """The fraction of ``n`` test-split edits at ``size`` px that ``edit_score`` accepts."""
    sampling = sampling or default_sampling()
    edits = list(ShapeWorld(split="test", size=size, tasks=("edit",), length=n, seed=seed))
    ok = []
    for chunk in _chunks(edits, batch):
        out = pipeline.edit([e.source_image for e in chunk], [e.instruction for e in chunk],
                            sampling=sampling, seed=seed, progress=False)
        ok += [edit_score(e.source_image, to_pil(x), e.edit).ok for e, x in zip(chunk, out, strict=True)]
    return sum(ok) / len(ok)


def sample_grid(pipeline: NextStep1Pipeline, prompts: Sequence[str], *, size: int,
                sampling: ImageSampling | None = None, seed: int = 0, title: str | None = None
                ) -> PILImage.Image:
    """Generated ``size`` px images with their prompts underneath, eight per row."""
    images = pipeline.text_to_image(list(prompts), hw=(size, size), sampling=sampling or default_sampling(),
                                    seed=seed, progress=False)
    return image_grid([to_pil(x) for x in images], list(prompts), columns=min(8, len(prompts)), tile=128,
                      title=title)
