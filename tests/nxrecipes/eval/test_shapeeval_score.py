"""ShapeEval scores: the GenEval rule per category (positives and negatives), partial credit, the
report, edit scores and caption scores."""

import json
import math

import numpy as np
import pytest
import torch

from nxrecipes.data.shapeworld.captions import canonical_caption, prompt_for_spec
from nxrecipes.data.shapeworld.edits import apply_edit, make_edit, random_edit
from nxrecipes.data.shapeworld.render import render, to_float
from nxrecipes.data.shapeworld.scenes import random_scene, random_spec, satisfies, scene_for_spec
from nxrecipes.data.shapeworld.spec import CATEGORIES, EDIT_OPS, Detection, EditSpec, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import BACKGROUND, RELATION_MARGIN, Scene, ShapeObject
from nxrecipes.eval.shapeeval import (
    ShapeEvalReport,
    caption_score,
    detect,
    edit_score,
    evaluate,
    partial_credit,
    spec_satisfied,
)

BLANK = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)


def obj(shape, colour, x, y, size="small"):
    return ShapeObject(shape, colour, size, x, y)


def scored(scene: Scene, spec: Spec) -> tuple[bool, float]:
    """(satisfied, partial credit) of ``spec`` in the rendered ``scene``, as detected."""
    found = detect(render(scene, 64))
    return spec_satisfied(found, spec), partial_credit(found, spec)


# --- the GenEval rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_images_drawn_for_a_spec_satisfy_it(category):
    rng = np.random.default_rng(CATEGORIES.index(category))
    for _ in range(12):
        spec = random_spec(rng, category)
        scene = scene_for_spec(spec, rng, size=64, vary_background=True)
        assert scored(scene, spec) == (True, 1.0), (spec, scene)
        assert spec_satisfied(scene, spec)  # a Scene is scored by its truth


CIRCLE, SQUARE = ObjectQuery("circle"), ObjectQuery("square")
NEGATIVES = [
    # (spec, a scene that violates it, partial credit)
    (Spec("single_object", [CIRCLE]), Scene([obj("square", "red", 0.3, 0.3)]), 0.0),
    (Spec("two_object", [CIRCLE, SQUARE]), Scene([obj("circle", "red", 0.3, 0.3)]), 0.5),
    (Spec("counting", [ObjectQuery("star", count=3)]),
     Scene([obj("star", "blue", 0.2, 0.2), obj("star", "red", 0.7, 0.7)]), 0.0),
    (Spec("counting", [ObjectQuery("star", count=2)]),  # one too many: counting is exact
     Scene([obj("star", "blue", 0.2, 0.2), obj("star", "red", 0.7, 0.7), obj("star", "red", 0.2, 0.7)]), 0.0),
    (Spec("colors", [ObjectQuery("circle", "red")]), Scene([obj("circle", "blue", 0.5, 0.5)]), 0.0),
    (Spec("position", [CIRCLE, SQUARE], relation="left of"),
     Scene([obj("circle", "red", 0.75, 0.5), obj("square", "blue", 0.25, 0.5)]), 2 / 3),
    (Spec("position", [CIRCLE, SQUARE], relation="above"),  # side by side: neither above the other
     Scene([obj("circle", "red", 0.25, 0.5), obj("square", "blue", 0.75, 0.5)]), 2 / 3),
    (Spec("position", [CIRCLE, SQUARE], relation="below"), Scene([obj("circle", "red", 0.5, 0.8)]), 1 / 3),
    (Spec("color_attr", [ObjectQuery("circle", "red"), ObjectQuery("square", "blue")]),  # attributes swapped
     Scene([obj("circle", "blue", 0.25, 0.5), obj("square", "red", 0.75, 0.5)]), 0.0),
    (Spec("color_attr", [ObjectQuery("circle", "red"), ObjectQuery("square", "blue")]),
     Scene([obj("circle", "red", 0.25, 0.5), obj("square", "green", 0.75, 0.5)]), 0.5),
]


