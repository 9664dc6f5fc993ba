"""Random ShapeWorld scenes: unconstrained ones, ones that satisfy a ``Spec``, and random specs.

Objects are placed greedily on a fine grid of candidate centres (so "anywhere" in the image); a
placement that runs out of room starts over, at most ``MAX_TRIES`` times. ``Constraints`` carries
what a split forbids or requires: colour–shape pairs and (shape, relation, shape) triples.

- A forbidden triple is absent at margin 0: no object of the first shape lies, by any amount, in
  the relation to one of the second (a stricter test than the scorer's ``RELATION_MARGIN``).
- A required combination is present robustly: pairs as objects, triples placed ``PLACE_MARGIN``
  apart along the relation's axis, that axis dominant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import attrs
import numpy as np

from nxrecipes.data.shapeworld.spec import CATEGORIES, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import (
    BACKGROUND,
    COLOURS,
    GAP,
    MAX_IMAGE_SIZE,
    MAX_OBJECTS,
    MIN_IMAGE_SIZE,
    MIN_OBJECT_PIXELS,
    RELATION_MARGIN,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    relation_holds,
)

PLACE_MARGIN = 0.25  # centres of a placed relation differ by more than this along its axis
MAX_TRIES = 200
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MAX_DISTRACTORS = 2  # objects a scene for a prompt may add that the prompt does not name
COUNT_RANGE = (2, 4)  # counting prompts ask for two to four objects, as GenEval does
_GRID = np.linspace(0.0, 1.0, 129)
_EPS = 1e-6

Pair = tuple[str, str]  # (colour, shape)
Triple = tuple[str, str, str]  # (shape, relation, shape)


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "use np.random.default_rng(seed) or splits.split_rng(split, index, seed)"
        )
    return rng


def check_scene_size(size: object, num_objects: int) -> int:
    """``size`` is an int number of pixels in which ``num_objects`` objects can be drawn."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int number of pixels, got {size!r}")
    need = max(MIN_IMAGE_SIZE, math.ceil(MIN_OBJECT_PIXELS / min(SIZES.values())))
    if size < need:
        raise ValueError(
            f"size = {size} px is too small for the objects: {num_objects} object(s) would be drawn "
            f"{min(SIZES.values()) * size:.1f} px wide when small (a shape needs {MIN_OBJECT_PIXELS} px); "
            f"use size >= {need}"
        )
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"size = {size} px is larger than ShapeWorld draws; use size <= {MAX_IMAGE_SIZE}")
    return size


def _check_pairs(pairs: Iterable[Pair]) -> frozenset[Pair]:
    out = frozenset(tuple(p) for p in pairs)
    for colour, shape in out:
        ShapeObject(shape, colour)  # validates both names
    return out


def _check_triples(triples: Iterable[Triple]) -> frozenset[Triple]:
    out = frozenset(tuple(t) for t in triples)
    for a, rel, b in out:
        ObjectQuery(a), ObjectQuery(b)
        if rel not in RELATIONS:
            raise ValueError(f"unknown relation {rel!r} in {(a, rel, b)}; choose one of {list(RELATIONS)}")
    return out


@attrs.frozen(kw_only=True)
class Combos:
    """Colour–shape ``pairs`` and (shape, relation, shape) ``relations``.

    A triple and its mirror ("circle left of square", "square right of circle") are one fact."""

    pairs: frozenset[Pair] = attrs.field(default=frozenset(), converter=_check_pairs)
    relations: frozenset[Triple] = attrs.field(default=frozenset(), converter=_check_triples)

    def __bool__(self) -> bool:
        return bool(self.pairs or self.relations)

    def has_relation(self, a: str, relation: str, b: str) -> bool:
        return (a, relation, b) in self.relations or (b, INVERSE[relation], a) in self.relations

    def in_spec(self, spec: Spec) -> bool:
        """Whether ``spec``'s prompt names one of these pairs or relations."""
        if any(q.colour is not None and (q.colour, q.shape) in self.pairs for q in spec.objects):
            return True
        return spec.relation is not None and self.has_relation(
            spec.objects[0].shape, spec.relation, spec.objects[1].shape
        )

    def in_scene(self, scene: Scene, margin: float = RELATION_MARGIN) -> bool:
        """Whether ``scene`` holds one of these pairs, or one of these relations by more than ``margin``."""
        if any((o.colour, o.shape) in self.pairs for o in scene.objects):
            return True
        for a, rel, b in self.relations:
            for p, q in itertools.permutations(scene.objects, 2):
                if p.shape == a and q.shape == b and relation_holds((p.x, p.y), (q.x, q.y), rel, margin):
                    return True
        return False


