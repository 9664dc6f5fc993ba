"""The ShapeWorld evaluation of a NextStep-1 pipeline: prompts and images stay paired, a pipeline that
draws the ground truth scores the ceiling and one that draws nothing scores zero."""

import torch

from nxrecipes.data.shapeworld import ShapeWorld, to_float
from nxrecipes.nextstep1.evaluate import edit_accuracy, shapeeval

SIZE = 32


class GroundTruth:
    """Answers every prompt (edit instruction) with ShapeWorld's own image (target image)."""

    def __init__(self, blank=False):
        self.blank = blank
        self.by_prompt = {r.prompt: r.image for split in ("test", "heldout")
                          for r in ShapeWorld(split=split, size=SIZE, tasks=("t2i",), length=12, seed=1)}
        self.by_instruction = {r.instruction: r.target_image
                               for r in ShapeWorld(split="test", size=SIZE, tasks=("edit",), length=6, seed=1)}

    def _images(self, pictures):
        out = torch.stack([to_float(p) for p in pictures])
        return torch.ones_like(out) if self.blank else out

    def text_to_image(self, captions, *, hw, sampling, seed, progress):
        assert tuple(hw) == (SIZE, SIZE)
        return self._images([self.by_prompt[c] for c in captions])

    def edit(self, images, instructions, *, sampling, seed, progress):
        return self._images([self.by_instruction[i] for i in instructions])


def test_ground_truth_scores_the_ceiling_and_blank_images_zero():
    perfect, blank = GroundTruth(), GroundTruth(blank=True)
    for split in ("test", "heldout"):
        report = shapeeval(perfect, split, 12, size=SIZE, batch=5)
        assert report["overall"] >= 0.8 and report["partial"] >= 0.9
        assert set(report["categories"]) <= {"single_object", "two_object", "counting", "colors", "position",
                                             "color_attr"}
        assert all(c["drawn"] >= c["asked"] and c["empty"] == 0 for c in report["drawn"].values())
        nothing = shapeeval(blank, split, 12, size=SIZE, batch=5)
        assert nothing["overall"] == 0.0 and nothing["partial"] < 0.2
        assert all(c["drawn"] == 0 and c["empty"] == 1 for c in nothing["drawn"].values())
    assert edit_accuracy(perfect, 6, size=SIZE, batch=4) >= 0.8
    assert edit_accuracy(blank, 6, size=SIZE, batch=4) == 0.0