@pytest.mark.parametrize(("spec", "scene", "credit"), NEGATIVES, ids=[n[0].category for n in NEGATIVES])
def test_images_that_violate_a_spec_score_zero(spec, scene, credit):
    assert not satisfies(scene, spec)
    satisfied, partial = scored(scene, spec)
    assert not satisfied
    assert partial == pytest.approx(credit)
    assert not spec_satisfied(scene, spec)
    assert scored(Scene([]), spec) == (False, 0.0)


def test_counting_is_exact_and_other_categories_at_least():
    three = Scene([obj("star", "blue", 0.2, 0.2), obj("star", "red", 0.7, 0.7), obj("star", "red", 0.2, 0.7)])
    assert scored(three, Spec("counting", [ObjectQuery("star", count=3)])) == (True, 1.0)
    assert scored(three, Spec("single_object", [ObjectQuery("star")])) == (True, 1.0)
    assert scored(three, Spec("colors", [ObjectQuery("star", "red")])) == (True, 1.0)
    assert scored(three, Spec("counting", [ObjectQuery("star", "red", count=2)])) == (True, 1.0)


def test_relations_need_a_clear_margin_and_two_distinct_objects():
    a = Detection("circle", "red", 0.5, 0.5, 0.01)
    b = Detection("square", "blue", 0.5 + RELATION_MARGIN * 0.9, 0.5, 0.01)
    c = Detection("square", "blue", 0.5 + RELATION_MARGIN * 1.5, 0.5, 0.01)
    spec = Spec("position", [CIRCLE, SQUARE], relation="left of")
    assert not spec_satisfied([a, b], spec)
    assert spec_satisfied([a, b, c], spec)
    circles = Spec("position", [CIRCLE, CIRCLE], relation="left of")
    assert not spec_satisfied([a], circles)  # an object is not left of itself
    assert spec_satisfied([a, Detection("circle", "red", 0.9, 0.5, 0.01)], circles)


def test_scores_agree_with_the_truth_on_random_scenes_and_specs():
    rng = np.random.default_rng(3)
    agree = checked = positives = 0
    for _ in range(150):
        scene, spec = random_scene(rng, size=64), random_spec(rng)
        if satisfies(scene, spec, margin=RELATION_MARGIN - 0.02) != satisfies(scene, spec, margin=RELATION_MARGIN + 0.02):
            continue  # a relation on the margin: a detector's 1% position error may flip it
        truth = satisfies(scene, spec)
        checked, positives = checked + 1, positives + truth
        agree += scored(scene, spec)[0] == truth
    assert checked >= 140 and positives >= 5
    assert agree == checked


def test_bad_arguments_are_named():
    spec = Spec("single_object", [CIRCLE])
    with pytest.raises(TypeError, match="spec must be a Spec"):
        spec_satisfied([], "a circle")
    with pytest.raises(TypeError, match=r"detections must be a sequence of Detection \(from detect\(image\)\)"):
        spec_satisfied(3, spec)
    with pytest.raises(TypeError, match=r"detections\[0\] must be a Detection, got ndarray"):
        spec_satisfied(BLANK, spec)  # an image is not its detections
    with pytest.raises(TypeError, match=r"detections\[1\] must be a Detection, got str"):
        partial_credit([Detection("circle", "red", 0.5, 0.5, 0.1), "square"], spec)


# --- evaluate and the report --------------------------------------------------------------------


def _dataset(n, seed=0):
    rng = np.random.default_rng(seed)
    specs, images, prompts = [], [], []
    for i in range(n):
        spec = random_spec(rng, CATEGORIES[i % len(CATEGORIES)])
        specs.append(spec)
        images.append(render(scene_for_spec(spec, rng, size=64), 64))
        prompts.append(prompt_for_spec(spec, rng))
    return specs, images, prompts


def test_evaluate_ground_truth_scores_one_and_blank_images_zero():
    specs, images, prompts = _dataset(18)
    report = evaluate(images, prompts)
    assert report.overall == 1.0
    assert report.accuracy == dict.fromkeys(CATEGORIES, 1.0)
    assert [s.prompt for s in report.samples] == prompts
    assert [s.spec for s in report.samples] == specs
    blank = evaluate([BLANK] * len(specs), specs)
    assert blank.overall == 0.0 and all(s.score == 0.0 for s in blank.samples)
    batch = torch.stack([to_float(im) for im in images])
    assert evaluate(batch, specs).overall == 1.0


