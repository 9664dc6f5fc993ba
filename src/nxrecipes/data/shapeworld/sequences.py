"""Interleaved text–image sequences and in-context editing examples (NextFlow §5.4, §6.3, §6.5).

- ``make_interleaved``: text, image, text, image, ... Either a *story* of 2–4 consecutive edits
  ("A red circle sits on the left." [img] "Then a blue square appears on the right." [img] ...)
  or a *motion*: one object moving frame by frame, 3–5 frames, a constant step of
  ``STEP_MIN``–``STEP_MAX`` of the image in one direction, each text saying where it goes.
  ``edits[i]`` turns ``scenes[i]`` into ``scenes[i + 1]`` and ``parse_narration`` reads it back
  from the text before image ``i + 1``.
- ``make_in_context``: two before/after pairs showing one transformation (one ``EditSpec``, whose
  target may leave the colour open: "make the circle blue" works on a circle of any colour) on
  different scenes, then a new scene to transform the same way, and its answer.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
from PIL import Image

from nxrecipes.data.shapeworld.edits import (
    GRID,
    MOVE_MIN,
    apply_edit,
    clear_of,
    free_spots,
    random_edit,
)
from nxrecipes.data.shapeworld.instructions import Phrasebook
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import MAX_DISTRACTORS, MAX_TRIES, Constraints, check_rng, random_scene
from nxrecipes.data.shapeworld.spec import DIRECTIONS, EDIT_OPS, EditSpec, ObjectQuery
from nxrecipes.data.shapeworld.splits import split_constraints
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES, SIZES, Scene, ShapeObject, check_image_size

KINDS: tuple[str, ...] = ("story", "motion")
STEP_MIN, STEP_MAX = 0.06, 0.14  # motion: distance per frame, as a fraction of the image side

NARRATIONS = Phrasebook({
    "recolour": (
        "then the {obj} turns {colour}",
        "next, the {obj} becomes {colour}",
        "after that, the {obj} changes colour to {colour}",
    ),
    "add": (
        "then {a_new} appears{where}",
        "next, {a_new} shows up{where}",
        "after that, {a_new} is added{where}",
    ),
    "remove": (
        "then the {obj} disappears",
        "next, the {obj} vanishes",
        "after that, the {obj} is taken away",
    ),
    "move": (
        "then the {obj} moves {to_dir}",
        "next, the {obj} slides {to_dir}",
        "after that, the {obj} drifts {to_dir}",
    ),
    "replace": (
        "then the {obj} turns into {a_rep}",
        "next, the {obj} becomes {a_rep}",
        "after that, the {obj} is swapped for {a_rep}",
    ),
}, what="narration")
MOTION_STEPS = Phrasebook({
    "move": (
        "the {obj} moves a little {to_dir}",
        "the {obj} keeps moving {to_dir}",
        "the {obj} goes a bit further {to_dir}",
        "the {obj} drifts a little further {to_dir}",
    ),
}, what="motion narration")
_ANY_NARRATION = Phrasebook(
    {**NARRATIONS.templates, "move": NARRATIONS.templates["move"] + MOTION_STEPS.templates["move"]},
    what="narration",
)
SCENE_OPENINGS: tuple[str, ...] = ("there is {}", "the picture shows {}", "we see {}")
IN_CONTEXT_PROMPTS: tuple[str, ...] = (
    "Infer the transformation from the two examples and apply it to the last image.",
    "Each example shows an image before and after the same change. Apply that change to the new image.",
    "Work out what changed in the example pairs and do the same to the final image.",
)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def parse_narration(text: str) -> EditSpec:
    """The edit a story or motion text (not the opening one) describes."""
    return _ANY_NARRATION.parse(text)


def place_of(obj: ShapeObject) -> str:
    """Where ``obj`` sits: "at the top left", "on the right", "in the middle", ..."""
    col = "left" if obj.x < 0.4 else "right" if obj.x > 0.6 else ""
    row = "top" if obj.y < 0.4 else "bottom" if obj.y > 0.6 else ""
    if row:
        return f"at the {row} {col}".rstrip()
    return f"on the {col}" if col else "in the middle"


def opening_sentence(scene: Scene, rng: np.random.Generator) -> str:
    """An opening sentence naming every object, its size and where it sits ("A small red circle sits
    on the left.")."""
    names = [f"{'an' if o.size[0] in 'aeiou' else 'a'} {o.size} {o.colour} {o.shape}" for o in scene.objects]
    places = [place_of(o) for o in scene.objects]
    if not names:
        return "The picture is empty."
    if len(names) == 1:
        return sentence(f"{names[0]} sits {places[0]}")
    items = [f"{n} {p}" for n, p in zip(names, places, strict=True)]
    opening = SCENE_OPENINGS[rng.integers(len(SCENE_OPENINGS))]
    return sentence(opening.format(", ".join(items[:-1]) + " and " + items[-1]))


# --- interleaved sequences --------------------------------------------------------------------


@attrs.frozen(eq=False)
class Interleaved:
    """``parts`` alternate text and image, starting with text; ``scenes[i]`` is image ``i`` and
    ``edits[i]`` turns ``scenes[i]`` into ``scenes[i + 1]`` (moving at least ``min_move``)."""

    task: ClassVar[str] = "interleaved"
    parts: tuple[str | Image.Image, ...]
    scenes: tuple[Scene, ...]
    edits: tuple[EditSpec, ...]
    kind: str
    min_move: float


def make_interleaved(rng: np.random.Generator, size: int = 64, split: str = "train", *,
                     vary_background: bool = False,
                     max_distractors: int = MAX_DISTRACTORS, kind: str | None = None) -> Interleaved:
    """A story of 2–4 edits or a 3–5 frame motion (``kind`` one of ``KINDS``, else either).

    Train/validation/test frames hold no held-out pair or relation; a held-out sample holds one."""
    check_rng(rng)
    check_image_size(size)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown interleaved kind {kind!r}; choose one of {list(KINDS)} (or None)")
    constraints = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    kind = kind or KINDS[rng.integers(len(KINDS))]
    make = _story if kind == "story" else _motion
    for _ in range(MAX_TRIES):
        made = make(rng, size, constraints)
        if made is None or (constraints.require and not any(map(constraints.require.in_scene, made[0]))):
            continue
        scenes, edits, texts, min_move = made
        parts = tuple(p for t, scene in zip(texts, scenes, strict=True) for p in (t, render(scene, size)))
        return Interleaved(parts, tuple(scenes), tuple(edits), kind, min_move)
    raise RuntimeError(f"no {split} {kind} after {MAX_TRIES} tries; check splits.HELDOUT")


def _story(rng: np.random.Generator, size: int, constraints: Constraints):
    scene = random_scene(rng, num_objects=int(rng.integers(1, 4)), size=size, constraints=constraints)
    scenes, edits, texts = [scene], [], [opening_sentence(scene, rng)]
    for _ in range(int(rng.integers(2, 5))):
        try:
            edit = random_edit(scene, rng, constraints=constraints)
        except ValueError:
            return None
        scene = apply_edit(scene, edit, rng, constraints=constraints)
        added = scene.objects[-1].size if edit.op == "add" else None
        edits.append(edit)
        scenes.append(scene)
        texts.append(sentence(NARRATIONS.phrase(edit, rng, size=added)))
    return scenes, edits, texts, MOVE_MIN


def _reach(scene: Scene, index: int, direction: str) -> float:
    """How far the object at ``index`` can travel towards ``direction`` along a clear path."""
    obj = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    steps = np.arange(0.0, 1.0, GRID)
    horizontal = direction in ("left", "right")
    sign = -1.0 if direction in ("left", "up") else 1.0
    pos = (obj.x if horizontal else obj.y) + sign * steps
    xs, ys = (pos, np.full_like(pos, obj.y)) if horizontal else (np.full_like(pos, obj.x), pos)
    half = obj.extent / 2
    ok = (pos - half >= 0) & (pos + half <= 1) & clear_of(xs, ys, obj.extent, others)
    ok[0] = True
    return float(steps[-1]) if ok.all() else float(steps[np.argmin(ok) - 1])


def _motion(rng: np.random.Generator, size: int, constraints: Constraints):
    scene = random_scene(rng, num_objects=int(rng.integers(1, 4)), size=size, constraints=constraints)
    frames = int(rng.integers(3, 6))
    pairs = [(o.colour, o.shape) for o in scene.objects]
    options = [
        (i, d, reach)
        for i in range(len(pairs))
        if pairs.count(pairs[i]) == 1
        for d in DIRECTIONS
        if (reach := _reach(scene, i, d)) > (frames - 1) * STEP_MIN + 1e-5
    ]
    if not options:
        return None
    i, direction, reach = options[rng.integers(len(options))]
    step = rng.uniform(STEP_MIN, min(STEP_MAX, (reach - 1e-6) / (frames - 1)))
    obj = scene.objects[i]
    sign = -1.0 if direction in ("left", "up") else 1.0
    axis = "x" if direction in ("left", "right") else "y"
    scenes = [scene]
    for k in range(1, frames):
        moved = attrs.evolve(obj, **{axis: getattr(obj, axis) + sign * k * step})
        scenes.append(attrs.evolve(scene, objects=scene.objects[:i] + (moved,) + scene.objects[i + 1:]))
    if any(constraints.forbid.in_scene(s, margin=0.0) for s in scenes):
        return None
    edit = EditSpec("move", ObjectQuery(obj.shape, obj.colour), direction=direction)
    texts = [opening_sentence(scene, rng)]
    texts += [sentence(MOTION_STEPS.phrase(edit, rng)) for _ in range(frames - 1)]
    return scenes, [edit] * (frames - 1), texts, STEP_MIN


# --- in-context examples ----------------------------------------------------------------------


@attrs.frozen(eq=False)
class InContext:
    """Two (before, after) image pairs, a query image and its answer, all showing ``edit``;
    ``scenes`` holds the ground truth: the two example pairs, then (query, answer)."""

    task: ClassVar[str] = "in_context"
    examples: tuple[tuple[Image.Image, Image.Image], tuple[Image.Image, Image.Image]]
    query: Image.Image
    answer: Image.Image
    edit: EditSpec
    prompt: str
    scenes: tuple[tuple[Scene, Scene], ...]

    @property
    def parts(self) -> tuple[str | Image.Image, ...]:
        """The model's input: the prompt, the example images in order, then the query."""
        (b1, a1), (b2, a2) = self.examples
        return (self.prompt, b1, a1, b2, a2, self.query)


def make_in_context(rng: np.random.Generator, size: int = 64, split: str = "train", *,
                    vary_background: bool = False,
                    max_distractors: int = MAX_DISTRACTORS, op: str | None = None) -> InContext:
    """Two before/after examples of one edit (``op`` one of ``EDIT_OPS``, else any), a query scene
    and the answer. Each before-scene holds exactly one object the edit's target matches, and the
    three differ. Train/validation/test scenes hold nothing held out; a held-out answer does."""
    check_rng(rng)
    check_image_size(size)
    if op is not None and op not in EDIT_OPS:
        raise ValueError(f"unknown edit op {op!r}; choose one of {list(EDIT_OPS)} (or None for any)")
    constraints = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    for _ in range(MAX_TRIES):
        rule = _rule(rng, op or EDIT_OPS[rng.integers(len(EDIT_OPS))])
        try:
            pairs = []
            for _ in range(3):
                before = _plant(rng, rule, size, constraints)
                pairs.append((before, apply_edit(before, rule, rng, constraints=constraints)))
        except ValueError:  # the draw left no room for the rule (or only forbidden results)
            continue
        if len({b.objects for b, _ in pairs}) < 3:
            continue
        if constraints.require and not constraints.require.in_scene(pairs[2][1]):
            continue
        images = [(render(b, size), render(a, size)) for b, a in pairs]
        prompt = IN_CONTEXT_PROMPTS[rng.integers(len(IN_CONTEXT_PROMPTS))]
        return InContext((images[0], images[1]), images[2][0], images[2][1], rule, prompt, tuple(pairs))
    raise RuntimeError(f"no {split} in-context example after {MAX_TRIES} tries; check splits.HELDOUT")


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[rng.integers(len(options))]


def _rule(rng: np.random.Generator, op: str) -> EditSpec:
    """A transformation for ``op``; outside add, its target names no colour half the time."""
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOURS)
    target = ObjectQuery(shape, colour if op == "add" or rng.random() < 0.5 else None)
    if op == "recolour":
        return EditSpec(op, target, colour=_pick(rng, [c for c in COLOURS if c != colour]))
    if op == "replace":
        new_colour = None if rng.random() < 0.5 else _pick(rng, [c for c in COLOURS if c != colour])
        return EditSpec(op, target, shape=_pick(rng, [s for s in SHAPES if s != shape]), colour=new_colour)
    if op in ("move", "add"):
        direction = None if op == "add" and rng.random() < 0.5 else _pick(rng, DIRECTIONS)
        return EditSpec(op, target, direction=direction)
    return EditSpec(op, target)


