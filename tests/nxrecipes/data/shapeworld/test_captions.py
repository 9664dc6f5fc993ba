"""Prompts read back to their spec under every template; canonical captions read back to the scene."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxrecipes.data.shapeworld.captions import (
    RELATION_PHRASES,
    TEMPLATES,
    canonical_caption,
    parse_caption,
    parse_prompt,
    prompt_for_spec,
)
from nxrecipes.data.shapeworld.scenes import random_scene, random_spec
from nxrecipes.data.shapeworld.spec import CATEGORIES, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import COLOURS, RELATIONS, SHAPES, Scene, ShapeObject

shapes = st.sampled_from(SHAPES)
colours = st.sampled_from(list(COLOURS))


NO_COLOUR, ONE = st.none(), st.just(1)


def queries(colour=NO_COLOUR, count=ONE):
    return st.builds(ObjectQuery, shapes, colour, count)


def two(colour=NO_COLOUR, count=ONE):
    return st.tuples(queries(colour, count), queries(colour, count))


SPECS = {
    "single_object": queries().map(lambda q: Spec("single_object", [q])),
    "colors": queries(colours).map(lambda q: Spec("colors", [q])),
    "counting": queries(st.none() | colours, st.integers(1, 4)).map(lambda q: Spec("counting", [q])),
    "two_object": two(count=st.integers(1, 2)).map(lambda qs: Spec("two_object", qs)),
    "color_attr": two(st.none() | colours, st.integers(1, 2))
    .filter(lambda qs: any(q.colour for q in qs))
    .map(lambda qs: Spec("color_attr", qs)),
    "position": st.tuples(two(st.none() | colours, st.integers(1, 2)), st.sampled_from(RELATIONS))
    .map(lambda a: Spec("position", a[0], relation=a[1])),
}
CASES = [(c, k) for c in CATEGORIES for k in range(len(TEMPLATES[c]))]


@pytest.mark.parametrize(("category", "template"), CASES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_every_template_parses_back_to_its_spec(category, template, data, seed):
    spec = data.draw(SPECS[category])
    prompt = prompt_for_spec(spec, np.random.default_rng(seed), template=template)
    assert parse_prompt(prompt) == spec, prompt
    assert parse_prompt(prompt.upper() + ".") == spec  # case and a full stop do not matter


@pytest.mark.parametrize("relation", RELATIONS)
def test_every_relation_phrase_parses(relation):
    for phrase in RELATION_PHRASES[relation]:
        spec = parse_prompt(f"a red circle {phrase} a square")
        assert spec == Spec("position", [ObjectQuery("circle", "red"), ObjectQuery("square")], relation=relation)


@given(st.integers(0, 2**32 - 1))
def test_random_prompts_round_trip(seed):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    assert parse_prompt(prompt_for_spec(spec, rng)) == spec


def test_prompts_vary_in_phrasing():
    spec = Spec("colors", [ObjectQuery("circle", "orange")])
    prompts = {prompt_for_spec(spec, np.random.default_rng(s)) for s in range(60)}
    assert len(prompts) == len(TEMPLATES["colors"])
    assert "an orange circle" in prompts and "a circle that is orange" in prompts


def test_counting_says_number_words():
    spec = Spec("counting", [ObjectQuery("cross", count=3)])
    assert prompt_for_spec(spec, np.random.default_rng(0), template=1) == "three crosses"
    assert parse_prompt("exactly one star") == Spec("counting", [ObjectQuery("star", count=1)])


def test_canonical_caption_lists_groups_in_a_fixed_order():
    objs = [
        ShapeObject("star", "green", "small", 0.15, 0.15),
        ShapeObject("circle", "red", "small", 0.5, 0.15),
        ShapeObject("square", "blue", "small", 0.85, 0.15),
        ShapeObject("circle", "red", "small", 0.5, 0.6),
    ]
    caption = canonical_caption(Scene(objs))
    assert caption == "two red circles, a blue square and a green star"
    assert canonical_caption(Scene(objs[::-1])) == caption
    assert canonical_caption(Scene([ShapeObject("cross", "orange")])) == "an orange cross"
    assert canonical_caption(Scene([])) == "nothing" and parse_caption("nothing") == Counter()


@given(st.integers(0, 2**32 - 1))
def test_canonical_caption_round_trip(seed):
    scene = random_scene(np.random.default_rng(seed))
    assert parse_caption(canonical_caption(scene)) == Counter((o.colour, o.shape) for o in scene.objects)


@pytest.mark.parametrize(
    "variant",
    [
        "two red circles, a blue square and a green star",
        "Two red circles, one blue square, and a green star.",
        "2 red circle and a blue square and one green stars",
        "There are two red circles, a blue square, a green star",
        "a photo of a red circle, a red circle, a blue square and a green star",
    ],
)
def test_parse_caption_tolerates_common_variants(variant):
    assert parse_caption(variant) == Counter({("red", "circle"): 2, ("blue", "square"): 1, ("green", "star"): 1})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: parse_prompt("a pink circle"), ValueError, r"unknown word 'pink' in prompt 'a pink circle'"),
        (lambda: parse_prompt("a red hexagon"), ValueError, r"unknown word 'hexagon'.*shapes \['circle'"),
        (lambda: parse_prompt("a circle that is teal"), ValueError, r"unknown word 'teal'"),
        (lambda: parse_prompt("five circles"), ValueError, r"count = 5 is out of range"),
        (lambda: parse_prompt("a red"), ValueError, r"names no shape in 'a red'; add one of"),
        (lambda: parse_prompt("   "), ValueError, r"prompt is empty"),
        (lambda: parse_prompt(3), TypeError, r"prompt must be a str, got int"),
        (lambda: parse_caption("a red circle and a wobbly square"), ValueError, r"unknown word 'wobbly'"),
        (lambda: parse_caption("a circle"), ValueError, r"gives no colour for 'a circle'"),
        (lambda: canonical_caption("a red circle"), TypeError, r"scene must be a Scene, got str"),
        (lambda: prompt_for_spec(Spec("single_object", [ObjectQuery("circle", "red")]), np.random.default_rng(0)),
         ValueError, r"a 'single_object' prompt needs one query of count 1 without colour"),
        (lambda: prompt_for_spec(Spec("colors", [ObjectQuery("circle", "red")], relation="above"),
                                 np.random.default_rng(0)), ValueError, r"a 'colors' prompt needs no relation"),
        (lambda: prompt_for_spec(Spec("colors", [ObjectQuery("circle", "red")]), np.random.default_rng(0),
                                 template=9), ValueError, r"template = 9 is out of range; 'colors' has templates 0 to 4"),
    ],
)
def test_bad_text(call, error, match):
    with pytest.raises(error, match=match):
        call()
