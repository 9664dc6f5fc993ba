"""ShapeWorld quality of a NextStep-1 pipeline: ShapeEval per category of text-to-image samples on a
split, and the editing score. Every set is drawn from ``ShapeWorld(split, tasks=(task,), length=n,
seed=seed)``, so two evaluations with the same arguments see the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image as PILImage

from nxrecipes.data.shapeworld import ShapeWorld, to_pil
from nxrecipes.eval.shapeeval import edit_score, evaluate
from nxrecipes.nextstep1.generate import ImageSampling
from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
from nxrecipes.viz import image_grid

__all__ = ["default_sampling", "edit_accuracy", "sample_grid", "shapeeval"]


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