def _plant(rng: np.random.Generator, rule: EditSpec, size: int, constraints: Constraints) -> Scene:
    """A scene for ``rule``: 0–2 other objects (1–3 for add and remove; none matching its target,
    distinct colour–shape pairs) plus, unless it adds, the one object it targets; ValueError when
    the draw does not work."""
    t = rule.target
    n = int(rng.integers(0, 3)) + (rule.op in ("add", "remove"))  # never an empty before or after
    scene = random_scene(rng, num_objects=n, size=size, constraints=constraints) if n else Scene(())
    kept = [o for o in scene.objects if not t.matches(o.shape, o.colour)]
    if len({(o.colour, o.shape) for o in kept}) < len(kept):
        raise ValueError("repeated colour–shape pair")
    if rule.op in ("add", "remove") and not kept:
        raise ValueError("an empty before or after scene")
    scene = attrs.evolve(scene, objects=tuple(kept))
    if rule.op == "add":
        if (t.colour, t.shape) in {(o.colour, o.shape) for o in kept}:
            raise ValueError("the added pair is already there")
        return scene
    colours = [c for c in ([t.colour] if t.colour else COLOURS)
               if c != rule.colour and (c, t.shape) not in constraints.forbid.pairs]
    if not colours:
        raise ValueError("every colour of the target is forbidden")
    colour, size_name = _pick(rng, colours), _pick(rng, SIZES)
    made = {"recolour": (rule.colour, t.shape), "replace": (rule.colour or colour, rule.shape)}.get(rule.op)
    if {(colour, t.shape), made} & {(o.colour, o.shape) for o in kept}:
        raise ValueError("the target or the result would repeat a colour–shape pair")
    spots = free_spots(scene, t.shape, size_name, forbid=constraints.forbid)
    if not len(spots):
        raise ValueError("no room for the target")
    x, y = spots[rng.integers(len(spots))]
    return attrs.evolve(scene, objects=(*kept, ShapeObject(t.shape, colour, size_name, float(x), float(y))))


__all__ = [
    "KINDS",
    "MOTION_STEPS",
    "NARRATIONS",
    "InContext",
    "Interleaved",
    "opening_sentence",
    "make_in_context",
    "make_interleaved",
    "parse_narration",
    "place_of",
]
