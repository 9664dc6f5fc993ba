"""Interleaved sequences and in-context examples: alternation, one described edit per step, one
shared transformation, the split rule, bad arguments."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nxrecipes.data.shapeworld.edits import apply_edit, edit_holds
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.sequences import (
    MOTION_STEPS,
    NARRATIONS,
    make_in_context,
    make_interleaved,
    opening_sentence,
    parse_narration,
    place_of,
)
from nxrecipes.data.shapeworld.spec import DIRECTIONS, EDIT_OPS, EditSpec, ObjectQuery
from nxrecipes.data.shapeworld.splits import HELDOUT
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES, SIZES, Scene, ShapeObject


def rng(seed=0):
    return np.random.default_rng(seed)


def same_image(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


# --- interleaved ------------------------------------------------------------------------------


def test_interleaved_is_deterministic_from_the_generator():
    for kind in ("story", "motion"):
        a, b = make_interleaved(rng(4), kind=kind), make_interleaved(rng(4), kind=kind)
        assert (a.scenes, a.edits, a.kind) == (b.scenes, b.edits, b.kind)
        assert len(a.parts) == len(b.parts)
        for p, q in zip(a.parts, b.parts, strict=True):
            assert same_image(p, q) if isinstance(p, Image.Image) else p == q


@pytest.mark.parametrize("kind", ["story", "motion"])
def test_sequences_alternate_and_each_step_is_the_described_edit(kind):
    lengths = set()
    for seed in range(25):
        seq = make_interleaved(rng(seed), size=48, kind=kind)
        assert seq.kind == kind
        texts, images = seq.parts[0::2], seq.parts[1::2]
        assert len(texts) == len(images) == len(seq.scenes) == len(seq.edits) + 1
        assert all(isinstance(t, str) for t in texts) and all(isinstance(i, Image.Image) for i in images)
        for image, scene in zip(images, seq.scenes, strict=True):
            assert same_image(image, render(scene, 48))
        for k, edit in enumerate(seq.edits):
            assert parse_narration(texts[k + 1]) == edit, texts[k + 1]
            assert edit_holds(seq.scenes[k], seq.scenes[k + 1], edit, min_move=seq.min_move)
        for obj in seq.scenes[0].objects:
            assert f"{obj.colour} {obj.shape} {place_of(obj)}" in texts[0].lower() or \
                f"{obj.colour} {obj.shape} sits {place_of(obj)}" in texts[0].lower()
        lengths.add(len(seq.edits))
        if kind == "motion":
            assert len(set(seq.edits)) == 1 and seq.edits[0].op == "move"
    assert lengths == {2, 3, 4}  # stories of 2–4 edits; motions of 3–5 frames


def test_motion_moves_one_object_in_even_steps():
    for seed in range(10):
        seq = make_interleaved(rng(seed), kind="motion")
        (edit,) = set(seq.edits)
        axis = "x" if edit.direction in ("left", "right") else "y"
        mover = [o for o in seq.scenes[0].objects if edit.target.matches(o.shape, o.colour)][0]
        i = seq.scenes[0].objects.index(mover)
        track = [getattr(s.objects[i], axis) for s in seq.scenes]
        assert np.allclose(np.diff(track), track[1] - track[0])


def test_both_kinds_are_drawn():
    assert {make_interleaved(rng(s)).kind for s in range(20)} == {"story", "motion"}


@given(st.sampled_from(EDIT_OPS), st.sampled_from(SHAPES), st.sampled_from(sorted(COLOURS)),
       st.sampled_from(sorted(COLOURS)), st.sampled_from(DIRECTIONS), st.none() | st.sampled_from(sorted(SIZES)))
def test_every_narration_parses_back(op, shape, colour, other, direction, size):
    target = ObjectQuery(shape, colour)
    fields = {
        "recolour": {"colour": other},
        "add": {"direction": direction},
        "remove": {},
        "move": {"direction": direction},
        "replace": {"shape": shape, "colour": other},
    }[op]
    edit = EditSpec(op, target, **fields)
    books = [NARRATIONS, MOTION_STEPS] if op == "move" else [NARRATIONS]
    for book in books:
        for text in book.phrasings(edit, size=size):
            assert parse_narration(text[:1].upper() + text[1:] + ".") == edit, text


def test_scene_description_names_every_object_and_place():
    scene = Scene([ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "large", 0.8, 0.2)])
    text = opening_sentence(scene, rng())
    assert "a small red circle on the left" in text and "a large blue square at the top right" in text
    one = opening_sentence(Scene([ShapeObject("star", "orange", "large", 0.5, 0.5)]), rng())
    assert one == "A large orange star sits in the middle."


# --- in-context -------------------------------------------------------------------------------


def test_in_context_is_deterministic_from_the_generator():
    a, b = make_in_context(rng(9)), make_in_context(rng(9))
    assert (a.edit, a.scenes, a.prompt) == (b.edit, b.scenes, b.prompt)
    assert same_image(a.query, b.query) and same_image(a.answer, b.answer)


@pytest.mark.parametrize("op", EDIT_OPS)
def test_in_context_pairs_share_one_transformation_and_the_answer_applies_it(op):
    colourless = 0
    for seed in range(12):
        ic = make_in_context(rng(seed), size=40, op=op)
        assert ic.edit.op == op
        befores = [b for b, _ in ic.scenes]
        assert len(ic.scenes) == 3 and len(set(b.objects for b in befores)) == 3
        for before, after in ic.scenes:
            assert edit_holds(before, after, ic.edit)
            assert 1 <= len(before.objects) and 1 <= len(after.objects)
            if op != "add":
                assert sum(ic.edit.target.matches(o.shape, o.colour) for o in before.objects) == 1
        (b1, a1), (b2, a2) = ic.examples
        pairs = [(b1, a1), (b2, a2), (ic.query, ic.answer)]
        for (bi, ai), (bs, as_) in zip(pairs, ic.scenes, strict=True):
            assert same_image(bi, render(bs, 40)) and same_image(ai, render(as_, 40))
        query, answer = ic.scenes[2]
        if op != "move" and op != "add":  # deterministic ops: applying again gives the same answer
            assert apply_edit(query, ic.edit, rng()) == answer
        assert ic.parts[0] == ic.prompt and ic.parts[-1] is ic.query and len(ic.parts) == 6
        colourless += ic.edit.target.colour is None
    if op != "add":
        assert colourless >= 1  # "make the circle blue", whatever its colour


# --- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_no_held_out_combination_outside_the_held_out_split(split):
    for seed in range(40):
        seq = make_interleaved(rng(seed), split=split)
        ic = make_in_context(rng(seed), split=split)
        scenes = list(seq.scenes) + [s for pair in ic.scenes for s in pair]
        assert not any(HELDOUT.in_scene(s, margin=0.0) for s in scenes)


def test_held_out_samples_hold_a_held_out_combination():
    for seed in range(15):
        seq = make_interleaved(rng(seed), split="heldout")
        assert any(HELDOUT.in_scene(s) for s in seq.scenes)
        assert HELDOUT.in_scene(make_in_context(rng(seed), split="heldout").scenes[2][1])


# --- bad input --------------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown interleaved kind 'film'"):
        make_interleaved(rng(), kind="film")
    with pytest.raises(ValueError, match="unknown edit op 'explode'"):
        make_in_context(rng(), op="explode")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_interleaved(rng(), split="dev")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_in_context(rng(), split="dev")
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        make_in_context(0)
    with pytest.raises(ValueError, match="size = 300"):
        make_interleaved(rng(), size=300)
    with pytest.raises(ValueError, match="cannot parse narration 'and then nothing happened'"):
        parse_narration("and then nothing happened")