def test_overall_is_the_mean_of_the_category_accuracies():
    good = Scene([obj("circle", "red", 0.3, 0.3)])
    specs = [Spec("single_object", [CIRCLE])] * 3 + [Spec("colors", [ObjectQuery("circle", "red")]),
                                                     Spec("colors", [ObjectQuery("circle", "blue")])]
    images = [render(good, 64), render(good, 64), BLANK, render(good, 64), render(good, 64)]
    report = evaluate(images, specs)
    assert report.categories == {"single_object": (2, 3), "colors": (1, 2)}
    assert report.overall == pytest.approx((2 / 3 + 1 / 2) / 2)  # not 3/5: categories weigh equally


def test_partial_credit_and_object_counts_per_category():
    two = Scene([obj("circle", "red", 0.3, 0.3), obj("square", "blue", 0.7, 0.7)])
    one = Scene([obj("circle", "red", 0.3, 0.3)])
    both = Spec("two_object", [CIRCLE, ObjectQuery("square")])
    specs = [both, both, Spec("counting", [ObjectQuery("circle", count=3)]), Spec("single_object", [CIRCLE])]
    report = evaluate([render(two, 64), render(one, 64), render(one, 64), BLANK], specs)
    assert report.partial == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert report.drawn == {
        "single_object": {"asked": 1, "drawn": 0, "empty": 1},
        "two_object": {"asked": 2, "drawn": 1.5, "empty": 0},
        "counting": {"asked": 3, "drawn": 1, "empty": 0},
    }
    summary = report.summary()
    assert summary == {"overall": report.overall, "partial": report.partial, "categories": report.accuracy,
                       "drawn": report.drawn}
    assert math.isnan(ShapeEvalReport([]).partial) and ShapeEvalReport([]).drawn == {}


def test_report_prints_a_table_and_serialises_to_json():
    specs, images, prompts = _dataset(6)
    report = evaluate(images[:5] + [BLANK], prompts, progress=True)
    table = report.format_table()
    print("\n" + table)
    lines = table.splitlines()
    assert lines[0].split() == ["category", "n", "accuracy"]
    assert [line.split()[0] for line in lines if not line.startswith("-")][1:] == [*CATEGORIES, "overall"]
    assert "color_attr" in table and "0.000" in table and "overall" in lines[-1]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["overall"] == pytest.approx(5 / 6)
    assert data["categories"]["color_attr"] == {"accuracy": 0.0, "satisfied": 0, "samples": 1}
    assert data["partial"] == pytest.approx(report.partial) and data["drawn"]["color_attr"]["empty"] == 1.0
    assert len(data["samples"]) == 6
    first = data["samples"][0]
    assert first["prompt"] == prompts[0] and first["satisfied"] and first["spec"]["category"] == specs[0].category
    assert {"shape", "colour", "x", "y", "area"} <= set(first["detections"][0])
    empty = ShapeEvalReport([])
    assert math.isnan(empty.overall) and empty.to_dict()["overall"] is None and empty.to_dict()["partial"] is None


def test_evaluate_rejects_bad_arguments():
    specs, images, _ = _dataset(2)
    with pytest.raises(ValueError, match="got 2 images and 1 specs; pass one spec per image"):
        evaluate(images, specs[:1])
    with pytest.raises(ValueError, match=r"specs\[1\] = 'a tasty sandwich' is not a ShapeWorld prompt"):
        evaluate(images, ["a red circle", "a tasty sandwich"])
    with pytest.raises(TypeError, match=r"specs\[0\] must be a Spec, a prompt string or a PromptSpec"):
        evaluate(images[:1], [3])
    with pytest.raises(TypeError, match="images must be a sequence of images"):
        evaluate(images[0], specs[:1])
    with pytest.raises(ValueError, match=r"\[batch, 3, H, W\]"):
        evaluate(torch.rand(3, 8, 8), specs[:1])