def check_max_distractors(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"max_distractors = {value!r} must be an int >= 0 (0: a scene holds only what its prompt names; "
            f"default {MAX_DISTRACTORS})"
        )
    return value


@attrs.frozen(kw_only=True)
class Constraints:
    """What scenes and prompts of a split must avoid (``forbid``) and hold one of (``require``),
    whether their backgrounds vary (``vary_background``: jittered colour, mild gradient), and how many
    objects a prompt does not mention its scene may add (``max_distractors``; 0: the prompt names
    every object)."""

    forbid: Combos = Combos()
    require: Combos = Combos()
    vary_background: bool = False
    max_distractors: int = attrs.field(default=MAX_DISTRACTORS,
                                       validator=lambda _, __, v: check_max_distractors(v))

    def allows(self, scene: Scene) -> bool:
        if self.forbid.in_scene(scene, margin=0.0):
            return False
        return not self.require or self.require.in_scene(scene)

    def colours_for(self, shape: str) -> list[str]:
        return [c for c in COLOURS if (c, shape) not in self.forbid.pairs]


NO_CONSTRAINTS = Constraints()


def satisfies(scene: Scene, spec: Spec, margin: float = RELATION_MARGIN) -> bool:
    """Whether ``scene`` meets ``spec`` (see ``spec.Spec`` for the semantics), read off its truth."""
    def matching(q: ObjectQuery) -> list[ShapeObject]:
        return [o for o in scene.objects if q.matches(o.shape, o.colour)]

    for q in spec.objects:
        n = len(matching(q))
        if n < q.count or (spec.category == "counting" and n != q.count):
            return False
    if spec.relation is not None:
        a, b = spec.objects
        return any(
            p is not q and relation_holds((p.x, p.y), (q.x, q.y), spec.relation, margin)
            for p in matching(a) for q in matching(b)
        )
    return True


# --- placement --------------------------------------------------------------------------------

@attrs.frozen
class _Slot:
    shape: str
    colour: str
    size: str


@attrs.frozen
class _Link:
    """Slot ``first`` stands ``relation`` slot ``second``."""

    first: int
    relation: str
    second: int


def _candidates(size: str) -> tuple[np.ndarray, np.ndarray]:
    half = SIZES[size] / 2
    axis = _GRID[(_GRID - half >= _EPS) & (_GRID + half <= 1 - _EPS)]
    xs, ys = np.meshgrid(axis, axis, indexing="xy")
    return xs.ravel(), ys.ravel()


def _related(xs: np.ndarray, ys: np.ndarray, anchor: ShapeObject, relation: str) -> np.ndarray:
    """Candidates (xs, ys) such that ``anchor`` is ``relation`` them, clearly: by more than
    ``PLACE_MARGIN`` along the relation's axis, and more along it than across it."""
    dx, dy = xs - anchor.x, ys - anchor.y
    main, other = (dx, dy) if relation in ("left of", "right of") else (dy, dx)
    sign = 1.0 if relation in ("left of", "above") else -1.0  # anchor left of c: c.x - anchor.x > m
    return (sign * main > PLACE_MARGIN) & (np.abs(main) > np.abs(other))


