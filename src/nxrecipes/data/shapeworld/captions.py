"""Prompts and captions: specs said in words and read back, scenes captioned canonically.

- ``prompt_for_spec(spec, rng)`` picks one of ``TEMPLATES[spec.category]`` (and, for position, one
  of ``RELATION_PHRASES``); ``parse_prompt`` reads every phrasing back to the same ``Spec``.
- ``canonical_caption(scene)`` lists each (colour, shape) group as count + colour + shape, shapes
  in ``SHAPES`` order then colours in ``COLOURS`` order: "two red circles, a blue square and a
  green star". ``parse_caption`` reads it back as a ``Counter`` and also takes "one" for "a",
  singular for plural, commas for "and", and a few leading phrases ("there are", "a photo of").
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from nxrecipes.data.shapeworld.scenes import check_rng
from nxrecipes.data.shapeworld.spec import ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import COLOURS, NUMBER_WORDS, RELATIONS, SHAPES, Scene

# {a}/{b}: "a red circle"; {a_that}: "a circle that is red"; {a_coloured}: "a circle coloured red".
TEMPLATES: dict[str, tuple[str, ...]] = {
    "single_object": ("a photo of {a}", "{a}", "an image of {a}", "a picture of {a}"),
    "two_object": ("a photo of {a} and {b}", "{a} and {b}", "{a} together with {b}",
                   "an image of {a} and {b}"),
    "counting": ("a photo of {a}", "{a}", "exactly {a}", "an image of {a}"),
    "colors": ("a photo of {a}", "{a}", "{a_that}", "an image of {a_coloured}", "a picture of {a}"),
    "color_attr": ("a photo of {a} and {b}", "{a} and {b}", "{a} next to {b}", "{a_that} and {b_that}",
                   "an image of {a_coloured} together with {b_coloured}"),
    "position": ("a photo of {a} {rel} {b}", "{a} {rel} {b}", "an image of {a} placed {rel} {b}"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
CONJUNCTIONS: tuple[str, ...] = ("together with", "next to", "and")
PROMPT_PREFIXES: tuple[str, ...] = ("a photo of", "an image of", "a picture of", "exactly")
CAPTION_PREFIXES: tuple[str, ...] = (
    "there is", "there are", "a photo of", "an image of", "a picture of", "the image shows",
    "the picture shows", "this image shows", "this is",
)
EMPTY_CAPTIONS: tuple[str, ...] = ("nothing", "no shapes", "an empty scene", "empty")
COUNT_WORDS: dict[str, int] = {
    w: n for n, w in enumerate(NUMBER_WORDS + ("five", "six", "seven", "eight", "nine", "ten")) if n
} | {"a": 1, "an": 1}
_FILLERS = ("placed",)  # may sit between the first object and the relation


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


_NOUNS: dict[str, str] = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(shape: str, colour: str | None = None, count: int = 1, *, numbered: bool = False,
                  style: str = "plain") -> str:
    """"a red circle", "three circles", "a circle that is red" (``style="that"``), "a circle coloured
    red" (``style="coloured"``); ``numbered`` says "one" instead of "a"."""
    noun = shape if count == 1 else plural(shape)
    if colour is None or style == "plain":
        body = f"{colour} {noun}" if colour else noun
        det = NUMBER_WORDS[count] if numbered or count > 1 else article(body)
        return f"{det} {body}"
    det = NUMBER_WORDS[count] if numbered or count > 1 else article(noun)
    tail = f"that {'is' if count == 1 else 'are'} {colour}" if style == "that" else f"coloured {colour}"
    return f"{det} {noun} {tail}"


# --- prompts ----------------------------------------------------------------------------------


