import json

from PIL import Image

from nxrecipes.demo import main


def test_demo_writes_pictures_and_ground_truth_scores(tmp_path):
    out = main(["--out", str(tmp_path), "-n", "12"])
    for name in ("shapeworld_t2i.png", "shapeworld_tasks.png", "next_scale_steps.png"):
        image = Image.open(out / name)
        assert image.width > 300 and image.height > 90
    scores = json.loads((out / "shapeeval_ground_truth.json").read_text())
    assert scores["test"]["overall"] >= 0.99 and scores["heldout"]["overall"] >= 0.99
    assert scores["edit_accuracy"] >= 0.99 and scores["caption_exact"] >= 0.99
