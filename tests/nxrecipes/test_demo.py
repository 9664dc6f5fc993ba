import json

from PIL import Image

from nxrecipes.demo import main


def test_demo_writes_pictures_and_ground_truth_scores(tmp_path):
    out = main(["--out", str(tmp_path), "-n", "12", "--no-train"])
    for name in ("shapeworld_t2i.png", "shapeworld_tasks.png", "next_scale_steps.png"):
        image = Image.open(out / name)
        assert image.width > 300 and image.height > 90
    scores = json.loads((out / "shapeeval_ground_truth.json").read_text())
    assert scores["test"]["overall"] >= 0.99 and scores["heldout"]["overall"] >= 0.99
    assert scores["edit_accuracy"] >= 0.99 and scores["caption_exact"] >= 0.99


def test_demo_trains_generates_and_scores(tmp_path):
    out = main(["--out", str(tmp_path), "-n", "4", "--eval-num", "4", "--tokenizer-minutes", "0.1",
                "--minutes", "0.15"])
    assert Image.open(out / "nextflow_samples.png").width > 300
    report = json.loads((out / "nextflow_shapeeval.json").read_text())
    assert 0 <= report["shapeeval_test"]["overall"] <= 1 and "knowledge_think" in report


def test_nextstep1_demo_trains_the_shapeworld_recipe(tmp_path):
    out = main(["--out", str(tmp_path), "-n", "4", "--eval-num", "4", "--tokenizer-minutes", "0.1",
                "--minutes", "0.15", "--system", "nextstep1"])
    assert Image.open(out / "nextstep1_samples.png").width > 300
    report = json.loads((out / "nextstep1_shapeeval.json").read_text())
    assert set(report) == {"shapeeval_test", "shapeeval_heldout"}
    run = json.loads((out / "nextstep1" / "run_config.json").read_text())
    assert run["data"]["size"] == 32 and run["data"]["input_noise"] == 0.5 and run["data"]["max_distractors"] == 0
    assert run["model"]["use_gen_pos_embed"] and run["train"]["lr"] == 2e-3
