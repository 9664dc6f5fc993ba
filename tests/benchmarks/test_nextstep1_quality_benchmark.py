import sys
from pathlib import Path

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.tokenizer.autoencoder import NextStepAutoencoder, autoencoder_tiny
from nxrecipes.nextstep1.train import nextstep1_text_tokenizer, nextstep1_training_tiny, train_nextstep1

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from nextstep1_quality import CONTEXT_NOISE, _teacher_forced, heldout_loss, teacher_forced_scores  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nextstep1-quality")
    torch.manual_seed(0)
    save_pretrained(NextStepAutoencoder(autoencoder_tiny(ch_mult=(1, 2, 2))), root / "ae")
    cfg = nextstep1_training_tiny(root / "run", steps=3, tokenizer_dir=root / "ae", size=32, batch_size=2,
                                  num_layers=1, checkpoint_every=0, warmup_steps=0,
                                  text_tokenizer=nextstep1_text_tokenizer(vocab_size=300, corpus_rounds=20))
    train_nextstep1(cfg, progress=False)
    return root / "run"


def test_heldout_loss_is_fixed_and_moves_with_the_prompt(run_dir):
    own = heldout_loss(run_dir, num=6, repeats=2)
    assert own == heldout_loss(run_dir, num=6, repeats=2) and own > 0
    # the head reads the backbone once its zero-started AdaLN has moved (update 2), so prompts matter
    assert heldout_loss(run_dir, num=6, repeats=2, shuffled=True) != own


def test_teacher_forced_scores_are_recorded_per_context_noise(run_dir):
    scores = teacher_forced_scores(run_dir, num=4)["teacher_forced_test"]
    assert set(scores) == {str(n) for n in CONTEXT_NOISE}
    assert all(0 <= s["overall"] <= 1 and set(s["drawn"]) == set(s["categories"]) for s in scores.values())
    assert _teacher_forced({"teacher_forced_test": scores}).count(" / ") == len(CONTEXT_NOISE) - 1