def _place(rng: np.random.Generator, slots: list[_Slot], link: _Link | None) -> list[ShapeObject] | None:
    order = list(range(len(slots)))
    if link is not None:
        order = [link.first, link.second] + [k for k in order if k not in (link.first, link.second)]
    placed: dict[int, ShapeObject] = {}
    for k in order:
        slot = slots[k]
        xs, ys = _candidates(slot.size)
        ok = np.ones(xs.shape, dtype=bool)
        for other in placed.values():
            reach = (SIZES[slot.size] + other.extent) / 2 + GAP + _EPS
            ok &= (np.abs(xs - other.x) >= reach) | (np.abs(ys - other.y) >= reach)
        if link is not None and k == link.second:
            ok &= _related(xs, ys, placed[link.first], link.relation)
        choices = np.flatnonzero(ok)
        if not len(choices):
            return None
        pick = choices[rng.integers(len(choices))]
        placed[k] = ShapeObject(slot.shape, slot.colour, slot.size, float(xs[pick]), float(ys[pick]))
    return [placed[k] for k in range(len(slots))]


def _background(rng: np.random.Generator, vary: bool) -> dict:
    if not vary:
        return {}
    jitter = rng.integers(-10, 11, size=3)
    base = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(BACKGROUND, jitter, strict=True))
    gx, gy = rng.uniform(-12.0, 12.0, size=2)
    return {"background": base, "gradient": (float(gx), float(gy))}


def _build(rng: np.random.Generator, make_plan: Callable[[], tuple[list[_Slot], _Link | None]],
           accept: Callable[[Scene], bool], vary_background: bool, what: str) -> Scene:
    for _ in range(MAX_TRIES):
        slots, link = make_plan()
        objects = _place(rng, slots, link)
        if objects is None:
            continue
        scene = Scene(objects, **_background(rng, vary_background))
        if accept(scene):
            return scene
    raise ValueError(
        f"could not lay out {what} in {MAX_TRIES} tries; the constraints leave no room: "
        "ask for fewer objects or relax the constraints"
    )


def _random_size(rng: np.random.Generator) -> str:
    return list(SIZES)[rng.integers(len(SIZES))]


def _random_slot(rng: np.random.Generator, constraints: Constraints, shapes: Iterable[str] = SHAPES) -> _Slot:
    shapes = [s for s in shapes if constraints.colours_for(s)]
    if not shapes:
        raise ValueError(f"the constraints forbid every colour of the shapes left ({constraints.forbid}); "
                         "relax them")
    shape = shapes[rng.integers(len(shapes))]
    colours = constraints.colours_for(shape)
    return _Slot(shape, colours[rng.integers(len(colours))], _random_size(rng))


def _check_constraints(constraints: object) -> Constraints:
    if not isinstance(constraints, Constraints):
        raise TypeError(f"constraints must be a scenes.Constraints, got {type(constraints).__name__}")
    return constraints


# --- public generators ------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, *, num_objects: int | None = None, size: int = 64,
                 constraints: Constraints = NO_CONSTRAINTS, vary_background: bool = False) -> Scene:
    """A scene of ``num_objects`` (default: 1 to 4 at random) random objects, ``constraints`` met.

    ``size`` is the image side the scene is meant for (checked: its small objects must be
    drawable). ``vary_background`` jitters the background colour and adds a mild gradient."""
    check_rng(rng)
    _check_constraints(constraints)
    if num_objects is not None and (isinstance(num_objects, bool) or not isinstance(num_objects, int)
                                    or not 1 <= num_objects <= MAX_OBJECTS):
        raise ValueError(
            f"num_objects = {num_objects!r} is out of range; a scene holds 1 to {MAX_OBJECTS} objects"
        )
    check_scene_size(size, num_objects or MAX_OBJECTS)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    required = [("pair", p) for p in sorted(constraints.require.pairs)]
    if n >= 2:
        required += [("relation", t) for t in sorted(constraints.require.relations)]
    if constraints.require and not required:
        raise ValueError(
            f"num_objects = {n} cannot hold a required relation {sorted(constraints.require.relations)}; "
            "use num_objects >= 2"
        )

    def plan() -> tuple[list[_Slot], _Link | None]:
        slots: list[_Slot] = []
        link = None
        if required:
            kind, item = required[rng.integers(len(required))]
            if kind == "pair":
                slots.append(_Slot(item[1], item[0], _random_size(rng)))
            else:
                a, rel, b = item
                slots += [_random_slot(rng, constraints, [a]), _random_slot(rng, constraints, [b])]
                link = _Link(0, rel, 1)
        slots += [_random_slot(rng, constraints) for _ in range(n - len(slots))]
        return slots, link

    vary = vary_background or constraints.vary_background
    return _build(rng, plan, constraints.allows, vary, f"{n} random objects")