# --- edits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", EDIT_OPS)
def test_edit_done_scores_ok_and_undone_edits_do_not(op):
    rng = np.random.default_rng(EDIT_OPS.index(op))
    done = 0
    while done < 8:
        source = random_scene(rng, size=64, num_objects=int(rng.integers(2, 4)))
        try:
            edit = random_edit(source, rng, op=op)
        except ValueError:
            continue
        target = apply_edit(source, edit, rng)
        before, after = render(source, 64), render(target, 64)
        result = edit_score(before, after, edit)
        assert (result.target_ok, result.preserved_ok, result.ok, result.reason) == (True, True, True, "ok")
        unchanged = edit_score(before, before, edit)
        assert not unchanged.target_ok and not unchanged.ok, unchanged
        done += 1


def test_edits_made_by_the_generator_score_ok():
    rng = np.random.default_rng(11)
    for _ in range(20):
        sample = make_edit(rng, 64)
        assert edit_score(sample.source_image, sample.target_image, sample.edit).ok, sample.edit


RED_CIRCLE = obj("circle", "red", 0.2, 0.2, "large")
BLUE_SQUARE = obj("square", "blue", 0.8, 0.8)
GREEN_STAR = obj("star", "green", 0.8, 0.2)
SOURCE = Scene([RED_CIRCLE, BLUE_SQUARE, GREEN_STAR])
RECOLOUR = EditSpec("recolour", ObjectQuery("circle", "red"), colour="yellow")
YELLOW_CIRCLE = obj("circle", "yellow", 0.2, 0.2, "large")
RED_CIRCLE_DOWN = obj("circle", "red", 0.2, 0.75, "large")


@pytest.mark.parametrize(
    ("edit", "edited", "target_ok", "preserved_ok", "reason"),
    [
        (RECOLOUR, [obj("circle", "purple", 0.2, 0.2, "large"), BLUE_SQUARE, GREEN_STAR],
         False, True, "no yellow circle at the target's place"),
        (RECOLOUR, [YELLOW_CIRCLE, BLUE_SQUARE], True, False, "green star missing"),
        (RECOLOUR, [YELLOW_CIRCLE, BLUE_SQUARE, GREEN_STAR, obj("cross", "red", 0.25, 0.8)],
         True, False, "red cross appeared"),
        (RECOLOUR, [YELLOW_CIRCLE, obj("square", "blue", 0.55, 0.8), GREEN_STAR],
         True, False, "blue square missing; blue square appeared"),  # an untouched object moved
        (EditSpec("move", ObjectQuery("circle", "red"), direction="down"),
         [RED_CIRCLE_DOWN, obj("square", "blue", 0.8, 0.55), GREEN_STAR],
         True, False, "blue square missing; blue square appeared"),
        (EditSpec("move", ObjectQuery("circle", "red"), direction="down"), [RED_CIRCLE_DOWN, BLUE_SQUARE, GREEN_STAR],
         True, True, "ok"),
        (EditSpec("move", ObjectQuery("circle", "red"), direction="up"), [RED_CIRCLE_DOWN, BLUE_SQUARE, GREEN_STAR],
         False, True, "did not move up"),
        (EditSpec("move", ObjectQuery("circle", "red"), direction="right"),
         [obj("circle", "red", 0.25, 0.2, "large"), BLUE_SQUARE, GREEN_STAR],
         False, True, "did not move right"),  # a nudge, not a clear move
        (EditSpec("add", ObjectQuery("cross", "red"), direction="down"),
         [RED_CIRCLE, BLUE_SQUARE, GREEN_STAR, obj("cross", "red", 0.52, 0.2)],
         False, True, "no new red cross on the down side"),
        (EditSpec("add", ObjectQuery("cross", "red"), direction="down"),
         [RED_CIRCLE, BLUE_SQUARE, GREEN_STAR, obj("cross", "red", 0.25, 0.8)], True, True, "ok"),
        (EditSpec("add", ObjectQuery("cross", "red")),
         [RED_CIRCLE, obj("circle", "blue", 0.8, 0.8), GREEN_STAR, obj("cross", "red", 0.25, 0.8)],
         True, False, "blue square missing; blue circle appeared"),
        (EditSpec("remove", ObjectQuery("star", "green")), [RED_CIRCLE, BLUE_SQUARE, obj("star", "green", 0.8, 0.25)],
         False, True, "the green star is still there"),
        (EditSpec("remove", ObjectQuery("star")), [RED_CIRCLE, BLUE_SQUARE], True, True, "ok"),
        (EditSpec("replace", ObjectQuery("circle", "red"), shape="triangle"),
         [obj("triangle", "blue", 0.2, 0.2, "large"), BLUE_SQUARE, GREEN_STAR],
         False, True, "no red triangle at the target's place"),
        (EditSpec("replace", ObjectQuery("circle", "red"), shape="triangle", colour="blue"),
         [obj("triangle", "blue", 0.2, 0.2, "large"), BLUE_SQUARE, GREEN_STAR], True, True, "ok"),
        (EditSpec("remove", ObjectQuery("cross")), [RED_CIRCLE, BLUE_SQUARE],
         False, False, "no cross in the source image"),
    ],
)
def test_edit_failures_are_caught_and_explained(edit, edited, target_ok, preserved_ok, reason):
    result = edit_score(render(SOURCE, 64), render(Scene(edited), 64), edit)
    assert (result.target_ok, result.preserved_ok) == (target_ok, preserved_ok), result
    assert result.ok == (target_ok and preserved_ok)
    assert reason in result.reason


