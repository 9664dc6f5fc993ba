"""What a prompt, an edit or a detector says about a scene, as data shared by the generator and
ShapeEval.

- ``Spec``: the requirements of a text-to-image prompt, GenEval-style. ``category`` is one of
  ``CATEGORIES``; ``objects`` are ``ObjectQuery``s; ``relation`` (position prompts only) relates
  ``objects[0]`` to ``objects[1]`` ("a circle left of a square": objects[0] = circle).
  Semantics: for ``counting`` the scene holds exactly ``count`` objects matching the query; for the
  other categories at least ``count``. A query with ``colour=None`` matches any colour.
- ``EditSpec``: one edit of a scene (``EDIT_OPS``); see the field docs.
- ``Detection``: one object found in an image (or read off a scene): shape, colour, centre, area.
"""

from __future__ import annotations

import attrs

from nxrecipes.data.shapeworld.world import COLOURS, RELATIONS, SHAPES, ShapeObject

CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
EDIT_OPS: tuple[str, ...] = ("recolour", "add", "remove", "move", "replace")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")


def _member(choices, what: str, optional: bool = False):
    def validate(instance, attribute, value) -> None:
        if optional and value is None:
            return
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")

    return validate


def _count(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise ValueError(f"count = {value!r} is out of range; ShapeWorld counts 1 to 4 objects")


@attrs.frozen
class ObjectQuery:
    shape: str = attrs.field(validator=_member(SHAPES, "shape"))
    colour: str | None = attrs.field(default=None, validator=_member(COLOURS, "colour", optional=True))
    count: int = attrs.field(default=1, validator=_count)

    def matches(self, shape: str, colour: str) -> bool:
        return shape == self.shape and (self.colour is None or colour == self.colour)

    def describe(self) -> str:
        """"red circle", or "circle" when any colour matches."""
        return f"{self.colour} {self.shape}" if self.colour else self.shape


@attrs.frozen
class Spec:
    category: str = attrs.field(validator=_member(CATEGORIES, "category"))
    objects: tuple[ObjectQuery, ...] = attrs.field(converter=tuple)
    relation: str | None = attrs.field(default=None, validator=_member(RELATIONS, "relation", optional=True))

    @objects.validator
    def _check_objects(self, attribute, value) -> None:
        if not value:
            raise ValueError("a Spec needs at least one ObjectQuery")
        if self.category == "position" and (self.relation is None or len(value) != 2):
            raise ValueError("a position Spec needs exactly two objects and a relation")


@attrs.frozen
class EditSpec:
    """One edit. ``target`` names the object edited (its shape and colour in the source scene).

    - recolour: ``colour`` is the new colour.
    - add: ``target`` is the object added (``colour``/``shape`` unused); ``direction`` optional.
    - remove: the target disappears.
    - move: ``direction`` is where it goes.
    - replace: the target becomes ``shape`` (and ``colour`` when given, else keeps its colour).
    """

    op: str = attrs.field(validator=_member(EDIT_OPS, "edit op"))
    target: ObjectQuery
    colour: str | None = attrs.field(default=None, validator=_member(COLOURS, "colour", optional=True))
    shape: str | None = attrs.field(default=None, validator=_member(SHAPES, "shape", optional=True))
    direction: str | None = attrs.field(
        default=None, validator=_member(DIRECTIONS, "direction", optional=True)
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.target, ObjectQuery):
            raise TypeError(f"EditSpec.target must be an ObjectQuery, got {type(self.target).__name__}")
        used = _EDIT_FIELDS[self.op]
        for name in ("colour", "shape", "direction"):
            value = getattr(self, name)
            if value is not None and name not in used:
                raise ValueError(f"a {self.op} edit does not use {name} = {value!r}; leave it None")
        needed = {"recolour": "colour", "move": "direction", "replace": "shape"}.get(self.op)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"a {self.op} edit needs {needed}; got None")
        if self.op == "add" and self.target.colour is None:
            raise ValueError(
                f"an add edit needs target.colour (the new {self.target.shape}'s colour); got None"
            )
        if self.target.count != 1:
            raise ValueError(f"an edit targets one object; got target.count = {self.target.count}")


_EDIT_FIELDS = {
    "recolour": {"colour"},
    "add": {"direction"},
    "remove": set(),
    "move": {"direction"},
    "replace": {"colour", "shape"},
}


@attrs.frozen
class Detection:
    shape: str
    colour: str
    x: float  # centre, normalised to [0, 1]
    y: float
    area: float  # fraction of the image covered

    @classmethod
    def of(cls, obj: ShapeObject, area: float | None = None) -> Detection:
        """The detection a perfect detector would report for ``obj``."""
        return cls(obj.shape, obj.colour, obj.x, obj.y, area if area is not None else obj.extent**2)
