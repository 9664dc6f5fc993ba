"""The ShapeWorld evaluation of a NextStep-1 pipeline: prompts and images stay paired, a pipeline that
draws the ground truth scores the ceiling and one that draws nothing scores zero; teacher forcing
with an oracle head redraws the ground truth, and noise on the context reaches the head."""

import pytest
import torch
from torch import nn

from nxcore.sampler.field import CallableField
from nxcore.tokenizer import BPETokenizer
from nxrecipes.data.shapeworld import ShapeWorld, to_float
from nxrecipes.data.shapeworld.corpus import text_corpus
from nxrecipes.nextstep1.data import NEXTSTEP1_SPECIALS
from nxrecipes.nextstep1.evaluate import edit_accuracy, shapeeval, teacher_forced

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


class Pixels(nn.Module):
    """An exact image tokenizer: 8x8 pixel patches as 192-wide tokens."""

    downsample, latent_dim = 8, 192

    def encode(self, x):
        return nn.functional.pixel_unshuffle(x, 8).permute(0, 2, 3, 1)

    def decode(self, z):
        return nn.functional.pixel_shuffle(z.permute(0, 3, 1, 2), 8)


class Oracle(nn.Module):
    """Reads the context it is given and conditions each image token on that token itself; its head's
    field carries any point straight to its condition by t = 1."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(1, 1)
        self.image_head = self

    def forward(self, ids, latents, attention_mask):
        self.context = latents
        return ids

    def image_conditions(self, hidden, ids):
        return self.context

    def predict(self, cond):
        return CallableField(lambda x, t: (cond - x) / (1 - t)[:, None].clamp(min=1e-6), tuple(cond.shape))


class OraclePipeline:
    def __init__(self):
        self.model, self.image_tokenizer, self.device = Oracle(), Pixels(), torch.device("cpu")
        self.text_tokenizer = BPETokenizer.train(text_corpus(5), 300, special_tokens=NEXTSTEP1_SPECIALS)

    def grid(self, hw):
        return hw[0] // 8, hw[1] // 8

    def decode(self, latents):
        return ((self.image_tokenizer.decode(latents) + 1) / 2).clamp(0, 1)


def test_teacher_forcing_with_an_oracle_head_redraws_the_truth_until_the_context_is_noisy():
    oracle = OraclePipeline()
    clean = teacher_forced(oracle, "test", 12, size=SIZE, steps=4, batch=5)
    truth = shapeeval(GroundTruth(), "test", 12, size=SIZE, batch=5)
    assert clean == truth  # the same prompts, images equal to ShapeWorld's
    noisy = teacher_forced(oracle, "test", 12, size=SIZE, steps=4, batch=5, context_noise=1.0)
    assert noisy["partial"] < clean["partial"] - 0.3
    with pytest.raises(ValueError, match="context_noise must be a number >= 0, got -1"):
        teacher_forced(oracle, "test", 2, size=SIZE, context_noise=-1)
