"""Task samples for a unified model, one maker per task: ``maker(rng, size, split) -> record``.

Records are frozen attrs classes holding images as RGB PIL images (``render.to_tensor`` gives the
uint8 [3, H, W] tensor); each declares its task name in ``task``. ``make_sample(task, rng, size,
split)`` dispatches on the name through ``TASK_MAKERS`` (editing, interleaved and in-context makers
live in ``edits.py`` / ``sequences.py``). Your own code may add a task with
``TASK_MAKERS[name] = maker``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import numpy as np
from PIL import Image

from nxrecipes.data.shapeworld.captions import (
    RELATION_PHRASES,
    canonical_caption,
    object_phrase,
    prompt_for_spec,
)
from nxrecipes.data.shapeworld.edits import make_edit
from nxrecipes.data.shapeworld.knowledge import random_fact, riddle
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import (
    MAX_DISTRACTORS,
    NO_CONSTRAINTS,
    Constraints,
    check_rng,
    check_scene_size,
    random_scene,
    random_spec,
    scene_for_spec,
)
from nxrecipes.data.shapeworld.sequences import make_in_context, make_interleaved
from nxrecipes.data.shapeworld.spec import Spec
from nxrecipes.data.shapeworld.splits import check_split, split_constraints
from nxrecipes.data.shapeworld.world import MAX_OBJECTS, RELATION_MARGIN, Scene, ShapeObject


@attrs.frozen(kw_only=True)
class TextToImage:
    task: ClassVar[str] = "t2i"
    prompt: str
    spec: Spec
    scene: Scene
    image: Image.Image


@attrs.frozen(kw_only=True)
class Captioning:
    """``caption`` is ``canonical_caption(scene)``."""

    task: ClassVar[str] = "captioning"
    image: Image.Image
    caption: str
    scene: Scene


@attrs.frozen(kw_only=True)
class WorldKnowledge:
    """A prompt that needs one fact to resolve, the reasoning that resolves it, and the plain prompt."""

    task: ClassVar[str] = "world_knowledge"
    prompt: str
    reasoning: str
    resolved_prompt: str
    spec: Spec
    scene: Scene
    image: Image.Image


@attrs.frozen(kw_only=True)
class TextOnly:
    """A sentence about the world: a fact, or a description of ``scene`` (kept as its truth)."""

    task: ClassVar[str] = "text_only"
    text: str
    scene: Scene | None = None


def make_text_to_image(rng: np.random.Generator, size: int = 64, split: str = "train", *,
               vary_background: bool = False,
               max_distractors: int = MAX_DISTRACTORS) -> TextToImage:
    c = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    spec = random_spec(rng, constraints=c)
    scene = scene_for_spec(spec, rng, size=size, constraints=c)
    return TextToImage(prompt=prompt_for_spec(spec, rng), spec=spec, scene=scene, image=render(scene, size))


def make_captioning(rng: np.random.Generator, size: int = 64, split: str = "train", *,
               vary_background: bool = False,
               max_distractors: int = MAX_DISTRACTORS) -> Captioning:
    constraints = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    scene = random_scene(rng, size=size, constraints=constraints)
    return Captioning(image=render(scene, size), caption=canonical_caption(scene), scene=scene)


def make_world_knowledge(rng: np.random.Generator, size: int = 64, split: str = "train", *,
               vary_background: bool = False,
               max_distractors: int = MAX_DISTRACTORS) -> WorldKnowledge:
    c = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    prompt, reasoning, spec = riddle(rng, constraints=c)
    scene = scene_for_spec(spec, rng, size=size, constraints=c)
    resolved = prompt_for_spec(spec, rng, template=1)  # the plain "a green circle"
    return WorldKnowledge(prompt=prompt, reasoning=reasoning, resolved_prompt=resolved, spec=spec,
                          scene=scene, image=render(scene, size))


def _relation(p: ShapeObject, q: ShapeObject) -> str | None:
    """The relation ``p`` clearly stands in to ``q`` along the axis where they differ most, if any."""
    dx, dy = q.x - p.x, q.y - p.y
    if max(abs(dx), abs(dy)) <= RELATION_MARGIN:
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def describe_scene(scene: Scene, rng: np.random.Generator, constraints: Constraints = NO_CONSTRAINTS) -> str:
    """What ``scene`` holds, and (with two objects or more) where one object stands to another;
    a relation ``constraints.require`` names is preferred."""
    check_rng(rng)
    text = f"The picture shows {canonical_caption(scene)}."
    facts = [(p, r, q) for p, q in itertools.permutations(scene.objects, 2) if (r := _relation(p, q))]
    preferred = [f for f in facts if constraints.require.has_relation(f[0].shape, f[1], f[2].shape)]
    facts = preferred or facts
    if facts:
        p, r, q = facts[rng.integers(len(facts))]
        first = object_phrase(p.shape, p.colour)
        phrase = RELATION_PHRASES[r][rng.integers(len(RELATION_PHRASES[r]))]
        text += f" {first[0].upper()}{first[1:]} is {phrase} {object_phrase(q.shape, q.colour)}."
    return text


def make_text_only(rng: np.random.Generator, size: int = 64, split: str = "train", *,
               vary_background: bool = False,
               max_distractors: int = MAX_DISTRACTORS) -> TextOnly:
    c = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    if not c.require and rng.integers(2):
        return TextOnly(text=random_fact(rng))
    scene = random_scene(rng, size=size, constraints=c)
    return TextOnly(text=describe_scene(scene, rng, c), scene=scene)


Maker = Callable[..., Any]  # (rng, size, split, *, vary_background=False, max_distractors=2) -> record
TASK_MAKERS: dict[str, Maker] = {
    "t2i": make_text_to_image,
    "captioning": make_captioning,
    "world_knowledge": make_world_knowledge,
    "text_only": make_text_only,
    "edit": make_edit,
    "interleaved": make_interleaved,
    "in_context": make_in_context,
}
"""Task name -> maker ``(rng, size, split) -> record``; add your own makers here."""


def task_names() -> tuple[str, ...]:
    return tuple(TASK_MAKERS)


def maker_for(task: str) -> Maker:
    if task not in TASK_MAKERS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(task_names())}")
    return TASK_MAKERS[task]


def make_sample(task: str, rng: np.random.Generator, size: int = 64, split: str = "train", *,
                vary_background: bool = False, max_distractors: int = MAX_DISTRACTORS) -> Any:
    """One sample of ``task`` for ``split``, drawn from ``rng``, its images ``size`` px square."""
    maker = maker_for(task)
    check_rng(rng)
    check_split(split)
    check_scene_size(size, MAX_OBJECTS)
    return maker(rng, size, split, vary_background=vary_background, max_distractors=max_distractors)


def task_of(record: object) -> str:
    """The task name a record declares (its class name when it declares none)."""
    name = getattr(type(record), "task", None)
    return name if isinstance(name, str) else type(record).__name__


__all__ = [
    "TASK_MAKERS",
    "Captioning",
    "TextOnly",
    "TextToImage",
    "WorldKnowledge",
    "describe_scene",
    "make_captioning",
    "make_sample",
    "make_text_only",
    "make_text_to_image",
    "make_world_knowledge",
    "maker_for",
    "task_names",
    "task_of",
]
