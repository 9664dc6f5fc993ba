"""Training and measuring ``LearnedShapeReward`` on ShapeWorld.

Data: a pool of ``pool`` rendered ShapeWorld scenes, sample ``i`` drawn from its own generator
(``seed``, stream 0, ``i``) the first time a step asks for it and kept: 80% are drawn for a random
prompt spec (``scenes.scene_for_spec``, which adds distractors), 17% are random scenes, 3% empty,
half of them on a varied background; a step mirrors an image left-right with probability 1/2 (the
truth mirrored with it). Each image is paired with ``prompts_per_image`` specs: its own (35%), a
perturbation of it (40%: another shape, colour, count or relation, the objects swapped, or another
spec of the category) or a random spec (25%). The target of a pair is ShapeEval's partial credit
of that spec read off the scene's truth (``score.partial_credit`` on the objects a perfect
detector would report), which is exact and costs microseconds where the detector costs
milliseconds.

Loss: the scorer's BCE against the credit, plus the encoder's maps against the truth (the cell of
each object's centre: objectness BCE, colour and shape cross-entropy, offset L1). AdamW with a
short warmup and a cosine decay over the run (``steps`` or ``minutes``, whichever ends first).

``measure_agreement`` renders held-out scenes (stream 1, never used in training) with their own,
perturbed and random prompts and compares the model with ``ShapeEvalReward`` on the images.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nxcore.checkpoint import save_pretrained
from nxrecipes.data.shapeworld.captions import prompt_for_spec
from nxrecipes.data.shapeworld.render import render, to_float
from nxrecipes.data.shapeworld.scenes import random_scene, random_spec, scene_for_spec
from nxrecipes.data.shapeworld.spec import Detection, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import COLOURS, RELATIONS, SHAPES, Scene
from nxrecipes.eval.learned_reward.model import (
    LearnedShapeReward,
    LearnedShapeRewardConfig,
    SpecBatch,
    spec_batch,
)
from nxrecipes.eval.shapeeval.reward import ShapeEvalReward
from nxrecipes.eval.shapeeval.score import partial_credit

__all__ = [
    "Batch",
    "SamplePool",
    "loss_terms",
    "make_batch",
    "measure_agreement",
    "perturb_spec",
    "train_learned_reward",
]

OBJECTNESS_WEIGHT = 4.0  # the objectness BCE averages over every cell, most of them empty
WARMUP_STEPS = 20
FINAL_LR_FRACTION = 0.05
SUCCESS_THRESHOLD = 5 / 6  # halfway between full credit and the largest partial credit (2/3)
_TRAIN_STREAM, _EVAL_STREAM, _PAIRING_STREAM = 0, 1, 2  # SeedSequence streams under a seed


# --- data ------------------------------------------------------------------------------------

def perturb_spec(spec: Spec, rng: np.random.Generator) -> Spec:
    """A spec of the same category that differs from ``spec`` in one way: a query's shape or
    colour, a count, the relation, the order of a position prompt's objects, or a fresh spec of
    the category. Always one a prompt can say (``prompt_for_spec`` accepts it)."""
    queries, relation = list(spec.objects), spec.relation
    ways = ["shape", "fresh"]
    if any(q.colour is not None for q in queries):
        ways.append("colour")
    if spec.category == "counting":
        ways.append("count")
    if relation is not None:
        ways += ["relation", "swap"]
    way = ways[rng.integers(len(ways))]
    if way == "fresh":
        return random_spec(rng, spec.category)
    if way == "shape":
        k = int(rng.integers(len(queries)))
        others = [s for s in SHAPES if s not in {q.shape for q in queries}]
        queries[k] = attrs.evolve(queries[k], shape=others[rng.integers(len(others))])
    elif way == "colour":
        coloured = [i for i, q in enumerate(queries) if q.colour is not None]
        k = coloured[rng.integers(len(coloured))]
        others = [c for c in COLOURS if c != queries[k].colour]
        queries[k] = attrs.evolve(queries[k], colour=others[rng.integers(len(others))])
    elif way == "count":
        others = [n for n in (2, 3, 4) if n != queries[0].count]
        queries[0] = ObjectQuery(queries[0].shape, queries[0].colour, int(others[rng.integers(len(others))]))
    elif way == "relation":
        others = [r for r in RELATIONS if r != relation]
        relation = others[rng.integers(len(others))]
    else:
        queries.reverse()
    return Spec(spec.category, queries, relation=relation)


def _draw_scene(rng: np.random.Generator, size: int) -> tuple[Scene, Spec]:
    u = rng.random()
    spec = random_spec(rng)
    vary = bool(rng.integers(2))
    if u < 0.03:
        return Scene([]), spec
    if u < 0.2:
        return random_scene(rng, size=size, vary_background=vary), spec
    return scene_for_spec(spec, rng, size=size, vary_background=vary), spec


def _pair_spec(spec: Spec, rng: np.random.Generator) -> Spec:
    u = rng.random()
    if u < 0.35:
        return spec
    return perturb_spec(spec, rng) if u < 0.75 else random_spec(rng)


@attrs.frozen
class _Sample:
    image: torch.Tensor  # float [3, size, size]
    objects: tuple[tuple[str, str, float, float], ...]  # (colour, shape, x, y) of each object
    spec: Spec  # the spec the scene was drawn for (or a random one)


class SamplePool:
    """``pool`` ShapeWorld scenes rendered at ``size`` px: sample ``i`` is drawn from
    ``default_rng((seed, stream, i))`` when first asked for, and then kept."""

    def __init__(self, size: int, pool: int, seed: int, stream: int = _TRAIN_STREAM) -> None:
        self.size, self.pool, self.seed, self.stream = size, pool, seed, stream
        self._samples: dict[int, _Sample] = {}

    def __getitem__(self, index: int) -> _Sample:
        if index not in self._samples:
            rng = np.random.default_rng((self.seed, self.stream, index))
            scene, spec = _draw_scene(rng, self.size)
            objects = tuple((o.colour, o.shape, o.x, o.y) for o in scene.objects)
            self._samples[index] = _Sample(to_float(render(scene, self.size)), objects, spec)
        return self._samples[index]


def _credit(objects: tuple[tuple[str, str, float, float], ...], spec: Spec) -> float:
    return partial_credit([Detection(s, c, x, y, 0.0) for c, s, x, y in objects], spec)


@attrs.frozen
class Batch:
    """One training step's data: ``images`` [B, 3, S, S]; the truth maps ``classes`` [B, g, g]
    (0 = no object centre, else 1 + colour * 5 + shape), ``offsets`` [B, 2, g, g]; ``specs`` (P
    of them) paired with image ``owner`` [P], and their ``credit`` [P]."""

    images: torch.Tensor
    classes: torch.Tensor
    offsets: torch.Tensor
    specs: SpecBatch
    owner: torch.Tensor
    credit: torch.Tensor


def make_batch(pool: SamplePool, rng: np.random.Generator, *, batch: int, prompts_per_image: int,
               grid: int) -> Batch:
    """``batch`` samples of ``pool`` (drawn with ``rng``, each mirrored left-right with probability
    1/2), their truth maps on a ``grid`` x ``grid`` grid, and ``prompts_per_image`` specs each."""
    colours = list(COLOURS)
    images, classes, offsets, specs, credit = [], [], [], [], []
    for index in rng.integers(pool.pool, size=batch):
        sample = pool[int(index)]
        image, objects = sample.image, sample.objects
        if rng.random() < 0.5:
            image = image.flip(-1)
            objects = tuple((c, s, 1.0 - x, y) for c, s, x, y in objects)
        cls = torch.zeros(grid, grid, dtype=torch.long)
        off = torch.zeros(2, grid, grid)
        for c, s, x, y in objects:
            j, i = min(int(x * grid), grid - 1), min(int(y * grid), grid - 1)
            cls[i, j] = 1 + colours.index(c) * len(SHAPES) + SHAPES.index(s)
            off[0, i, j], off[1, i, j] = x * grid - j - 0.5, y * grid - i - 0.5
        images.append(image)
        classes.append(cls)
        offsets.append(off)
        for _ in range(prompts_per_image):
            spec = _pair_spec(sample.spec, rng)
            specs.append(spec)
            credit.append(_credit(objects, spec))
    return Batch(
        images=torch.stack(images), classes=torch.stack(classes), offsets=torch.stack(offsets),
        specs=spec_batch(specs), owner=torch.arange(batch).repeat_interleave(prompts_per_image),
        credit=torch.tensor(credit, dtype=torch.float32),
    )


def loss_terms(model: LearnedShapeReward, batch: Batch) -> dict[str, torch.Tensor]:
    """The training losses of ``model`` on ``batch``: "score" (BCE of the predicted credit),
    "objectness", "colour", "shape", "offset" (the encoder's maps against the truth) and "total"."""
    logits, offsets = model.maps(batch.images)
    n = len(COLOURS)
    present = batch.classes > 0
    cls = batch.classes[present] - 1
    cells = logits.permute(0, 2, 3, 1)[present]  # [objects, 12]
    mask = present.unsqueeze(1).float()
    terms = {
        "score": F.binary_cross_entropy_with_logits(
            model.score_logits(logits, offsets, batch.owner, batch.specs), batch.credit),
        "objectness": F.binary_cross_entropy_with_logits(logits[:, 0], present.float()),
        "colour": F.cross_entropy(cells[:, 1:1 + n], cls // len(SHAPES)) if len(cls) else logits.sum() * 0,
        "shape": F.cross_entropy(cells[:, 1 + n:], cls % len(SHAPES)) if len(cls) else logits.sum() * 0,
        "offset": ((offsets - batch.offsets).abs() * mask).sum() / mask.sum().clamp_min(1.0),
    }
    terms["total"] = (terms["score"] + OBJECTNESS_WEIGHT * terms["objectness"] + terms["colour"]
                      + terms["shape"] + terms["offset"])
    return terms


# --- training ------------------------------------------------------------------------------

def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} = {value!r} must be an int >= 1")
    return value


def train_learned_reward(
    *,
    size: int = 64,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    batch: int = 48,
    prompts_per_image: int = 6,
    pool: int = 4096,
    lr: float = 5e-3,
    config: LearnedShapeRewardConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> LearnedShapeReward:
    """Train a ``LearnedShapeReward`` on ShapeWorld (data and loss in the module docstring).

    Runs ``steps`` optimiser steps or ``minutes`` of wall time (rendering included), whichever
    ends first; give at least one. ``config`` defaults to ``LearnedShapeRewardConfig(image_size=
    size)``; its image_size must equal ``size``. The model is initialised from ``seed`` (the global
    torch RNG is left as it was) and returned in eval mode on the CPU; with ``out_dir`` it is also
    written there by ``save_pretrained`` (atomically). With the defaults, 600 steps (about 1.5
    minutes on one idle CPU thread at 64 px) give a model within about 0.01 mean absolute error
    of ShapeEval on held-out images (``python -m nxrecipes.eval.learned_reward`` measures it).
    A ``minutes`` budget ends the run after a machine-dependent number of steps; ``steps`` alone
    makes the run reproducible.
    """
    if steps is None and minutes is None:
        raise ValueError("give steps (optimiser steps) or minutes (wall time), or both; e.g. minutes=1.5")
    if steps is not None:
        _positive_int("steps", steps)
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float)
                                or not math.isfinite(minutes) or minutes <= 0):
        raise ValueError(f"minutes = {minutes!r} must be a finite number > 0")
    for name, value in (("batch", batch), ("prompts_per_image", prompts_per_image), ("pool", pool)):
        _positive_int(name, value)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr = {lr!r} must be a finite number > 0")
    config = LearnedShapeRewardConfig(image_size=size) if config is None else config
    if not isinstance(config, LearnedShapeRewardConfig):
        raise TypeError(f"config must be a LearnedShapeRewardConfig, got {type(config).__name__}")
    if config.image_size != size:
        raise ValueError(f"config.image_size = {config.image_size} but size = {size}; make them equal")

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LearnedShapeReward(config)
    model.train().to(memory_format=torch.channels_last)  # ~20% faster convolutions on CPU
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    data = SamplePool(size, pool, seed)
    rng = np.random.default_rng((seed, _PAIRING_STREAM, _TRAIN_STREAM))
    budget = None if minutes is None else minutes * 60.0
    start = time.monotonic()
    bar = tqdm(total=steps, desc="learned reward", disable=not progress)
    step = 0
    while True:
        done = step / steps if steps is not None else 0.0
        if budget is not None:
            done = max(done, (time.monotonic() - start) / budget)
        if done >= 1.0:
            break
        scale = min(1.0, (step + 1) / WARMUP_STEPS)
        scale *= FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * done))
        for group in optimiser.param_groups:
            group["lr"] = lr * scale
        step_batch = make_batch(data, rng, batch=batch, prompts_per_image=prompts_per_image, grid=config.grid)
        step_batch = attrs.evolve(step_batch, images=step_batch.images.to(memory_format=torch.channels_last))
        terms = loss_terms(model, step_batch)
        optimiser.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimiser.step()
        step += 1
        bar.update(1)
        bar.set_postfix(score=f"{terms['score'].item():.3f}", total=f"{terms['total'].item():.3f}")
    bar.close()
    model.eval().to(memory_format=torch.contiguous_format)
    if out_dir is not None:
        save_pretrained(model, out_dir)
    return model


