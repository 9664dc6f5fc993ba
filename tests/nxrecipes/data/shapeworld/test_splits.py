"""Splits: disjoint seed streams, held-out combinations absent from train/validation/test and present
in every held-out sample."""

import numpy as np
import pytest

from nxrecipes.data.shapeworld.captions import parse_prompt
from nxrecipes.data.shapeworld.scenes import Combos
from nxrecipes.data.shapeworld.splits import (
    HELDOUT,
    HELDOUT_PAIRS,
    HELDOUT_RELATIONS,
    SPLITS,
    split_constraints,
    split_rng,
)
from nxrecipes.data.shapeworld.tasks import TASK_MAKERS, TextOnly, make_sample
from nxrecipes.data.shapeworld.world import COLOURS, RELATIONS, SHAPES, relation_holds

OWN_TASKS = ("t2i", "captioning", "world_knowledge", "text_only")


def samples(split, n, tasks=OWN_TASKS):
    return [make_sample(tasks[i % len(tasks)], split_rng(split, i, seed=3), 48, split) for i in range(n)]


def held_out_relation_anywhere(scene):
    """Any held-out triple, or its mirror, by any amount (margin 0)."""
    for a, rel, b in HELDOUT_RELATIONS:
        for p in scene.objects:
            for q in scene.objects:
                if p.shape == a and q.shape == b and relation_holds((p.x, p.y), (q.x, q.y), rel, margin=0.0):
                    return True
    return False


def test_heldout_lists_are_valid_and_small():
    assert len(HELDOUT_PAIRS) == 3 and len(HELDOUT_RELATIONS) == 2
    for colour, shape in HELDOUT_PAIRS:
        assert colour in COLOURS and shape in SHAPES
    for a, rel, b in HELDOUT_RELATIONS:
        assert a in SHAPES and b in SHAPES and rel in RELATIONS


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_no_heldout_combination_outside_the_heldout_split(split):
    for record in samples(split, 240):
        scene = getattr(record, "scene", None)
        if scene is not None:
            assert not any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects)
            assert not held_out_relation_anywhere(scene)
        spec = getattr(record, "spec", None)
        if spec is not None:
            assert not HELDOUT.in_spec(spec)
        for text in (getattr(record, f, "") for f in ("prompt", "resolved_prompt", "caption", "text")):
            lowered = text.lower()
            assert not any(f"{c} {s}" in lowered for c, s in HELDOUT_PAIRS), text
        if hasattr(record, "resolved_prompt"):
            assert not HELDOUT.in_spec(parse_prompt(record.resolved_prompt))


def test_every_heldout_sample_holds_a_heldout_combination():
    kinds = set()
    for record in samples("heldout", 120):
        assert record.scene is not None and HELDOUT.in_scene(record.scene)
        if hasattr(record, "spec"):
            assert HELDOUT.in_spec(record.spec)
        if isinstance(record, TextOnly):
            lowered = record.text.lower()
            assert any(f"{c} {s}" in lowered for c, s in HELDOUT_PAIRS) or any(
                a in lowered and b in lowered for a, _, b in HELDOUT_RELATIONS
            ), record.text
        kinds |= {"pair" for o in record.scene.objects if (o.colour, o.shape) in HELDOUT_PAIRS}
        kinds |= {"relation"} if Combos(relations=HELDOUT_RELATIONS).in_scene(record.scene) else set()
    assert kinds == {"pair", "relation"}


def test_split_streams_differ_and_repeat():
    draws = {s: [tuple(split_rng(s, i, 0).integers(0, 2**62, size=2)) for i in range(200)] for s in SPLITS}
    every = [d for s in SPLITS for d in draws[s]]
    assert len(set(every)) == len(every)
    assert draws["train"] == [tuple(split_rng("train", i, 0).integers(0, 2**62, size=2)) for i in range(200)]
    assert split_rng("train", 0, 1).integers(2**62) != split_rng("train", 0, 0).integers(2**62)
    prompts = {s: [r.prompt for r in samples(s, 30, ("t2i",))] for s in ("train", "validation", "test")}
    assert prompts["train"] != prompts["validation"] != prompts["test"] != prompts["train"]


def test_constraints_per_split():
    assert split_constraints("train").forbid == HELDOUT and not split_constraints("train").require
    assert split_constraints("heldout").require == HELDOUT and not split_constraints("heldout").forbid


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: split_rng("dev", 0), r"unknown split 'dev'; choose one of \['train', 'validation', 'test', 'heldout'\]"),
        (lambda: split_constraints("val"), r"unknown split 'val'"),
        (lambda: split_rng("train", -1), r"index = -1 must be an int >= 0"),
        (lambda: split_rng("train", 0, seed=1.5), r"seed = 1\.5 must be an int >= 0"),
        (lambda: make_sample("t2i", np.random.default_rng(0), 64, "dev"), r"unknown split 'dev'"),
    ],
)
def test_bad_split_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_task_makers_cover_the_own_tasks():
    assert set(OWN_TASKS) <= set(TASK_MAKERS)
