"""Edit instructions in words: several phrasings per edit op, and the parser that inverts them."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping

import attrs
import numpy as np

from nxrecipes.data.shapeworld.scenes import check_rng
from nxrecipes.data.shapeworld.spec import EditSpec, ObjectQuery
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES, SIZES

MOVE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "left", "leftwards"),
    "right": ("to the right", "right", "rightwards"),
    "up": ("up", "upwards", "towards the top"),
    "down": ("down", "downwards", "towards the bottom"),
}
PLACE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "up": ("at the top", "near the top"),
    "down": ("at the bottom", "near the bottom"),
}


def _alt(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_C, _S = _alt(COLOURS), _alt(SHAPES)
_PATTERNS = {
    "obj": f"(?:(?P<tc>{_C}) )?(?P<ts>{_S})",
    "colour": f"(?P<nc>{_C})",
    "a_new": f"an? (?:(?P<size>{_alt(SIZES)}) )?(?P<tc>{_C}) (?P<ts>{_S})",
    "a_rep": f"an? (?:(?P<nc>{_C}) )?(?P<ns>{_S})",
    "to_dir": "(?P<move>" + _alt(w for ws in MOVE_WORDS.values() for w in ws) + ")",
    "where": "(?: (?P<place>" + _alt(w for ws in PLACE_WORDS.values() for w in ws) + "))?",
}
_FIELD = re.compile(r"\{(\w+)\}")


def _article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _fillings(name: str, edit: EditSpec, size: str | None) -> list[str]:
    t = edit.target
    if name == "obj":
        return [t.describe()]
    if name == "colour":
        return [edit.colour]
    if name == "a_new":
        return [_article(f"{s}{t.colour} {t.shape}") for s in dict.fromkeys(("", f"{size} " if size else ""))]
    if name == "a_rep":
        return [_article(f"{edit.colour} {edit.shape}" if edit.colour else edit.shape)]
    if name == "to_dir":
        return list(MOVE_WORDS[edit.direction])
    if name == "where":
        return [f" {w}" for w in PLACE_WORDS[edit.direction]] if edit.direction else [""]
    raise KeyError(name)


@attrs.frozen
class Phrasebook:
    """Templates per edit op, e.g. ``"make the {obj} {colour}"``; fields: ``obj`` (the target),
    ``colour`` (new colour), ``a_new`` (article, optional size, colour and shape of an added
    object), ``a_rep`` (article, optional colour and shape of a replacement), ``to_dir`` (where a
    move goes), ``where`` (optional place of an added object, with its leading space)."""

    templates: Mapping[str, tuple[str, ...]]
    what: str = "instruction"
    _compiled: list = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = []
        for op, templates in self.templates.items():
            for template in templates:
                parts = _FIELD.split(template)  # literal, field, literal, field, ...
                regex = "".join(re.escape(p) if k % 2 == 0 else _PATTERNS[p] for k, p in enumerate(parts))
                compiled.append((op, re.compile(regex)))
        object.__setattr__(self, "_compiled", compiled)

    def phrasings(self, edit: EditSpec, *, size: str | None = None) -> list[str]:
        """Every way this book says ``edit`` (lower case, no final full stop)."""
        if not isinstance(edit, EditSpec):
            raise TypeError(f"edit must be an EditSpec, got {type(edit).__name__}")
        if edit.op not in self.templates:
            raise ValueError(
                f"this {self.what} phrasebook has no {edit.op!r} templates; use one of {list(self.templates)}"
            )
        out = []
        for template in self.templates[edit.op]:
            parts = _FIELD.split(template)
            options = [[p] if k % 2 == 0 else _fillings(p, edit, size) for k, p in enumerate(parts)]
            out += ["".join(choice) for choice in itertools.product(*options)]
        return out

    def phrase(self, edit: EditSpec, rng: np.random.Generator, *, size: str | None = None) -> str:
        check_rng(rng)
        options = self.phrasings(edit, size=size)
        return options[rng.integers(len(options))]

    def parse(self, text: str) -> EditSpec:
        """The ``EditSpec`` a phrasing says (case, spacing and a final ``.``/``!`` are ignored)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        clean = " ".join(text.lower().split()).rstrip(".!").strip()
        for op, regex in self._compiled:
            m = regex.fullmatch(clean)
            if m:
                return _spec(op, m.groupdict())
        example = self.phrasings(EditSpec("recolour", ObjectQuery("circle", "red"), colour="blue"))[0] \
            if "recolour" in self.templates else next(iter(self.templates.values()))[0]
        raise ValueError(f"cannot parse {self.what} {text!r}; write it like {example!r}")


def _spec(op: str, g: dict) -> EditSpec:
    direction = None
    for key, words in (("move", MOVE_WORDS), ("place", PLACE_WORDS)):
        if g.get(key):
            direction = next(d for d, ws in words.items() if g[key] in ws)
    target = ObjectQuery(g["ts"], g.get("tc"))
    return EditSpec(op, target, colour=g.get("nc"), shape=g.get("ns"), direction=direction)


INSTRUCTIONS = Phrasebook({
    "recolour": (
        "make the {obj} {colour}",
        "change the colour of the {obj} to {colour}",
        "paint the {obj} {colour}",
        "turn the {obj} {colour}",
        "recolour the {obj} {colour}",
        "the {obj} should be {colour}",
    ),
    "add": (
        "add {a_new}{where}",
        "put {a_new}{where}",
        "draw {a_new}{where}",
        "insert {a_new}{where}",
        "place {a_new}{where}",
    ),
    "remove": (
        "remove the {obj}",
        "delete the {obj}",
        "take away the {obj}",
        "erase the {obj}",
        "get rid of the {obj}",
    ),
    "move": (
        "move the {obj} {to_dir}",
        "shift the {obj} {to_dir}",
        "slide the {obj} {to_dir}",
        "push the {obj} {to_dir}",
    ),
    "replace": (
        "replace the {obj} with {a_rep}",
        "turn the {obj} into {a_rep}",
        "swap the {obj} for {a_rep}",
        "change the {obj} into {a_rep}",
    ),
})


def instruction(edit: EditSpec, rng: np.random.Generator, *, size: str | None = None) -> str:
    """One phrasing of ``edit`` (e.g. "make the red circle blue"); ``size`` may be named for an add."""
    return INSTRUCTIONS.phrase(edit, rng, size=size)


def parse_instruction(text: str) -> EditSpec:
    """The ``EditSpec`` an instruction from ``instruction`` says (a named size is not kept)."""
    return INSTRUCTIONS.parse(text)