# --- measuring -----------------------------------------------------------------------------

def measure_agreement(model: Any, *, n: int = 256, size: int = 64, seed: int = 0) -> dict[str, float]:
    """Compare ``model`` (any RewardModel) with ``ShapeEvalReward()`` on ``n`` held-out rendered
    ShapeWorld images (a stream training never draws), half with their own prompt, a quarter with a
    perturbed one and a quarter with a random one.

    Returns ``mae`` (mean |model - ShapeEval|), ``success_accuracy`` (how often ``model >
    SUCCESS_THRESHOLD`` agrees with ShapeEval's credit == 1), ``accuracy_at_half`` (the same at
    0.5: partial credits of 2/3 count as failures there, so it undercounts a model that predicts
    them), ``level_accuracy`` (how often the model's score rounds to ShapeEval's credit: within
    1/6, half the smallest gap between two credits a prompt can earn), ``positives`` (the fraction
    with credit 1) and ``n``."""
    _positive_int("n", n)
    data = SamplePool(size, n, seed, stream=_EVAL_STREAM)
    rng = np.random.default_rng((seed, _PAIRING_STREAM, _EVAL_STREAM))
    images, prompts = [], []
    for i in range(n):
        sample = data[i]
        if i % 2 == 0:
            spec = sample.spec
        else:
            spec = perturb_spec(sample.spec, rng) if i % 4 == 1 else random_spec(rng)
        images.append(sample.image)
        prompts.append(prompt_for_spec(spec, rng))
    images = torch.stack(images)
    reference = ShapeEvalReward()(images, prompts)
    scores = model(images, prompts).float().cpu()
    success = reference == 1.0
    return {
        "n": float(n),
        "mae": (scores - reference).abs().mean().item(),
        "success_accuracy": ((scores > SUCCESS_THRESHOLD) == success).float().mean().item(),
        "accuracy_at_half": ((scores > 0.5) == success).float().mean().item(),
        "level_accuracy": ((scores - reference).abs() < 1 / 6).float().mean().item(),
        "positives": success.float().mean().item(),
    }