def _check_prompt_spec(spec: Spec) -> None:
    cat, qs = spec.category, spec.objects
    rules = {
        "single_object": (len(qs) == 1 and qs[0].count == 1 and qs[0].colour is None,
                          "one query of count 1 without colour"),
        "colors": (len(qs) == 1 and qs[0].count == 1 and qs[0].colour is not None,
                   "one query of count 1 with a colour"),
        "counting": (len(qs) == 1, "one query"),
        "two_object": (len(qs) == 2 and all(q.colour is None for q in qs), "two queries without colours"),
        "color_attr": (len(qs) == 2 and any(q.colour is not None for q in qs),
                       "two queries, at least one with a colour"),
        "position": (len(qs) == 2, "two queries"),
    }
    ok, rule = rules[cat]
    if spec.relation is not None and cat != "position":
        ok, rule = False, "no relation (only 'position' prompts have one)"
    if not ok:
        raise ValueError(f"a {cat!r} prompt needs {rule}; got {spec}")


def prompt_for_spec(spec: Spec, rng: np.random.Generator, *, template: int | None = None) -> str:
    """``spec`` in words, in a phrasing drawn from ``rng`` (or ``TEMPLATES[category][template]``)."""
    if not isinstance(spec, Spec):
        raise TypeError(f"spec must be a Spec, got {type(spec).__name__}")
    check_rng(rng)
    _check_prompt_spec(spec)
    templates = TEMPLATES[spec.category]
    if template is None:
        template = int(rng.integers(len(templates)))
    elif isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(templates):
        raise ValueError(
            f"template = {template!r} is out of range; {spec.category!r} has templates 0 to "
            f"{len(templates) - 1}"
        )
    numbered = spec.category == "counting"
    fields = {}
    for name, q in zip("ab", spec.objects, strict=False):
        for style, key in (("plain", name), ("that", f"{name}_that"), ("coloured", f"{name}_coloured")):
            fields[key] = object_phrase(q.shape, q.colour, q.count, numbered=numbered, style=style)
    if spec.relation is not None:
        phrases = RELATION_PHRASES[spec.relation]
        fields["rel"] = phrases[int(rng.integers(len(phrases)))]
    return templates[template].format(**fields)


