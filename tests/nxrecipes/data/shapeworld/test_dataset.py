"""Datasets: deterministic per index, streams sharded without duplicates, export and read-back."""

import json

import attrs
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from nxrecipes.data.shapeworld.dataset import (
    SAMPLES_FILE,
    ShapeWorld,
    ShapeWorldStream,
    export,
    load_jsonl_specs,
    scene_from_dict,
    spec_from_dict,
)
from nxrecipes.data.shapeworld.tasks import Captioning, TextToImage, WorldKnowledge
from nxrecipes.data.shapeworld.world import BACKGROUND, Scene

OWN = ("t2i", "captioning", "world_knowledge", "text_only")


def key(record):
    return record.image.tobytes()


def test_map_dataset_is_deterministic_per_index():
    a, b = ShapeWorld(length=20, size=32, seed=5), ShapeWorld(length=20, size=32, seed=5)
    assert len(a) == 20
    for i in (0, 7, 19):
        assert a[i] == b[i] and key(a[i]) == key(b[i]) and isinstance(a[i], TextToImage)
    assert a[-1] == a[19]
    assert len({key(a[i]) for i in range(20)}) == 20
    assert a[0] != ShapeWorld(length=20, size=32, seed=6)[0]
    assert a[0] != ShapeWorld("validation", length=20, size=32, seed=5)[0]
    with pytest.raises(IndexError, match=r"index 20 is out of range for a ShapeWorld of length 20"):
        a[20]


def test_task_mixture_follows_the_weights():
    ds = ShapeWorld(tasks=OWN, length=60, size=32)
    tasks = [ds.task_at(i) for i in range(60)]
    assert set(tasks) == set(OWN)
    assert all(type(ds[i]).task == t for i, t in enumerate(tasks[:12]))
    only = ShapeWorld(tasks=("t2i", "captioning"), task_weights=(0, 3), length=10, size=32)
    assert all(isinstance(only[i], Captioning) for i in range(10))


def test_stream_shards_across_workers_without_duplicates():
    stream = ShapeWorldStream(length=24, size=32, seed=1)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    seen = [key(r) for r in loader]
    assert len(seen) == 24 and len(set(seen)) == 24
    assert set(seen) == {key(r) for r in ShapeWorld(length=24, size=32, seed=1)}


def test_stream_shards_across_ranks():
    whole = [key(r) for r in ShapeWorldStream(length=12, size=32)]
    parts = [[key(r) for r in ShapeWorldStream(length=12, size=32, rank=r, world_size=3)] for r in range(3)]
    assert sorted(k for p in parts for k in p) == sorted(whole)
    assert [len(p) for p in parts] == [4, 4, 4]
    endless = iter(ShapeWorldStream(size=32))
    assert len({key(next(endless)) for _ in range(5)}) == 5


def test_export_writes_pngs_and_jsonl_that_read_back(tmp_path):
    ds = ShapeWorld(tasks=OWN, length=12, size=32, seed=2)
    path = export(ds, tmp_path / "out", progress=False)
    assert path == tmp_path / "out" / SAMPLES_FILE
    lines = [json.loads(t) for t in path.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(12))
    for line in lines:
        record = ds[line["index"]]
        assert line["task"] == type(record).task
        if hasattr(record, "image"):
            assert line["image"] == f"{line['index']:06d}.png"
            png = Image.open(tmp_path / "out" / line["image"])
            assert np.array_equal(np.asarray(png), np.asarray(record.image))
        if getattr(record, "scene", None) is not None:
            assert scene_from_dict(line["scene"]) == record.scene
        if hasattr(record, "spec"):
            assert spec_from_dict(line["spec"]) == record.spec
    specs = load_jsonl_specs(tmp_path / "out")
    expected = [i for i in range(12) if isinstance(ds[i], TextToImage | WorldKnowledge)]
    assert [p.index for p in specs] == expected and expected
    for p in specs:
        assert p.prompt == ds[p.index].prompt and p.spec == ds[p.index].spec and p.image.endswith(".png")
    assert load_jsonl_specs(path) == specs