def test_edit_score_takes_scenes_for_their_truth_and_checks_arguments():
    edited = Scene([YELLOW_CIRCLE, BLUE_SQUARE, GREEN_STAR])
    assert edit_score(SOURCE, edited, RECOLOUR).ok
    assert edit_score(render(SOURCE, 64), render(edited, 128), RECOLOUR).ok  # sizes may differ
    with pytest.raises(TypeError, match="edit must be an EditSpec"):
        edit_score(SOURCE, edited, "make the circle yellow")
    with pytest.raises(ValueError, match=r"edited_image: .*NaN"):
        edit_score(SOURCE, np.full((8, 8, 3), np.nan), RECOLOUR)
    with pytest.raises(ValueError, match="a recolour edit needs colour"):
        edit_score(SOURCE, edited, EditSpec("recolour", ObjectQuery("circle")))


# --- captions -----------------------------------------------------------------------------------


def test_canonical_captions_of_rendered_scenes_score_exact():
    rng = np.random.default_rng(5)
    for _ in range(15):
        scene = random_scene(rng, size=64, vary_background=True)
        result = caption_score(canonical_caption(scene), render(scene, 64))
        assert (result.exact, result.f1, result.precision, result.recall) == (True, 1.0, 1.0, 1.0)
    assert caption_score(canonical_caption(Scene([])), BLANK).exact


def test_wrong_captions_score_below_one():
    scene = Scene([obj("circle", "red", 0.25, 0.3), obj("circle", "red", 0.75, 0.3), BLUE_SQUARE])
    image = render(scene, 64)
    missing = caption_score("two red circles", image)  # 2 of 3 objects, all true
    assert (missing.exact, missing.precision, missing.recall, missing.f1) == (False, 1.0, 2 / 3, pytest.approx(0.8))
    wrong = caption_score("a green circle and a blue square", image)
    assert not wrong.exact and wrong.precision == 0.5 and wrong.recall == pytest.approx(1 / 3)
    assert wrong.caption == {("green", "circle"): 1, ("blue", "square"): 1}
    assert wrong.image == {("red", "circle"): 2, ("blue", "square"): 1}
    assert caption_score("nothing", image).f1 == 0.0
    assert caption_score("a red circle", BLANK).f1 == 0.0
    assert caption_score("two red circles and a blue square", scene).exact  # a Scene gives its truth
    with pytest.raises(ValueError, match="unknown word 'sandwich'"):
        caption_score("a red sandwich", image)
    with pytest.raises(TypeError, match="caption must be a str"):
        caption_score(None, image)
