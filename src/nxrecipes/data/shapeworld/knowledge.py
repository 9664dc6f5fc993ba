"""World knowledge: everyday facts that name a palette colour or a shape, for prompts that need one
step of reasoning before drawing (NextFlow §6.4) and for text-only sentences.

"a circle the colour of grass" → "Grass is green, so the circle is green." → "a green circle".
"""

from __future__ import annotations

import numpy as np

from nxrecipes.data.shapeworld.captions import article, object_phrase
from nxrecipes.data.shapeworld.scenes import NO_CONSTRAINTS, Constraints, check_rng
from nxrecipes.data.shapeworld.spec import ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES

# colour -> (thing, the fact that gives the thing its colour)
COLOUR_FACTS: dict[str, tuple[tuple[str, str], ...]] = {
    "red": (("a tomato", "Tomatoes are red."), ("a strawberry", "Strawberries are red."),
            ("a cherry", "Cherries are red.")),
    "orange": (("an orange", "Oranges are orange."), ("a pumpkin", "Pumpkins are orange."),
               ("a carrot", "Carrots are orange.")),
    "yellow": (("a banana", "Bananas are yellow."), ("a lemon", "Lemons are yellow."),
               ("a sunflower", "Sunflowers are yellow.")),
    "green": (("grass", "Grass is green."), ("a leaf", "Leaves are green."), ("a frog", "Frogs are green.")),
    "blue": (("the sky", "The sky is blue."), ("the sea", "The sea is blue.")),
    "purple": (("a grape", "Grapes are purple."), ("an aubergine", "Aubergines are purple."),
               ("a plum", "Plums are purple.")),
}
# shape -> descriptions that single it out ("shape with three corners" is a triangle)
SHAPE_RIDDLES: dict[str, tuple[str, ...]] = {
    "circle": ("round shape with no corners", "shape like a full moon"),
    "square": ("shape with four equal sides", "shape with four equal sides and four right angles"),
    "triangle": ("shape with three corners", "shape with three sides"),
    "star": ("shape with five points", "shape like the ones that twinkle in the night sky"),
    "cross": ("shape like a plus sign", "shape made of two bars crossing at right angles"),
}
SHAPE_FACTS: tuple[str, ...] = (
    "A circle is round and has no corners.",
    "A square has four equal sides and four right angles.",
    "A triangle has three sides and three corners.",
    "A star has five points.",
    "A cross looks like a plus sign.",
    f"ShapeWorld has {len(SHAPES)} shapes: {', '.join(SHAPES[:-1])} and {SHAPES[-1]}.",
    f"ShapeWorld has {len(COLOURS)} colours: {', '.join(list(COLOURS)[:-1])} and {list(COLOURS)[-1]}.",
)
FACTS: tuple[str, ...] = tuple(f for facts in COLOUR_FACTS.values() for _, f in facts) + SHAPE_FACTS
RIDDLE_KINDS: tuple[str, ...] = ("colour", "shape", "both")


def _pick(rng: np.random.Generator, items):
    return items[rng.integers(len(items))]


def riddle(rng: np.random.Generator, *, constraints: Constraints = NO_CONSTRAINTS, kind: str | None = None
           ) -> tuple[str, str, Spec]:
    """(prompt, reasoning, spec): a one-object prompt whose colour, shape or both ("kind") must be
    worked out from a fact. The object's pair respects ``constraints`` as ``random_spec`` does."""
    check_rng(rng)
    if kind is None:
        kind = _pick(rng, RIDDLE_KINDS)
    elif kind not in RIDDLE_KINDS:
        raise ValueError(f"unknown riddle kind {kind!r}; choose one of {list(RIDDLE_KINDS)}")
    pairs = sorted(constraints.require.pairs) or [
        (c, s) for s in SHAPES for c in constraints.colours_for(s)
    ]
    colour, shape = _pick(rng, pairs)
    thing, colour_fact = _pick(rng, COLOUR_FACTS[colour])
    shape_riddle = _pick(rng, SHAPE_RIDDLES[shape])
    spec = Spec("colors", [ObjectQuery(shape, colour)])
    because = colour_fact.rstrip(".")
    if kind == "colour":
        prompt = f"a {shape} the colour of {thing}"
        reasoning = f"{because}, so the {shape} is {colour}."
    elif kind == "shape":
        prompt = f"{article(colour)} {colour} {shape_riddle}"
        reasoning = f"A {shape_riddle} is a {shape}, so this is {object_phrase(shape, colour)}."
    else:
        prompt = f"a {shape_riddle} the colour of {thing}"
        reasoning = f"A {shape_riddle} is a {shape}. {because}, so the {shape} is {colour}."
    return prompt, reasoning, spec


def random_fact(rng: np.random.Generator) -> str:
    check_rng(rng)
    return _pick(rng, FACTS)


__all__ = ["COLOUR_FACTS", "FACTS", "RIDDLE_KINDS", "SHAPE_FACTS", "SHAPE_RIDDLES", "random_fact", "riddle"]
