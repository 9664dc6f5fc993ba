"""Editing pairs: valid random edits, exact application, instructions that parse back, the split rule."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxrecipes.data.shapeworld.edits import (
    INSTRUCTIONS,
    MOVE_MIN,
    apply_edit,
    check_edit,
    edit_holds,
    instruction,
    make_edit,
    parse_instruction,
    random_edit,
    region_holds,
)
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import Combos, Constraints, random_scene
from nxrecipes.data.shapeworld.spec import DIRECTIONS, EDIT_OPS, EditSpec, ObjectQuery
from nxrecipes.data.shapeworld.splits import HELDOUT, HELDOUT_PAIRS, split_constraints
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES, SIZES, Scene, ShapeObject

RED_CIRCLE = ShapeObject("circle", "red", "large", 0.25, 0.25)
BLUE_SQUARE = ShapeObject("square", "blue", "small", 0.75, 0.75)
SCENE = Scene([RED_CIRCLE, BLUE_SQUARE])


def rng(seed=0):
    return np.random.default_rng(seed)


def q(shape, colour=None):
    return ObjectQuery(shape, colour)


# --- determinism ------------------------------------------------------------------------------


def test_make_edit_is_deterministic_from_the_generator():
    a, b = make_edit(rng(7)), make_edit(rng(7))
    assert (a.instruction, a.edit, a.source_scene, a.target_scene) == (
        b.instruction, b.edit, b.source_scene, b.target_scene)
    assert np.array_equal(np.asarray(a.source_image), np.asarray(b.source_image))
    assert np.array_equal(np.asarray(a.target_image), np.asarray(b.target_image))
    assert make_edit(rng(8)).source_scene != a.source_scene


def test_images_are_renders_of_the_scenes():
    s = make_edit(rng(3), size=48)
    assert s.source_image.size == (48, 48)
    assert np.array_equal(np.asarray(s.source_image), np.asarray(render(s.source_scene, 48)))
    assert np.array_equal(np.asarray(s.target_image), np.asarray(render(s.target_scene, 48)))


# --- each op does what it says ----------------------------------------------------------------


def _untouched(source, target, skip_source, skip_target=()):
    keep_s = [o for i, o in enumerate(source.objects) if i not in skip_source]
    keep_t = [o for i, o in enumerate(target.objects) if i not in skip_target]
    return keep_s == keep_t


@pytest.mark.parametrize("op", EDIT_OPS)
def test_every_op_changes_the_target_as_said_and_nothing_else(op):
    seen = 0
    for seed in range(25):
        r = rng(seed)
        source = random_scene(r, num_objects=int(r.integers(2, 4)))
        try:
            edit = random_edit(source, r, op=op)
        except ValueError:
            continue
        seen += 1
        target = apply_edit(source, edit, r)
        assert target.background == source.background and target.gradient == source.gradient
        assert edit_holds(source, target, edit)
        assert not edit_holds(source, source, edit)
        if op == "add":
            new = target.objects[-1]
            assert list(target.objects[:-1]) == list(source.objects)
            assert (new.colour, new.shape) == (edit.target.colour, edit.target.shape)
            assert edit.direction is None or region_holds(new.x, new.y, edit.direction)
            continue
        hits = [k for k, o in enumerate(source.objects) if edit.target.matches(o.shape, o.colour)]
        assert len(hits) == 1
        i = hits[0]
        old = source.objects[i]
        if op == "remove":
            assert list(target.objects) == [o for k, o in enumerate(source.objects) if k != i]
            continue
        new = target.objects[i]
        assert _untouched(source, target, {i}, {i})
        if op == "recolour":
            assert new.colour == edit.colour != old.colour
            assert (new.shape, new.size, new.x, new.y) == (old.shape, old.size, old.x, old.y)
        elif op == "replace":
            assert new.shape == edit.shape != old.shape
            assert new.colour == (edit.colour or old.colour)
            assert (new.size, new.x, new.y) == (old.size, old.x, old.y)
        else:
            dx, dy = new.x - old.x, new.y - old.y
            along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[
                edit.direction]
            assert along >= MOVE_MIN - 1e-9 and across == 0
            assert (new.shape, new.colour, new.size) == (old.shape, old.colour, old.size)
    assert seen >= 10


def test_hand_made_edits():
    r = rng()
    blue = apply_edit(SCENE, parse_instruction("make the red circle blue"), r)
    assert blue.objects == (ShapeObject("circle", "blue", "large", 0.25, 0.25), BLUE_SQUARE)
    gone = apply_edit(SCENE, parse_instruction("remove the blue square"), r)
    assert gone.objects == (RED_CIRCLE,)
    swapped = apply_edit(SCENE, parse_instruction("replace the red circle with a purple cross"), r)
    assert swapped.objects == (ShapeObject("cross", "purple", "large", 0.25, 0.25), BLUE_SQUARE)
    kept = apply_edit(SCENE, parse_instruction("turn the red circle into a star"), r)
    assert kept.objects[0] == ShapeObject("star", "red", "large", 0.25, 0.25)
    moved = apply_edit(SCENE, parse_instruction("move the blue square to the left"), r)
    assert moved.objects[0] == RED_CIRCLE and moved.objects[1].y == 0.75 and moved.objects[1].x <= 0.55
    added = apply_edit(SCENE, parse_instruction("add a small green star on the right"), r, size="small")
    star = added.objects[2]
    assert added.objects[:2] == SCENE.objects and (star.shape, star.colour, star.size) == ("star", "green", "small")
    assert star.x >= 0.6


def test_a_colourless_target_matches_the_only_object_of_that_shape():
    out = apply_edit(SCENE, EditSpec("recolour", q("circle"), colour="green"), rng())
    assert out.objects[0].colour == "green"


def test_edit_holds_rejects_a_disturbed_bystander():
    edit = EditSpec("recolour", q("circle", "red"), colour="green")
    target = apply_edit(SCENE, edit, rng())
    nudged = Scene([target.objects[0], ShapeObject("square", "blue", "small", 0.74, 0.75)])
    assert edit_holds(SCENE, target, edit) and not edit_holds(SCENE, nudged, edit)


def test_random_edit_is_deterministic_and_covers_every_op():
    ops = {random_edit(SCENE, rng(s)).op for s in range(60)}
    assert ops == set(EDIT_OPS)
    assert random_edit(SCENE, rng(5)) == random_edit(SCENE, rng(5))


# --- phrasing ---------------------------------------------------------------------------------

colours = st.sampled_from(sorted(COLOURS))
shapes = st.sampled_from(SHAPES)


@st.composite
def edit_specs(draw):
    op = draw(st.sampled_from(EDIT_OPS))
    target = ObjectQuery(draw(shapes), draw(colours) if op == "add" else draw(st.none() | colours))
    if op == "recolour":
        return EditSpec(op, target, colour=draw(colours))
    if op == "replace":
        return EditSpec(op, target, shape=draw(shapes), colour=draw(st.none() | colours))
    if op == "move":
        return EditSpec(op, target, direction=draw(st.sampled_from(DIRECTIONS)))
    if op == "add":
        return EditSpec(op, target, direction=draw(st.none() | st.sampled_from(DIRECTIONS)))
    return EditSpec(op, target)


@given(edit_specs(), st.none() | st.sampled_from(sorted(SIZES)), st.integers(0, 2**32 - 1))
def test_every_phrasing_parses_back_to_its_edit(edit, size, seed):
    phrasings = INSTRUCTIONS.phrasings(edit, size=size)
    assert len(phrasings) >= 4 and len(set(phrasings)) == len(phrasings)
    for text in phrasings:
        assert parse_instruction(text) == edit, text
    said = instruction(edit, rng(seed), size=size)
    assert said in phrasings
    assert parse_instruction("  " + said[0].upper() + said[1:] + ".") == edit


@pytest.mark.parametrize("text, edit", [
    ("make the red circle blue", EditSpec("recolour", q("circle", "red"), colour="blue")),
    ("change the colour of the red circle to blue", EditSpec("recolour", q("circle", "red"), colour="blue")),
    ("add a small green star", EditSpec("add", q("star", "green"))),
    ("add an orange cross at the top", EditSpec("add", q("cross", "orange"), direction="up")),
    ("remove the yellow square", EditSpec("remove", q("square", "yellow"))),
    ("move the blue triangle to the left", EditSpec("move", q("triangle", "blue"), direction="left")),
    ("replace the red circle with a purple cross",
     EditSpec("replace", q("circle", "red"), colour="purple", shape="cross")),
    ("Turn the circle into a star!", EditSpec("replace", q("circle"), shape="star")),
])
def test_the_documented_phrasings(text, edit):
    assert parse_instruction(text) == edit


def test_instructions_vary_for_one_edit():
    edit = EditSpec("move", q("triangle", "blue"), direction="up")
    assert len({instruction(edit, rng(s)) for s in range(40)}) >= 5


def test_make_edit_instruction_names_its_edit_and_the_added_size():
    for seed in range(40):
        s = make_edit(rng(seed))
        assert parse_instruction(s.instruction) == s.edit
        assert edit_holds(s.source_scene, s.target_scene, s.edit)
        named = [w for w in SIZES if f" {w} " in f" {s.instruction} "]
        if s.edit.op == "add" and named:
            assert named == [s.target_scene.objects[-1].size]


# --- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_no_held_out_pair_or_relation_outside_the_held_out_split(split):
    for seed in range(60):
        s = make_edit(rng(seed), split=split)
        for scene in (s.source_scene, s.target_scene):
            assert not HELDOUT.in_scene(scene, margin=0.0)


def test_held_out_targets_hold_a_held_out_combination():
    for seed in range(20):
        assert HELDOUT.in_scene(make_edit(rng(seed), split="heldout").target_scene)


def test_constraints_steer_every_op_away_from_forbidden_results():
    forbid = split_constraints("train")
    circle = Scene([ShapeObject("circle", "red", "small", 0.2, 0.2)])
    for seed in range(30):
        edit = random_edit(circle, rng(seed), constraints=forbid)
        target = apply_edit(circle, edit, rng(seed), constraints=forbid)
        assert not forbid.forbid.in_scene(target, margin=0.0)
        assert not {(o.colour, o.shape) for o in target.objects} & set(HELDOUT_PAIRS)


def test_forbidden_relations_shape_where_things_go():
    no_square_left_of_triangle = Constraints(forbid=Combos(relations=[("square", "left of", "triangle")]))
    scene = Scene([ShapeObject("triangle", "green", "small", 0.5, 0.5)])
    add = EditSpec("add", q("square", "red"))
    for seed in range(20):
        out = apply_edit(scene, add, rng(seed), constraints=no_square_left_of_triangle)
        assert out.objects[1].x >= 0.5
    with pytest.raises(ValueError, match="no room to add"):
        apply_edit(scene, EditSpec("add", q("square", "red"), direction="left"), rng(),
                   constraints=no_square_left_of_triangle)


# --- bad input --------------------------------------------------------------------------------


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown edit op 'explode'"):
        random_edit(SCENE, rng(), op="explode")


def test_target_missing_or_ambiguous():
    with pytest.raises(ValueError, match="'green star' is not in the scene"):
        apply_edit(SCENE, EditSpec("remove", q("star", "green")), rng())
    two = Scene([RED_CIRCLE, ShapeObject("circle", "blue", "small", 0.75, 0.75)])
    with pytest.raises(ValueError, match="'circle' is ambiguous: 2 objects match"):
        apply_edit(two, EditSpec("remove", q("circle")), rng())


def test_no_room():
    full = Scene([ShapeObject("circle", c, "small", x, y)
                  for c, (x, y) in zip(["red", "blue", "green", "orange"],
                                       [(0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8)], strict=True)])
    with pytest.raises(ValueError, match="no room to add a yellow star: the scene already holds 4"):
        apply_edit(full, EditSpec("add", q("star", "yellow")), rng())
    with pytest.raises(ValueError, match="no room for an add edit"):
        random_edit(full, rng(), op="add")
    edge = Scene([ShapeObject("square", "red", "large", 0.17, 0.5)])
    with pytest.raises(ValueError, match="no room to move the red square left"):
        apply_edit(edge, EditSpec("move", q("square", "red"), direction="left"), rng())
    with pytest.raises(ValueError, match="no room for a remove edit"):
        random_edit(edge, rng(), op="remove")


def test_edits_that_change_nothing_or_miss_fields():
    with pytest.raises(ValueError, match="leaves the red circle as it is"):
        apply_edit(SCENE, EditSpec("recolour", q("circle", "red"), colour="red"), rng())
    with pytest.raises(ValueError, match="keeps the red circle's shape"):
        apply_edit(SCENE, EditSpec("replace", q("circle", "red"), shape="circle"), rng())
    with pytest.raises(ValueError, match="a recolour edit needs colour"):
        check_edit(EditSpec("recolour", q("circle", "red")))
    with pytest.raises(ValueError, match="a remove edit does not use direction"):
        instruction(EditSpec("remove", q("circle", "red"), direction="up"), rng())
    with pytest.raises(ValueError, match="an add edit needs target.colour"):
        apply_edit(SCENE, EditSpec("add", q("star")), rng())
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        apply_edit(SCENE, EditSpec("add", q("star", "red")), rng(), size="huge")


def test_bad_types_and_arguments():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        make_edit(42)
    with pytest.raises(TypeError, match="edit must be an EditSpec"):
        apply_edit(SCENE, "make it blue", rng())
    with pytest.raises(TypeError, match="scene must be a Scene"):
        random_edit([RED_CIRCLE], rng())
    with pytest.raises(TypeError, match="constraints must be a scenes.Constraints"):
        random_edit(SCENE, rng(), constraints="train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_edit(rng(), split="dev")
    with pytest.raises(ValueError, match="size = 16"):
        make_edit(rng(), size=16)


def test_unparseable_instruction():
    with pytest.raises(ValueError, match="cannot parse instruction 'dance the red circle'; write it like"):
        parse_instruction("dance the red circle")
    with pytest.raises(ValueError, match="cannot parse instruction"):
        parse_instruction("make the red circle teal")
    with pytest.raises(TypeError, match="text must be a str"):
        parse_instruction(None)