def _words(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    words = text.lower().replace(",", " , ").replace(".", " ").replace("!", " ").replace("-", " ").split()
    if not words:
        raise ValueError(f"{what} is empty; give a sentence such as 'a red circle'")
    return words


def _strip_prefix(words: list[str], prefixes: tuple[str, ...]) -> list[str]:
    for prefix in sorted(prefixes, key=len, reverse=True):
        p = prefix.split()
        if words[: len(p)] == p and len(words) > len(p):
            return words[len(p):]
    return words


def _find(words: list[str], phrases: list[tuple[str, str]]) -> tuple[int, int, str] | None:
    """First (start, end, meaning) of one of ``phrases`` ((text, meaning)) in ``words``, longest first."""
    ordered = sorted(phrases, key=lambda p: len(p[0].split()), reverse=True)
    for i in range(len(words)):
        for text, meaning in ordered:
            p = text.split()
            if words[i: i + len(p)] == p:
                return i, i + len(p), meaning
    return None


def _unknown(word: str, text: str, what: str) -> ValueError:
    return ValueError(
        f"unknown word {word!r} in {what} {text!r}; ShapeWorld knows the colours {list(COLOURS)} and the "
        f"shapes {list(SHAPES)}"
    )


def _group(words: list[str], text: str, what: str) -> tuple[int, str | None, str, bool]:
    """(count, colour, shape, numbered) of "[a|one|two..] [colour] shape [that is colour|coloured colour]"."""
    if not words:
        raise ValueError(f"{what} {text!r} has an empty object description; name one, e.g. 'a red circle'")
    rest = list(words)
    count, numbered = 1, False
    if rest[0] in COUNT_WORDS or rest[0].isdigit():
        count = int(rest[0]) if rest[0].isdigit() else COUNT_WORDS[rest[0]]
        numbered = rest[0] not in ("a", "an")
        rest = rest[1:]
    colour = None
    if rest and rest[0] in COLOURS:
        colour, rest = rest[0], rest[1:]
    if not rest:
        raise ValueError(f"{what} {text!r} names no shape in {' '.join(words)!r}; add one of {list(SHAPES)}")
    if rest[0] not in _NOUNS:
        raise _unknown(rest[0], text, what)
    shape, rest = _NOUNS[rest[0]], rest[1:]
    if rest and colour is None:
        if rest[:2] in (["that", "is"], ["that", "are"]) and len(rest) == 3:
            colour, rest = rest[2], []
        elif rest[0] in ("coloured", "colored") and len(rest) == 2:
            colour, rest = rest[1], []
        if colour is not None and colour not in COLOURS:
            raise _unknown(colour, text, what)
    if rest:
        raise _unknown(rest[0], text, what)
    return count, colour, shape, numbered


def _query(words: list[str], text: str) -> tuple[ObjectQuery, bool]:
    count, colour, shape, numbered = _group(words, text, "prompt")
    return ObjectQuery(shape, colour, count), numbered


def parse_prompt(text: str) -> Spec:
    """The ``Spec`` a prompt states (the inverse of ``prompt_for_spec`` over every template)."""
    words = _strip_prefix(_words(text, "prompt"), PROMPT_PREFIXES)
    words = [w for w in words if w != ","]
    relation = _find(words, [(p, r) for r in RELATIONS for p in RELATION_PHRASES[r]])
    if relation is not None:
        start, end, rel = relation
        left = words[:start]
        while left and left[-1] in _FILLERS:
            left = left[:-1]
        (a, _), (b, _) = _query(left, text), _query(words[end:], text)
        return Spec("position", (a, b), relation=rel)
    joint = _find(words, [(c, c) for c in CONJUNCTIONS])
    if joint is not None:
        start, end, _ = joint
        (a, _), (b, _) = _query(words[:start], text), _query(words[end:], text)
        coloured = a.colour is not None or b.colour is not None
        return Spec("color_attr" if coloured else "two_object", (a, b))
    q, numbered = _query(words, text)
    if numbered or q.count > 1:
        return Spec("counting", (q,))
    return Spec("colors" if q.colour is not None else "single_object", (q,))


# --- captions ---------------------------------------------------------------------------------


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def canonical_caption(scene: Scene) -> str:
    """Every (colour, shape) group of ``scene`` as count + colour + shape, in a fixed order."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    groups = Counter((o.colour, o.shape) for o in scene.objects)
    if not groups:
        return EMPTY_CAPTIONS[0]
    order = sorted(groups, key=lambda p: (SHAPES.index(p[1]), list(COLOURS).index(p[0])))
    return _join([object_phrase(shape, colour, groups[(colour, shape)]) for colour, shape in order])


def parse_caption(text: str) -> Counter[tuple[str, str]]:
    """How many objects of each (colour, shape) a caption lists (the inverse of ``canonical_caption``)."""
    words = _strip_prefix(_words(text, "caption"), CAPTION_PREFIXES)
    if " ".join(words) in EMPTY_CAPTIONS:
        return Counter()
    groups: list[list[str]] = [[]]
    for w in words:
        if w in (",", "and"):
            groups.append([])
        else:
            groups[-1].append(w)
    out: Counter[tuple[str, str]] = Counter()
    for g in groups:
        if not g:
            continue  # ", and" leaves an empty group between the comma and "and"
        count, colour, shape, _ = _group(g, text, "caption")
        if colour is None:
            raise ValueError(
                f"caption {text!r} gives no colour for {' '.join(g)!r}; a caption names each object's "
                f"colour, one of {list(COLOURS)}"
            )
        out[(colour, shape)] += count
    return out


__all__ = [
    "CONJUNCTIONS",
    "RELATION_PHRASES",
    "TEMPLATES",
    "article",
    "canonical_caption",
    "object_phrase",
    "parse_caption",
    "parse_prompt",
    "plural",
    "prompt_for_spec",
]