def _check_spec(spec: object, constraints: Constraints) -> Spec:
    if not isinstance(spec, Spec):
        raise TypeError(f"spec must be a Spec, got {type(spec).__name__}")
    total = sum(q.count for q in spec.objects)
    if total > MAX_OBJECTS:
        raise ValueError(
            f"spec asks for {total} objects but a scene holds at most {MAX_OBJECTS}; lower the counts"
        )
    if constraints.forbid.in_spec(spec):
        raise ValueError(
            f"spec {spec} names a combination the constraints forbid ({constraints.forbid}); "
            "draw it with random_spec(rng, constraints=...) instead"
        )
    for q in spec.objects:
        if q.colour is None and not constraints.colours_for(q.shape):
            raise ValueError(f"the constraints forbid every colour of a {q.shape}; relax them")
    return spec


def _required_extra(spec: Spec, constraints: Constraints, rng: np.random.Generator
                    ) -> tuple[int | None, Pair | None]:
    """How a scene for ``spec`` (which names no required combination) can still hold one: colour the
    ``k``-th colour-free query's object with a required pair, or add a required pair as a distractor."""
    pairs = sorted(constraints.require.pairs)
    recolour = [(k, p) for k, q in enumerate(spec.objects) if q.colour is None
                for p in pairs if p[1] == q.shape]
    if recolour:
        return recolour[rng.integers(len(recolour))]
    used = {q.shape for q in spec.objects}
    if sum(q.count for q in spec.objects) < MAX_OBJECTS:
        extra = [p for p in pairs if p[1] not in used]
        if extra:
            return None, extra[rng.integers(len(extra))]
    raise ValueError(
        f"spec {spec} leaves no room for a required combination ({constraints.require}); "
        "draw the spec with random_spec(rng, constraints=...) so that it names one"
    )


def scene_for_spec(spec: Spec, rng: np.random.Generator, *, size: int = 64,
                   constraints: Constraints = NO_CONSTRAINTS, max_distractors: int | None = None,
                   vary_background: bool = False) -> Scene:
    """A scene that satisfies ``spec``, plus up to ``max_distractors`` (default
    ``constraints.max_distractors``) objects whose shapes the spec does not mention (so no
    distractor can break a count or a relation)."""
    check_rng(rng)
    _check_constraints(constraints)
    _check_spec(spec, constraints)
    total = sum(q.count for q in spec.objects)
    check_scene_size(size, total)
    max_distractors = check_max_distractors(
        constraints.max_distractors if max_distractors is None else max_distractors)
    tint, extra = (None, None)
    if constraints.require and not constraints.require.in_spec(spec):
        tint, extra = _required_extra(spec, constraints, rng)
    free_shapes = [s for s in SHAPES if s not in {q.shape for q in spec.objects}]

    def plan() -> tuple[list[_Slot], _Link | None]:
        slots: list[_Slot] = []
        firsts = []
        for k, q in enumerate(spec.objects):
            firsts.append(len(slots))
            for j in range(q.count):
                if k == tint and j == 0:
                    slots.append(_Slot(q.shape, extra[0], _random_size(rng)))
                elif q.colour is not None:
                    slots.append(_Slot(q.shape, q.colour, _random_size(rng)))
                else:
                    slots.append(_random_slot(rng, constraints, [q.shape]))
        if tint is None and extra is not None:
            slots.append(_Slot(extra[1], extra[0], _random_size(rng)))
        room = min(max_distractors, MAX_OBJECTS - len(slots))
        if free_shapes and room > 0:
            slots += [_random_slot(rng, constraints, free_shapes) for _ in range(rng.integers(room + 1))]
        link = _Link(firsts[0], spec.relation, firsts[1]) if spec.relation is not None else None
        return slots, link

    def accept(scene: Scene) -> bool:
        return satisfies(scene, spec) and constraints.allows(scene)

    vary = vary_background or constraints.vary_background
    return _build(rng, plan, accept, vary, f"a scene for {spec}")


