import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
harness = pytest.importorskip("harness")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_sees_a_transient_allocation_after_an_earlier_larger_one():
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed before the probe: must not count
    del big
    base = harness.reset_peak_rss()
    t = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
    del t
    peak = harness.peak_rss_since(base)
    assert 24 < peak < 56, peak


def test_amend_records_adds_fields_only_where_record_and_run_exist(tmp_path):
    import json

    (tmp_path / "a").mkdir()
    (tmp_path / "a.json").write_text('{"name": "a", "score": 1}')
    (tmp_path / "b.json").write_text('{"name": "b"}')  # its run directory is gone
    harness.amend_records({tmp_path / "a.json": tmp_path / "a", tmp_path / "b.json": tmp_path / "b",
                           tmp_path / "c.json": tmp_path / "a"},  # no record yet
                          lambda run_dir: {"run": run_dir.name, "score": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"name": "a", "score": 2, "run": "a"}
    assert json.loads((tmp_path / "b.json").read_text()) == {"name": "b"}
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("num", [2, 3, 7, 8, 64])
def test_other_prompts_moves_every_prompt_and_keeps_the_images(num):
    from nxrecipes.data.shapeworld import ShapeWorld

    records = list(ShapeWorld(split="test", size=32, tasks=("t2i",), length=num, seed=11))
    moved = harness.other_prompts(records)
    shift = 7 if num > 7 else 1  # 7 places on, as the recorded runs were scored
    for i, (m, r) in enumerate(zip(moved, records, strict=True)):
        assert m.image is r.image and m.prompt is records[(i + shift) % num].prompt
    with pytest.raises(ValueError, match="at least 2"):
        harness.other_prompts(records[:1])


def test_objects_drawn_averages_categories_and_is_blank_for_older_records():
    report = {"drawn": {"colors": {"asked": 1, "drawn": 0.5, "empty": 0.5},
                        "counting": {"asked": 3, "drawn": 2.5, "empty": 0.0}}}
    assert harness.objects_drawn(report) == "1.50 / 2.00 (0.25)"
    assert harness.objects_drawn({"overall": 0.0}) == ""
