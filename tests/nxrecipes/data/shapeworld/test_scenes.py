"""Scenes: deterministic from the generator, every spec satisfied by its scene, constraints kept,
bad arguments refused with a message that says the fix."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import (
    COUNT_RANGE,
    PLACE_MARGIN,
    Combos,
    Constraints,
    random_scene,
    random_spec,
    satisfies,
    scene_for_spec,
)
from nxrecipes.data.shapeworld.spec import CATEGORIES, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import (
    BACKGROUND,
    MAX_OBJECTS,
    RELATIONS,
    Scene,
    ShapeObject,
    relation_holds,
)

seeds = st.integers(0, 2**32 - 1)


def rng(seed):
    return np.random.default_rng(seed)


@given(seeds)
def test_same_seed_same_scene_and_image_bytes(seed):
    a = random_scene(rng(seed), vary_background=True)
    b = random_scene(rng(seed), vary_background=True)
    assert a == b
    assert render(a, 48).tobytes() == render(b, 48).tobytes()
    spec = random_spec(rng(seed))
    assert spec == random_spec(rng(seed))
    assert scene_for_spec(spec, rng(seed)) == scene_for_spec(spec, rng(seed))


def test_different_seeds_give_different_scenes():
    scenes = {random_scene(rng(seed)) for seed in range(50)}
    assert len(scenes) == 50


@given(seeds, st.integers(1, MAX_OBJECTS))
def test_random_scene_has_the_objects_asked_for(seed, n):
    scene = random_scene(rng(seed), num_objects=n)
    assert len(scene.objects) == n  # Scene's own validator has checked fit and overlap


def test_random_scene_draws_one_to_four_objects_of_both_sizes_anywhere():
    scenes = [random_scene(rng(seed)) for seed in range(200)]
    assert {len(s.objects) for s in scenes} == set(range(1, MAX_OBJECTS + 1))
    objects = [o for s in scenes for o in s.objects]
    assert {o.size for o in objects} == {"small", "large"}
    xs, ys = np.array([o.x for o in objects]), np.array([o.y for o in objects])
    assert xs.min() < 0.2 and xs.max() > 0.8 and ys.min() < 0.2 and ys.max() > 0.8


def test_background_varies_only_when_asked():
    plain = random_scene(rng(1))
    assert plain.background == BACKGROUND and plain.gradient == (0.0, 0.0)
    varied = [random_scene(rng(s), vary_background=True) for s in range(10)]
    assert len({s.background for s in varied}) > 1 and any(s.gradient != (0.0, 0.0) for s in varied)
    for s in varied:
        assert max(abs(a - b) for a, b in zip(s.background, BACKGROUND, strict=True)) <= 10
        assert max(map(abs, s.gradient)) <= 12


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_scene_satisfies_its_spec(category):
    for seed in range(40):
        r = rng(seed)
        spec = random_spec(r, category)
        assert spec.category == category
        scene = scene_for_spec(spec, r, vary_background=bool(seed % 2))
        assert satisfies(scene, spec)
        for q in spec.objects:  # the ground truth, counted directly
            n = scene.count(q.shape, q.colour)
            assert n == q.count if category == "counting" else n >= q.count
        if category == "counting":
            assert COUNT_RANGE[0] <= spec.objects[0].count <= COUNT_RANGE[1]
        if category == "position":
            a, b = (next(o for o in scene.objects if o.shape == q.shape) for q in spec.objects)
            assert relation_holds((a.x, a.y), (b.x, b.y), spec.relation, margin=PLACE_MARGIN)
        shapes = {q.shape for q in spec.objects}
        for o in scene.objects:  # distractors never share a shape with the prompt
            assert o.shape in shapes or all(not q.matches(o.shape, o.colour) for q in spec.objects)
        assert sum(o.shape in shapes for o in scene.objects) == sum(q.count for q in spec.objects)


def test_spec_categories_follow_geneval():
    specs = [random_spec(rng(s)) for s in range(300)]
    assert {s.category for s in specs} == set(CATEGORIES)
    for s in specs:
        coloured = [q.colour is not None for q in s.objects]
        expected = {"single_object": [False], "two_object": [False, False], "counting": [False],
                    "colors": [True], "color_attr": [True, True], "position": [False, False]}[s.category]
        assert coloured == expected
        if len(s.objects) == 2:
            assert s.objects[0].shape != s.objects[1].shape


def test_user_spec_with_colours_and_counts():
    spec = Spec("counting", [ObjectQuery("circle", "red", 3)])
    scene = scene_for_spec(spec, rng(0), max_distractors=0)
    assert scene.count("circle", "red") == 3 and len(scene.objects) == 3
    spec = Spec("position", [ObjectQuery("star", "green"), ObjectQuery("cross", "blue")], relation="below")
    assert satisfies(scene_for_spec(spec, rng(0)), spec)


def test_constraints_carry_the_distractor_limit():
    spec = Spec("single_object", [ObjectQuery("circle")])
    counts = {len(scene_for_spec(spec, rng(s), constraints=Constraints(max_distractors=1)).objects)
              for s in range(40)}
    assert counts == {1, 2}
    counts = {len(scene_for_spec(spec, rng(s), constraints=Constraints(max_distractors=0)).objects)
              for s in range(10)}
    assert counts == {1}
    # the argument overrides the constraints' limit
    assert len(scene_for_spec(spec, rng(0), constraints=Constraints(max_distractors=2), max_distractors=0).objects) == 1


def test_satisfies_reads_the_truth():
    left = ShapeObject("circle", "red", "small", 0.2, 0.5)
    right = ShapeObject("square", "blue", "small", 0.8, 0.5)
    scene = Scene([left, right])
    pos = Spec("position", [ObjectQuery("circle"), ObjectQuery("square")], relation="left of")
    assert satisfies(scene, pos)
    assert not satisfies(scene, Spec("position", pos.objects, relation="right of"))
    assert not satisfies(scene, Spec("counting", [ObjectQuery("circle", count=2)]))
    assert satisfies(scene, Spec("colors", [ObjectQuery("square", "blue")]))
    assert not satisfies(scene, Spec("colors", [ObjectQuery("square", "red")]))


def test_forbidden_combinations_never_appear():
    forbid = Combos(pairs=[("red", "circle")], relations=[("circle", "left of", "square")])
    c = Constraints(forbid=forbid)
    for seed in range(150):
        r = rng(seed)
        scene = random_scene(r, constraints=c)
        spec = random_spec(r, constraints=c)
        assert not forbid.in_spec(spec)
        for s in (scene, scene_for_spec(spec, r, constraints=c)):
            assert s.count("circle", "red") == 0
            for p in s.objects:
                for q in s.objects:
                    if p.shape == "circle" and q.shape == "square":
                        assert p.x >= q.x  # margin 0: not even slightly left
    with pytest.raises(ValueError, match=r"names a combination the constraints forbid.*random_spec"):
        scene_for_spec(Spec("colors", [ObjectQuery("circle", "red")]), rng(0), constraints=c)
    mirrored = Spec("position", [ObjectQuery("square"), ObjectQuery("circle")], relation="right of")
    with pytest.raises(ValueError, match="forbid"):
        scene_for_spec(mirrored, rng(0), constraints=c)


def test_required_combinations_always_appear():
    need = Combos(pairs=[("yellow", "star")], relations=[("triangle", "below", "cross")])
    c = Constraints(require=need)
    for seed in range(60):
        r = rng(seed)
        assert need.in_scene(random_scene(r, constraints=c))
        spec = random_spec(r, constraints=c)
        assert need.in_spec(spec) and spec.category in ("colors", "color_attr", "position")
        assert need.in_scene(scene_for_spec(spec, r, constraints=c))
        # a spec that names none gets one anyway: colouring its object, or a distractor
        for plain in (Spec("counting", [ObjectQuery("star", count=4)]),
                      Spec("single_object", [ObjectQuery("circle")])):
            assert satisfies(scene := scene_for_spec(plain, r, constraints=c), plain)
            assert need.in_scene(scene)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: random_scene(rng(0), size=16), ValueError,
         r"size = 16 px is too small for the objects: 4 object\(s\).*use size >= 32"),
        (lambda: scene_for_spec(Spec("counting", [ObjectQuery("circle", count=3)]), rng(0), size=20),
         ValueError, r"size = 20 px is too small for the objects: 3 object\(s\).*use size >= 32"),
        (lambda: random_scene(rng(0), size=512), ValueError, r"size = 512 px .* use size <= 256"),
        (lambda: random_scene(rng(0), size=64.0), TypeError, r"size must be an int number of pixels, got 64\.0"),
        (lambda: random_scene(rng(0), num_objects=5), ValueError, r"num_objects = 5 is out of range; .*1 to 4"),
        (lambda: random_scene(0), TypeError, r"rng must be a numpy\.random\.Generator.*default_rng"),
        (lambda: ObjectQuery("circle", count=5), ValueError, r"count = 5 is out of range"),
        (lambda: ObjectQuery("hexagon"), ValueError, r"unknown shape 'hexagon'"),
        (lambda: ObjectQuery("circle", "pink"), ValueError, r"unknown colour 'pink'"),
        (lambda: scene_for_spec(Spec("two_object", [ObjectQuery("circle", count=3), ObjectQuery("star", count=2)]),
                                rng(0)),
         ValueError, r"spec asks for 5 objects but a scene holds at most 4; lower the counts"),
        (lambda: random_spec(rng(0), "shapes"), ValueError, r"unknown category 'shapes'; choose one of"),
        (lambda: random_spec(rng(0), "counting", constraints=Constraints(require=Combos(pairs=[("red", "star")]))),
         ValueError, r"category 'counting' cannot name a required combination"),
        (lambda: Combos(pairs=[("red", "hexagon")]), ValueError, r"unknown shape 'hexagon'"),
        (lambda: Combos(relations=[("circle", "inside", "square")]), ValueError, r"unknown relation 'inside'"),
        (lambda: scene_for_spec("a circle", rng(0)), TypeError, r"spec must be a Spec, got str"),
        (lambda: random_scene(rng(0), constraints={"forbid": ()}), TypeError, r"constraints must be"),
        (lambda: scene_for_spec(Spec("single_object", [ObjectQuery("circle")]), rng(0), max_distractors=-1),
         ValueError, r"max_distractors = -1 must be an int >= 0"),
        (lambda: Constraints(max_distractors=True), ValueError, r"max_distractors = True must be an int >= 0"),
        (lambda: random_scene(rng(0), num_objects=1,
                              constraints=Constraints(require=Combos(relations=[("star", "above", "cross")]))),
         ValueError, r"num_objects = 1 cannot hold a required relation.*num_objects >= 2"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_impossible_constraints_fail_after_bounded_tries():
    every = Combos(relations=[("circle", r, "square") for r in RELATIONS])
    c = Constraints(forbid=every)  # only a circle and a square at one centre pass, and they overlap
    spec = Spec("two_object", [ObjectQuery("circle"), ObjectQuery("square")])
    with pytest.raises(ValueError, match=r"could not lay out .* tries; .*relax the constraints"):
        scene_for_spec(spec, rng(0), constraints=c)
