"""Editing pairs: choose an edit a scene allows, apply it, say it as an instruction, read it back.

- ``random_edit(scene, rng)``: an ``EditSpec`` valid for ``scene`` (its target is the only object of
  that colour and shape; the result holds no pair twice and nothing ``constraints`` forbid).
- ``apply_edit(scene, edit, rng)``: the edited scene. Untouched objects keep their exact positions;
  a recoloured or replaced object keeps its place and size; a moved object keeps its other
  coordinate and travels at least ``MOVE_MIN`` of the image; an added object goes to a free spot
  (inside ``region_holds(x, y, direction)`` when the edit names one). With ``constraints`` (a
  split's ``scenes.Constraints``) no result holds a forbidden pair or relation.
- ``edit_holds(source, target, edit)``: whether ``target`` is ``source`` with ``edit`` done.
- ``instruction(edit, rng)`` / ``parse_instruction(text)``: several phrasings per op, each read
  back to the same ``EditSpec`` (``Phrasebook`` does both from one list of templates).
- ``make_edit(rng, size, split)``: an ``EditSample`` (source image, instruction, target image).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

import attrs
import numpy as np
from PIL import Image

from nxrecipes.data.shapeworld.instructions import INSTRUCTIONS, instruction, parse_instruction
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import (
    INVERSE,
    MAX_DISTRACTORS,
    MAX_TRIES,
    NO_CONSTRAINTS,
    Combos,
    Constraints,
    check_rng,
    random_scene,
)
from nxrecipes.data.shapeworld.spec import DIRECTIONS, EDIT_OPS, EditSpec, ObjectQuery
from nxrecipes.data.shapeworld.splits import split_constraints
from nxrecipes.data.shapeworld.world import (
    COLOURS,
    GAP,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    check_image_size,
    relation_holds,
)

MOVE_MIN = 0.2  # a move displaces its object by at least this fraction of the image side
REGION_MARGIN = 0.1  # "on the left": the centre lies left of 0.5 - REGION_MARGIN (and so on)
GRID = 0.01  # resolution of the candidate positions for adds and moves
_EPS = 1e-6  # keeps grid positions strictly inside the bounds world.fits/overlaps test
NO_COMBOS = Combos()


# --- validation -------------------------------------------------------------------------------


def check_edit(edit) -> EditSpec:
    """``edit`` is an ``EditSpec`` (which validates its own fields when built)."""
    if not isinstance(edit, EditSpec):
        raise TypeError(f"edit must be an EditSpec, got {type(edit).__name__}")
    return edit


def _check_scene(scene) -> Scene:
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    return scene


def _check_constraints(constraints) -> Constraints:
    if not isinstance(constraints, Constraints):
        raise TypeError(
            f"constraints must be a scenes.Constraints, got {type(constraints).__name__}; "
            "use splits.split_constraints(split)"
        )
    return constraints


def region_holds(x, y, direction: str):
    """Whether centre (x, y) lies in the ``direction`` part of the image ("on the left" etc.);
    elementwise for arrays."""
    lo, hi = 0.5 - REGION_MARGIN, 0.5 + REGION_MARGIN
    return {"left": x <= lo, "right": x >= hi, "up": y <= lo, "down": y >= hi}[direction]


def find_target(scene: Scene, target: ObjectQuery) -> int:
    """Index of the one object ``target`` matches; ValueError when none or several do."""
    hits = [i for i, o in enumerate(scene.objects) if target.matches(o.shape, o.colour)]
    name = target.describe()
    if not hits:
        held = ", ".join(o.describe() for o in scene.objects) or "nothing"
        raise ValueError(f"edit target {name!r} is not in the scene (it holds {held}); target one of those")
    if len(hits) > 1:
        raise ValueError(
            f"edit target {name!r} is ambiguous: {len(hits)} objects match; name its colour or use a "
            "scene where it is unique"
        )
    return hits[0]


# --- geometry ---------------------------------------------------------------------------------


def _axis(extent: float) -> np.ndarray:
    half = extent / 2
    lo, hi = half + _EPS, 1 - half - _EPS
    return np.linspace(lo, hi, int((hi - lo) / GRID) + 1)


def clear_of(xs: np.ndarray, ys: np.ndarray, extent: float, others: Iterable[ShapeObject]) -> np.ndarray:
    """Mask of centres (xs, ys) where an object of ``extent`` overlaps none of ``others``."""
    ok = np.ones(np.broadcast(xs, ys).shape, dtype=bool)
    for o in others:
        reach = (extent + o.extent) / 2 + GAP + _EPS
        ok &= (np.abs(xs - o.x) >= reach) | (np.abs(ys - o.y) >= reach)
    return ok


def unrelated(xs: np.ndarray, ys: np.ndarray, shape: str, others: Iterable[ShapeObject],
              forbid: Combos) -> np.ndarray:
    """Mask of centres where a ``shape`` stands in no relation of ``forbid`` to ``others``, at
    margin 0 (the test ``Constraints.allows`` makes)."""
    ok = np.ones(np.broadcast(xs, ys).shape, dtype=bool)
    others = list(others)
    for a, rel, b in forbid.relations:
        for first, relation, second in ((a, rel, b), (b, INVERSE[rel], a)):
            if shape == first:
                for o in others:
                    if o.shape == second:
                        ok &= ~np.asarray(relation_holds((xs, ys), (o.x, o.y), relation, 0.0))
    return ok


def free_spots(scene: Scene, shape: str, size: str, direction: str | None = None, *,
               forbid: Combos = NO_COMBOS) -> np.ndarray:
    """[k, 2] centres where a ``shape`` of ``size`` fits without overlap, inside ``direction``'s
    region when given, in no forbidden relation."""
    axis = _axis(SIZES[size])
    xs, ys = np.meshgrid(axis, axis, indexing="xy")
    ok = clear_of(xs, ys, SIZES[size], scene.objects) & unrelated(xs, ys, shape, scene.objects, forbid)
    if direction is not None:
        ok &= region_holds(xs, ys, direction)
    return np.stack([xs[ok], ys[ok]], axis=1)


def move_spots(scene: Scene, index: int, direction: str, *, min_distance: float = MOVE_MIN,
               forbid: Combos = NO_COMBOS) -> np.ndarray:
    """Coordinates along ``direction``'s axis the object at ``index`` may move to: at least
    ``min_distance`` away, no overlap, no forbidden relation."""
    obj = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    axis = _axis(obj.extent)
    horizontal = direction in ("left", "right")
    start = obj.x if horizontal else obj.y
    sign = -1.0 if direction in ("left", "up") else 1.0
    xs, ys = (axis, np.full_like(axis, obj.y)) if horizontal else (np.full_like(axis, obj.x), axis)
    ok = (sign * (axis - start) >= min_distance) & clear_of(xs, ys, obj.extent, others)
    return axis[ok & unrelated(xs, ys, obj.shape, others, forbid)]


def _with(scene: Scene, objects: Iterable[ShapeObject]) -> Scene:
    return attrs.evolve(scene, objects=tuple(objects))


# --- choosing and applying edits --------------------------------------------------------------


def _options(scene: Scene, op: str, forbid: Combos) -> list[EditSpec]:
    objects = scene.objects
    pairs = Counter((o.colour, o.shape) for o in objects)
    unique = [(i, o, ObjectQuery(o.shape, o.colour))
              for i, o in enumerate(objects) if pairs[o.colour, o.shape] == 1]

    def fresh(colour: str, shape: str) -> bool:
        return (colour, shape) not in pairs and (colour, shape) not in forbid.pairs

    out: list[EditSpec] = []
    if op == "recolour":
        for _, o, q in unique:
            out += [EditSpec(op, q, colour=c) for c in COLOURS if fresh(c, o.shape)]
    elif op == "add" and len(objects) < MAX_OBJECTS:
        for shape in SHAPES:
            xs, ys = free_spots(scene, shape, "small", forbid=forbid).T
            where = [d for d in (None, *DIRECTIONS)
                     if len(xs) and (d is None or region_holds(xs, ys, d).any())]
            out += [EditSpec(op, ObjectQuery(shape, c), direction=d) for c in COLOURS if fresh(c, shape)
                    for d in where]
    elif op == "remove" and len(objects) >= 2:
        out = [EditSpec(op, q) for _, _, q in unique]
    elif op == "move":
        for i, _, q in unique:
            out += [EditSpec(op, q, direction=d)
                    for d in DIRECTIONS if len(move_spots(scene, i, d, forbid=forbid))]
    elif op == "replace":
        for i, o, q in unique:
            for shape, colour in itertools.product(SHAPES, (None, *COLOURS)):
                if shape == o.shape or colour == o.colour or not fresh(colour or o.colour, shape):
                    continue
                new = attrs.evolve(o, shape=shape, colour=colour or o.colour)
                if not forbid.in_scene(_with(scene, (*objects[:i], new, *objects[i + 1:])), margin=0.0):
                    out.append(EditSpec(op, q, colour=colour, shape=shape))
    return out


def random_edit(scene: Scene, rng: np.random.Generator, *, op: str | None = None,
                constraints: Constraints = NO_CONSTRAINTS) -> EditSpec:
    """An edit ``apply_edit`` can do on ``scene``: of ``op`` (one of ``EDIT_OPS``), else of a
    random feasible op.

    Its target is the only object of its colour and shape; recolour/add/replace make a (colour,
    shape) pair the scene does not hold yet; remove leaves at least one object; a replace keeps the
    colour (``colour=None``) about half the time; nothing ``constraints.forbid`` holds can result.
    """
    _check_scene(scene)
    check_rng(rng)
    _check_constraints(constraints)
    if op is not None and op not in EDIT_OPS:
        raise ValueError(f"unknown edit op {op!r}; choose one of {list(EDIT_OPS)} (or None for any)")
    by_op = {o: _options(scene, o, constraints.forbid) for o in ((op,) if op else EDIT_OPS)}
    feasible = [o for o, opts in by_op.items() if opts]
    if not feasible:
        what = f"{'an' if op[0] in 'aeiou' else 'a'} {op} edit" if op else "any edit"
        raise ValueError(
            f"no room for {what} in a scene of {len(scene.objects)} objects; use another op or scene"
        )
    options = by_op[feasible[rng.integers(len(feasible))]]
    if options[0].op == "replace":  # keep the colour about half the time
        keep = [e for e in options if e.colour is None]
        change = [e for e in options if e.colour is not None]
        options = (keep or change) if rng.random() < 0.5 else (change or keep)
    return options[rng.integers(len(options))]


def apply_edit(scene: Scene, edit: EditSpec, rng: np.random.Generator, *, size: str | None = None,
               constraints: Constraints = NO_CONSTRAINTS) -> Scene:
    """``scene`` with ``edit`` done; ``size`` ("small"/"large") fixes an added object's size.

    Raises ValueError when the target is missing or ambiguous, when the edit changes nothing
    (recolour to its own colour, replace by its own shape), when there is no room, or when the
    result would hold something ``constraints.forbid`` holds.
    """
    _check_scene(scene)
    check_edit(edit)
    check_rng(rng)
    forbid = _check_constraints(constraints).forbid
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)} (or None for either)")
    objects = list(scene.objects)
    if edit.op == "add":
        objects.append(_place(scene, edit, rng, size, forbid))
    else:
        i = find_target(scene, edit.target)
        obj = objects[i]
        if edit.op == "remove":
            del objects[i]
        elif edit.op == "recolour":
            if edit.colour == obj.colour:
                raise ValueError(
                    f"recolour to {edit.colour!r} leaves the {obj.describe()} as it is; pick another colour"
                )
            objects[i] = attrs.evolve(obj, colour=edit.colour)
        elif edit.op == "replace":
            if edit.shape == obj.shape:
                raise ValueError(
                    f"replace by {edit.shape!r} keeps the {obj.describe()}'s shape; pick another shape"
                )
            objects[i] = attrs.evolve(obj, shape=edit.shape, colour=edit.colour or obj.colour)
        else:
            objects[i] = _move(scene, i, edit.direction, rng, forbid)
    result = _with(scene, objects)
    if forbid.in_scene(result, margin=0.0):
        raise ValueError(f"{edit.op} would make a scene holding a forbidden combination ({forbid}); "
                         "choose another edit")
    return result


def _move(scene: Scene, i: int, direction: str, rng: np.random.Generator, forbid: Combos) -> ShapeObject:
    obj = scene.objects[i]
    spots = move_spots(scene, i, direction, forbid=forbid)
    if not len(spots):
        raise ValueError(
            f"no room to move the {obj.describe()} {direction} by at least {MOVE_MIN} of the image; "
            "use another direction or scene"
        )
    to = float(spots[rng.integers(len(spots))])
    return attrs.evolve(obj, x=to) if direction in ("left", "right") else attrs.evolve(obj, y=to)


def _place(scene: Scene, edit: EditSpec, rng: np.random.Generator, size: str | None,
           forbid: Combos) -> ShapeObject:
    t = edit.target
    name = t.describe()
    if len(scene.objects) >= MAX_OBJECTS:
        raise ValueError(
            f"no room to add a {name}: the scene already holds {MAX_OBJECTS} objects; remove one first"
        )
    sizes = [size] if size else [list(SIZES)[k] for k in rng.permutation(len(SIZES))]
    for s in sizes:
        spots = free_spots(scene, t.shape, s, edit.direction, forbid=forbid)
        if len(spots):
            x, y = spots[rng.integers(len(spots))]
            return ShapeObject(t.shape, t.colour, s, float(x), float(y))
    where = f" {edit.direction}" if edit.direction else ""
    raise ValueError(
        f"no room to add a {'/'.join(sizes)} {name}{where}: no free spot; use a smaller size or another scene"
    )


def edit_holds(source: Scene, target: Scene, edit: EditSpec, *, min_move: float = MOVE_MIN) -> bool:
    """Whether ``target`` is ``source`` with ``edit`` done: the edited object changed as said and
    every other object is identical (same shape, colour, size and position)."""
    check_edit(edit)
    try:
        i = None if edit.op == "add" else find_target(source, edit.target)
    except ValueError:
        return False
    before, after = Counter(source.objects), Counter(target.objects)
    gone, new = list((before - after).elements()), list((after - before).elements())
    if edit.op == "remove":
        return gone == [source.objects[i]] and not new
    if len(new) != 1 or gone != ([] if edit.op == "add" else [source.objects[i]]):
        return False
    (obj,) = new
    if edit.op == "add":
        placed = edit.direction is None or region_holds(obj.x, obj.y, edit.direction)
        return (obj.shape, obj.colour) == (edit.target.shape, edit.target.colour) and placed
    old = source.objects[i]
    if edit.op == "recolour":
        return obj == attrs.evolve(old, colour=edit.colour)
    if edit.op == "replace":
        return obj == attrs.evolve(old, shape=edit.shape, colour=edit.colour or old.colour)
    dx, dy = obj.x - old.x, obj.y - old.y
    along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[edit.direction]
    same = (obj.shape, obj.colour, obj.size) == (old.shape, old.colour, old.size)
    return same and across == 0 and along >= min_move - _EPS


def result_pair(scene: Scene, edit: EditSpec) -> tuple[str, str]:
    """The (colour, shape) pair an edit produces (add/recolour/replace) or touches (remove/move)."""
    t = edit.target
    if edit.op == "add":
        return (t.colour, t.shape)
    old = scene.objects[find_target(scene, t)]
    if edit.op == "recolour":
        return (edit.colour, old.shape)
    if edit.op == "replace":
        return (edit.colour or old.colour, edit.shape)
    return (old.colour, old.shape)


# --- samples ----------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class EditSample:
    task: ClassVar[str] = "edit"
    source_image: Image.Image
    instruction: str
    target_image: Image.Image
    edit: EditSpec
    source_scene: Scene
    target_scene: Scene


def make_edit(rng: np.random.Generator, size: int = 64, split: str = "train", *,
               vary_background: bool = False,
               max_distractors: int = MAX_DISTRACTORS) -> EditSample:
    """An editing pair: a random scene, a random edit of it, its instruction and the edited scene.

    Train/validation/test scenes (source and target) hold no held-out pair or relation; in the
    held-out split the target holds one.
    """
    check_rng(rng)
    check_image_size(size)
    constraints = split_constraints(split, vary_background=vary_background, max_distractors=max_distractors)
    for _ in range(MAX_TRIES):
        source = random_scene(rng, size=size, constraints=constraints)
        try:
            edit = random_edit(source, rng, constraints=constraints)
        except ValueError:  # a crowded scene with no feasible edit: draw another
            continue
        target = apply_edit(source, edit, rng, constraints=constraints)
        if constraints.require and not constraints.require.in_scene(target):
            continue
        added = target.objects[-1].size if edit.op == "add" else None
        text = instruction(edit, rng, size=added)
        return EditSample(render(source, size), text, render(target, size), edit, source, target)
    raise RuntimeError(f"no {split} edit after {MAX_TRIES} scenes; check splits.HELDOUT")


__all__ = [
    "INSTRUCTIONS",
    "MOVE_MIN",
    "EditSample",
    "apply_edit",
    "check_edit",
    "edit_holds",
    "free_spots",
    "instruction",
    "make_edit",
    "move_spots",
    "parse_instruction",
    "random_edit",
    "region_holds",
    "result_pair",
]