def test_export_of_a_stream_and_of_records(tmp_path):
    path = export(ShapeWorldStream(length=3, size=32), tmp_path / "s", progress=False)
    assert len(path.read_text().splitlines()) == 3
    with pytest.raises(TypeError, match=r"endless ShapeWorldStream has no length; give length="):
        export(ShapeWorldStream(size=32), tmp_path / "e", progress=False)

    @attrs.frozen
    class Note:
        text: str
        images: tuple

    ds = ShapeWorld(length=2, size=32)
    path = export([Note("hi", (ds[0].image, ds[1].image))], tmp_path / "r", progress=False)
    line = json.loads(path.read_text())
    assert line["task"] == "Note" and line["images"] == ["000000_images_0.png", "000000_images_1.png"]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ShapeWorld("dev"), ValueError, r"unknown split 'dev'"),
        (lambda: ShapeWorld(tasks=("t2i", "paint")), ValueError, r"unknown task 'paint'; choose one of"),
        (lambda: ShapeWorld(tasks="t2i"), TypeError, r"tasks must be a sequence of task names such as \('t2i',\)"),
        (lambda: ShapeWorld(tasks=()), ValueError, r"tasks is empty"),
        (lambda: ShapeWorld(size=16), ValueError, r"size = 16 px is too small for the objects.*use size >= 32"),
        (lambda: ShapeWorld(length=-1), ValueError, r"length = -1 must be an int >= 0"),
        (lambda: ShapeWorld(seed=-2), ValueError, r"seed = -2 must be an int >= 0"),
        (lambda: ShapeWorld(max_distractors=-1), ValueError, r"max_distractors = -1 must be an int >= 0"),
        (lambda: ShapeWorldStream(max_distractors=1.5), ValueError, r"max_distractors = 1.5 must be an int >= 0"),
        (lambda: ShapeWorld(tasks=OWN, task_weights=(1, 1)), ValueError, r"task_weights has 2 entries for 4 tasks"),
        (lambda: ShapeWorld(tasks=("t2i",), task_weights=(-1,)), ValueError, r"task_weights = \(-1,\) must be"),
        (lambda: ShapeWorld(task_weights=1.0), TypeError, r"task_weights must be a sequence of numbers"),
        (lambda: ShapeWorldStream(rank=0), ValueError, r"give rank and world_size together"),
        (lambda: ShapeWorldStream(rank=2, world_size=2), ValueError, r"rank = 2 must be an int in \[0, world_size = 2\)"),
        (lambda: ShapeWorld(length=3)["0"], TypeError, r"index must be an int, got str"),
        (lambda: export(42, "/tmp/x", progress=False), TypeError, r"dataset must be a ShapeWorld"),
        (lambda: load_jsonl_specs("/nonexistent/samples.jsonl"), FileNotFoundError, r"no prompts file at"),
        (lambda: spec_from_dict({"objects": []}), ValueError, r"not an exported spec"),
    ],
)
def test_bad_dataset_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_corrupt_jsonl_names_the_line(tmp_path):
    (tmp_path / SAMPLES_FILE).write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"samples\.jsonl:2 is not valid JSON"):
        load_jsonl_specs(tmp_path)


def test_hand_written_prompt_lines_are_parsed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a red circle", "image": "a.png"}\n{"task": "captioning", "caption": "x"}\n')
    (entry,) = load_jsonl_specs(path)
    assert entry.prompt == "a red circle" and entry.image == "a.png"
    assert entry.spec.category == "colors" and entry.spec.objects[0].colour == "red"


@pytest.mark.parametrize("task", ["t2i", "captioning", "edit", "interleaved", "in_context", "world_knowledge"])
def test_background_variation_is_optional_and_reaches_every_image_task(task):
    plain = ShapeWorld(split="test", tasks=(task,), length=4, seed=3)
    varied = ShapeWorld(split="test", tasks=(task,), length=4, seed=3, vary_background=True)
    plain_scenes = [s for i in range(4) for s in _scenes_of(plain[i])]
    varied_scenes = [s for i in range(4) for s in _scenes_of(varied[i])]
    assert plain_scenes and varied_scenes
    assert all(s.gradient == (0.0, 0.0) and s.background == BACKGROUND for s in plain_scenes)
    assert any(s.gradient != (0.0, 0.0) or s.background != BACKGROUND for s in varied_scenes)


@pytest.mark.parametrize("task", ["t2i", "world_knowledge"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_prompt_scenes_hold_only_what_the_prompt_names_without_distractors(task, split):
    def unnamed(record):  # objects of shapes the prompt does not name
        shapes = {q.shape for q in record.spec.objects}
        return [o for o in record.scene.objects if o.shape not in shapes]

    clean = ShapeWorld(split=split, tasks=(task,), length=60, seed=5, max_distractors=0)
    cluttered = ShapeWorld(split=split, tasks=(task,), length=60, seed=5)
    # held-out scenes may add one object to show a required colour-shape pair, never more
    allowed = 1 if split == "heldout" else 0
    assert all(len(unnamed(clean[i])) <= allowed for i in range(60))
    assert max(len(unnamed(cluttered[i])) for i in range(60)) == 2
    assert sum(len(unnamed(clean[i])) for i in range(60)) < sum(len(unnamed(cluttered[i])) for i in range(60))


def _scenes_of(record):
    found = []
    for value in attrs.asdict(record, recurse=False).values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            for sub in (item if isinstance(item, tuple) else (item,)):
                if isinstance(sub, Scene):
                    found.append(sub)
    return found
