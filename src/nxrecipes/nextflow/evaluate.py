"""ShapeWorld quality of a NextFlow pipeline: ShapeEval per category on the test split and on the
held-out-combination split, the editing score, the caption score, and ShapeEval on the
world-knowledge prompts with and without think-before-drawing. Every set is drawn from
``ShapeWorld(split, tasks=(task,), length=n, seed=seed)``, so two evaluations with the same
arguments see the same prompts.
"""

from __future__ import annotations

from typing import Any

import attrs
from PIL import Image as PILImage

from nxrecipes.data.shapeworld import ShapeWorld, to_pil
from nxrecipes.eval.shapeeval import caption_score, edit_score, evaluate
from nxrecipes.nextflow.generate import ImageSampling
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.viz import image_grid

__all__ = ["EvalSettings", "default_sampling", "evaluate_pipeline", "sample_grid"]


def default_sampling(num_steps: int, cfg: float = 3.0) -> ImageSampling:
    """The evaluation sampler: guidance ``cfg`` on every scale but the first, top-k 8, temperature 1."""
    return ImageSampling(cfg=(1.0,) + (cfg,) * (num_steps - 1), top_k=8)


@attrs.frozen(kw_only=True)
class EvalSettings:
    """How many prompts of each set (``n`` t2i per split, ``n_edit``, ``n_caption``, ``n_knowledge``),
    the data ``seed``, the batch size and the image sampler (None: ``default_sampling``)."""

    n: int = 64
    n_edit: int = 32
    n_caption: int = 32
    n_knowledge: int = 32
    seed: int = 1
    batch: int = 16
    sampling: ImageSampling | None = None
    think: bool = True


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_pipeline(pipeline: NextFlowPipeline, settings: EvalSettings | None = None) -> dict[str, Any]:
    """The quality report (module docstring) as a JSON-ready dict."""
    s = settings or EvalSettings()
    sampling = s.sampling or default_sampling(len(pipeline.schedule.steps))
    size = pipeline.image_tokenizer.downsample * pipeline.schedule.steps[-1][0]
    out: dict[str, Any] = {}
    for split in ("test", "heldout"):
        data = [r for r in ShapeWorld(split=split, size=size, tasks=("t2i",), length=s.n, seed=s.seed)]
        images = []
        for chunk in _batches(data, s.batch):
            images.append(pipeline.text_to_image([r.prompt for r in chunk], sampling=sampling, seed=s.seed))
        pictures = [to_pil(x) for batch in images for x in batch]
        report = evaluate(pictures, [r.spec for r in data])
        out[f"shapeeval_{split}"] = report.summary()
    if s.n_edit:
        edits = list(ShapeWorld(split="test", size=size, tasks=("edit",), length=s.n_edit, seed=s.seed))
        ok = []
        for chunk in _batches(edits, s.batch):
            edited = pipeline.edit([e.source_image for e in chunk], [e.instruction for e in chunk],
                                   sampling=sampling, seed=s.seed)
            pairs = zip(chunk, edited, strict=True)
            ok += [edit_score(e.source_image, to_pil(x), e.edit).ok for e, x in pairs]
        out["edit_accuracy"] = sum(ok) / len(ok)
    if s.n_caption:
        caps = list(ShapeWorld(split="test", size=size, tasks=("captioning",), length=s.n_caption,
                               seed=s.seed))
        written = [c for chunk in _batches(caps, s.batch) for c in pipeline.caption([r.image for r in chunk])]
        scores = [_caption(w, r.scene) for w, r in zip(written, caps, strict=True)]
        out["caption_exact"] = sum(exact for exact, _ in scores) / len(scores)
        out["caption_f1"] = sum(f1 for _, f1 in scores) / len(scores)
    if s.n_knowledge:
        riddles = list(ShapeWorld(split="test", size=size, tasks=("world_knowledge",), length=s.n_knowledge,
                                  seed=s.seed))
        plain, thought = [], []
        for chunk in _batches(riddles, s.batch):
            prompts = [r.prompt for r in chunk]
            plain += list(pipeline.text_to_image(prompts, sampling=sampling, seed=s.seed))
            if s.think:
                thought += list(pipeline.think_then_draw(prompts, sampling=sampling, seed=s.seed)[1])
        specs = [r.spec for r in riddles]
        out["knowledge_plain"] = evaluate([to_pil(x) for x in plain], specs).overall
        if s.think:
            out["knowledge_think"] = evaluate([to_pil(x) for x in thought], specs).overall
    return out


def _caption(written: str, scene) -> tuple[bool, float]:
    """(exact, F1) of a generated caption; one that states nothing readable scores (False, 0)."""
    try:
        result = caption_score(written, scene)
    except ValueError:  # empty, or words outside the caption grammar
        return False, 0.0
    return result.exact, result.f1


def sample_grid(pipeline: NextFlowPipeline, prompts: list[str], *, sampling: ImageSampling | None = None,
                seed: int = 0, title: str | None = None) -> PILImage.Image:
    """Generated images with their prompts underneath."""
    sampling = sampling or default_sampling(len(pipeline.schedule.steps))
    images = pipeline.text_to_image(prompts, sampling=sampling, seed=seed)
    return image_grid([to_pil(x) for x in images], prompts, columns=min(8, len(prompts)), tile=128,
                      title=title)
