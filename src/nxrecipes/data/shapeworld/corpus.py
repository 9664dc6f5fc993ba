"""Text of ShapeWorld for training a text tokenizer: prompts, captions, scene descriptions,
riddles with their reasoning, edit instructions and the world's facts."""

from __future__ import annotations

import numpy as np

from nxrecipes.data.shapeworld.captions import canonical_caption, prompt_for_spec
from nxrecipes.data.shapeworld.edits import random_edit
from nxrecipes.data.shapeworld.instructions import instruction
from nxrecipes.data.shapeworld.knowledge import FACTS, riddle
from nxrecipes.data.shapeworld.scenes import random_scene, random_spec
from nxrecipes.data.shapeworld.tasks import describe_scene

__all__ = ["text_corpus"]


def text_corpus(num: int = 200, *, seed: int = 0) -> list[str]:
    """Every fact, then ``num`` rounds of (prompt, caption, description, riddle, reasoning, edit
    instruction) drawn with ``seed``; deterministic."""
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise ValueError(f"num must be an int >= 0 (rounds of sentences), got {num!r}")
    rng = np.random.default_rng(seed)
    out = list(FACTS)
    for _ in range(num):
        out.append(prompt_for_spec(random_spec(rng), rng))
        scene = random_scene(rng)
        out += [canonical_caption(scene), describe_scene(scene, rng)]
        prompt, reasoning, _ = riddle(rng)
        out += [prompt, reasoning, instruction(_some_edit(scene, rng), rng)]
    return out


def _some_edit(scene, rng: np.random.Generator):
    """An edit of ``scene``, or of a fresh one-object scene when ``scene`` leaves no room for any."""
    try:
        return random_edit(scene, rng)
    except ValueError:
        return random_edit(random_scene(rng, num_objects=1), rng)
