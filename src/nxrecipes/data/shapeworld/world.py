"""The ShapeWorld vocabulary and scene model: palette, shapes, sizes, objects, scenes, relations.

Coordinates are normalised: an object's centre (x, y) lies in [0, 1]^2 with x to the right and y
downwards (image convention); an object of size ``s`` occupies a square of side ``SIZES[s]`` times
the image side around its centre. Objects never overlap and keep a gap of ``GAP`` between their
squares, so every object is one connected region of one colour.
"""

from __future__ import annotations

import math

import attrs

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (247, 127, 0),
    "yellow": (240, 205, 30),
    "green": (46, 160, 67),
    "blue": (30, 100, 220),
    "purple": (130, 60, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: dict[str, float] = {"small": 0.22, "large": 0.34}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
BACKGROUND: tuple[int, int, int] = (236, 233, 226)
GAP = 0.03  # minimum gap between the squares of two objects, as a fraction of the image side
RELATION_MARGIN = 0.1  # centres must differ by more than this along the relation's axis
MIN_OBJECT_PIXELS = 7  # a small object narrower than this cannot be drawn recognisably
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256
MAX_OBJECTS = 4

NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def _one_of(choices, what: str):
    def validate(instance, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")

    return validate


def _unit(instance, attribute, value) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} = {value!r} must lie in [0, 1] (a normalised coordinate)")


@attrs.frozen
class ShapeObject:
    shape: str = attrs.field(validator=_one_of(SHAPES, "shape"))
    colour: str = attrs.field(validator=_one_of(COLOURS, "colour"))
    size: str = attrs.field(default="large", validator=_one_of(SIZES, "size"))
    x: float = attrs.field(default=0.5, validator=_unit)
    y: float = attrs.field(default=0.5, validator=_unit)

    @property
    def extent(self) -> float:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the object's square, normalised."""
        half = self.extent / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def describe(self) -> str:
        return f"{self.colour} {self.shape}"


@attrs.frozen
class Scene:
    """Objects on a background; ``background`` is the base colour and ``gradient`` the strength of a
    mild vertical/horizontal shading (0 = flat), part of the scene so rendering stays deterministic."""

    objects: tuple[ShapeObject, ...] = attrs.field(converter=tuple)
    background: tuple[int, int, int] = BACKGROUND
    gradient: tuple[float, float] = (0.0, 0.0)

    @objects.validator
    def _check(self, attribute, value) -> None:
        if len(value) > MAX_OBJECTS:
            raise ValueError(f"a scene holds at most {MAX_OBJECTS} objects, got {len(value)}")
        for i, a in enumerate(value):
            if not isinstance(a, ShapeObject):
                raise TypeError(f"objects[{i}] must be a ShapeObject, got {type(a).__name__}")
            if not fits(a):
                raise ValueError(f"objects[{i}] ({a.describe()} at ({a.x:.3f}, {a.y:.3f})) leaves the image")
            for j in range(i):
                if overlaps(a, value[j]):
                    raise ValueError(f"objects[{i}] and objects[{j}] overlap; move one of them")

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum(
            (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
            for o in self.objects
        )


def fits(obj: ShapeObject) -> bool:
    left, top, right, bottom = obj.box
    return left >= 0 and top >= 0 and right <= 1 and bottom <= 1


def overlaps(a: ShapeObject, b: ShapeObject, gap: float = GAP) -> bool:
    al, at, ar, ab = a.box
    bl, bt, br, bb = b.box
    return not (ar + gap <= bl or br + gap <= al or ab + gap <= bt or bb + gap <= at)


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str,
                   margin: float = RELATION_MARGIN) -> bool:
    """Whether centre ``a`` is ``relation`` centre ``b`` (e.g. "left of"), by more than ``margin``."""
    (ax, ay), (bx, by) = a, b
    if relation == "left of":
        return bx - ax > margin
    if relation == "right of":
        return ax - bx > margin
    if relation == "above":
        return by - ay > margin
    if relation == "below":
        return ay - by > margin
    raise ValueError(f"unknown relation {relation!r}; choose one of {list(RELATIONS)}")


def check_image_size(size: int) -> int:
    """``size`` is an int in [32, 256] large enough to draw a small object recognisably."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int number of pixels, got {size!r}")
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"size = {size} must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels")
    smallest = min(SIZES.values()) * size
    if smallest < MIN_OBJECT_PIXELS:
        need = math.ceil(MIN_OBJECT_PIXELS / min(SIZES.values()))
        raise ValueError(
            f"size = {size} px draws small objects {smallest:.1f} px wide, below the "
            f"{MIN_OBJECT_PIXELS} px a shape needs; use size >= {need}"
        )
    return size