# --- random specs -----------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: list):
    return items[rng.integers(len(items))]


def random_spec(rng: np.random.Generator, category: str | None = None, *,
                constraints: Constraints = NO_CONSTRAINTS) -> Spec:
    """A random GenEval-style ``Spec`` of ``category`` (default: any of ``CATEGORIES``).

    The spec never names a combination ``constraints.forbid`` holds; when ``constraints.require``
    is set it names one of those (so only ``colors``, ``color_attr`` and ``position`` can be drawn)."""
    check_rng(rng)
    _check_constraints(constraints)
    need = constraints.require
    able = [c for c in CATEGORIES if not need
            or (need.pairs and c in ("colors", "color_attr")) or (need.relations and c == "position")]
    if category is None:
        category = _pick(rng, able)
    elif category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {list(CATEGORIES)}")
    elif category not in able:
        raise ValueError(
            f"category {category!r} cannot name a required combination ({need}); choose one of {able}"
        )
    shapes = list(SHAPES)
    allowed_pairs = [(c, s) for s in SHAPES for c in constraints.colours_for(s)]

    if category == "single_object":
        return Spec(category, [ObjectQuery(_pick(rng, shapes))])
    if category == "counting":
        return Spec(category, [ObjectQuery(_pick(rng, shapes), count=int(rng.integers(COUNT_RANGE[0],
                                                                                    COUNT_RANGE[1] + 1)))])
    if category == "two_object":
        a, b = rng.choice(len(shapes), size=2, replace=False)
        return Spec(category, [ObjectQuery(shapes[a]), ObjectQuery(shapes[b])])
    if category == "colors":
        colour, shape = _pick(rng, sorted(need.pairs) if need else allowed_pairs)
        return Spec(category, [ObjectQuery(shape, colour)])
    if category == "color_attr":
        first = _pick(rng, sorted(need.pairs)) if need else _pick(rng, allowed_pairs)
        others = [p for p in allowed_pairs if p[0] != first[0] and p[1] != first[1]]
        pair = [first, _pick(rng, others)]
        if rng.integers(2):
            pair.reverse()
        return Spec(category, [ObjectQuery(s, c) for c, s in pair])
    # position
    for _ in range(MAX_TRIES):
        if need:
            a, rel, b = _pick(rng, sorted(need.relations))
            if rng.integers(2):
                a, rel, b = b, INVERSE[rel], a
        else:
            i, j = rng.choice(len(shapes), size=2, replace=False)
            a, rel, b = shapes[i], _pick(rng, list(RELATIONS)), shapes[j]
        if not constraints.forbid.has_relation(a, rel, b):
            return Spec(category, [ObjectQuery(a), ObjectQuery(b)], relation=rel)
    raise ValueError(f"the constraints forbid every position prompt ({constraints.forbid}); relax them")


__all__ = [
    "COUNT_RANGE",
    "INVERSE",
    "MAX_TRIES",
    "NO_CONSTRAINTS",
    "PLACE_MARGIN",
    "Combos",
    "Constraints",
    "check_rng",
    "check_scene_size",
    "random_scene",
    "random_spec",
    "satisfies",
    "scene_for_spec",
]
