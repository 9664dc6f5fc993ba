"""Task samples: each record agrees with its own ground truth; dispatch by task name."""

import numpy as np
import pytest

from nxrecipes.data.shapeworld.captions import canonical_caption, parse_caption, parse_prompt
from nxrecipes.data.shapeworld.knowledge import COLOUR_FACTS, FACTS, RIDDLE_KINDS, SHAPE_RIDDLES, riddle
from nxrecipes.data.shapeworld.render import render
from nxrecipes.data.shapeworld.scenes import satisfies
from nxrecipes.data.shapeworld.tasks import (
    TASK_MAKERS,
    Captioning,
    TextOnly,
    TextToImage,
    WorldKnowledge,
    make_sample,
    task_names,
    task_of,
)
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES


def rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("task", ["t2i", "captioning", "world_knowledge", "text_only"])
def test_same_seed_same_sample_and_image_bytes(task):
    for seed in range(5):
        a, b = make_sample(task, rng(seed), 40), make_sample(task, rng(seed), 40)
        assert a == b
        if hasattr(a, "image"):
            assert a.image.tobytes() == b.image.tobytes() and a.image.size == (40, 40)
    assert len({repr(make_sample(task, rng(s), 40)) for s in range(20)}) > 5


def test_text_to_image_agrees_with_its_truth():
    for seed in range(30):
        s = make_sample("t2i", rng(seed), 64)
        assert isinstance(s, TextToImage) and task_of(s) == "t2i"
        assert parse_prompt(s.prompt) == s.spec and satisfies(s.scene, s.spec)
        assert s.image.tobytes() == render(s.scene, 64).tobytes()


def test_captioning_caption_is_canonical():
    for seed in range(30):
        s = make_sample("captioning", rng(seed), 64)
        assert isinstance(s, Captioning) and s.caption == canonical_caption(s.scene)
        assert sum(parse_caption(s.caption).values()) == len(s.scene.objects)
        assert s.image.tobytes() == render(s.scene, 64).tobytes()


def test_world_knowledge_needs_one_fact_and_resolves_to_its_spec():
    kinds = set()
    for seed in range(60):
        s = make_sample("world_knowledge", rng(seed), 64)
        assert isinstance(s, WorldKnowledge)
        (q,) = s.spec.objects
        assert parse_prompt(s.resolved_prompt) == s.spec and satisfies(s.scene, s.spec)
        assert s.resolved_prompt == f"{'an' if q.colour == 'orange' else 'a'} {q.colour} {q.shape}"
        assert s.reasoning.endswith(".") and q.colour in s.reasoning
        colour_riddle = " the colour of " in s.prompt
        shape_riddle = " shape " in s.prompt
        assert colour_riddle or shape_riddle  # something is left to work out
        assert s.resolved_prompt not in s.prompt
        kinds.add((colour_riddle, shape_riddle))
        with pytest.raises(ValueError):
            parse_prompt(s.prompt)  # the riddle itself is not a plain prompt
    assert kinds == {(False, True), (True, False), (True, True)}


def test_riddle_example_and_fact_tables():
    prompt, reasoning, spec = riddle(rng(0), kind="colour")
    assert prompt.startswith("a ") and " the colour of " in prompt
    assert set(COLOUR_FACTS) == set(COLOURS) and set(SHAPE_RIDDLES) == set(SHAPES)
    assert ("grass", "Grass is green.") in COLOUR_FACTS["green"]
    for colour, facts in COLOUR_FACTS.items():
        assert len(facts) >= 2 and all(colour in fact for _, fact in facts)
    assert set(RIDDLE_KINDS) == {"colour", "shape", "both"}
    with pytest.raises(ValueError, match=r"unknown riddle kind 'size'"):
        riddle(rng(0), kind="size")


def test_text_only_is_a_fact_or_a_true_description():
    seen = set()
    for seed in range(40):
        s = make_sample("text_only", rng(seed), 64)
        assert isinstance(s, TextOnly)
        if s.scene is None:
            assert s.text in FACTS
            seen.add("fact")
        else:
            assert s.text.startswith(f"The picture shows {canonical_caption(s.scene)}.")
            seen.add("scene")
    assert seen == {"fact", "scene"}


def test_other_tasks_load_lazily_and_new_ones_register(monkeypatch):
    assert {"t2i", "captioning", "world_knowledge", "text_only", "edit", "interleaved", "in_context"} <= set(
        task_names()
    )
    monkeypatch.setitem(TASK_MAKERS, "echo", lambda r, size, split, **_: TextOnly(text=f"{size} {split}"))
    assert make_sample("echo", rng(0), 48, "test") == TextOnly(text="48 test")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: make_sample("draw", rng(0)), ValueError, r"unknown task 'draw'; choose one of \['t2i', "),
        (lambda: make_sample("t2i", rng(0), size=8), ValueError, r"size = 8 px is too small for the objects"),
        (lambda: make_sample("t2i", 7), TypeError, r"rng must be a numpy\.random\.Generator"),
    ],
)
def test_bad_task_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
