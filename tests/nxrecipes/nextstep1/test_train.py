"""NextStep-1 training: a tiny run trains, a killed run resumes to the weights of an uninterrupted
one, the minutes budget is planned once, the run reads back, configs round-trip and refuse what
cannot work."""

import json
import math

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.tokenizer import BPETokenizer
from nxcore.tokenizer.autoencoder import NextStepAutoencoder, autoencoder_tiny
from nxrecipes.nextstep1 import NextStep1
from nxrecipes.nextstep1.data import NEXTSTEP1_SPECIALS
from nxrecipes.nextstep1.train import (
    NextStep1Batches,
    NextStep1Step,
    NextStep1TrainConfig,
    load_autoencoder,
    load_run,
    nextstep1_text_tokenizer,
    nextstep1_training_tiny,
    train_nextstep1,
)
from nxrecipes.train import run as train_run
from nxrecipes.train.metrics import read_metrics

TEXT = nextstep1_text_tokenizer(vocab_size=300, corpus_rounds=20)


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nextstep1") / "tokenizer"
    save_pretrained(NextStepAutoencoder(autoencoder_tiny(ch_mult=(1, 2, 2))), path)  # 32 px -> 4 x 4 tokens
    return path


def tiny(run_dir, ae_dir, **changes):
    fields = {"tokenizer_dir": ae_dir, "size": 32, "samples": 64, "batch_size": 2, "num_layers": 1,
              "text_tokenizer": TEXT, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1}
    fields.update(changes)
    return nextstep1_training_tiny(run_dir, **fields)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, ae_dir, monkeypatch):
    cfg = tiny(tmp_path / "whole", ae_dir, steps=3)
    whole = train_nextstep1(cfg, progress=False)
    assert (whole.step, whole.total_steps, whole.resumed_from) == (3, 3, None) and math.isfinite(whole.loss)
    logged = read_metrics(tmp_path / "whole")
    assert [r["step"] for r in logged] == [0, 1, 2]
    assert {"loss", "loss/text", "loss/image", "tokens", "lr"} <= set(logged[0])
    assert logged[0]["lr"] != logged[2]["lr"]  # warmup + cosine: the schedule state matters on resume

    draw = NextStep1Batches.next_batch
    drawn = []

    def dies_on_the_third_batch(self):
        drawn.append(1)
        if len(drawn) == 3:
            raise Killed
        return draw(self)

    monkeypatch.setattr(NextStep1Batches, "next_batch", dies_on_the_third_batch)
    with pytest.raises(Killed):
        train_nextstep1(tiny(tmp_path / "split", ae_dir, steps=3), progress=False)
    monkeypatch.undo()
    resumed = train_nextstep1(tiny(tmp_path / "split", ae_dir, steps=3), progress=False)
    assert (resumed.resumed_from, resumed.step) == (2, 3)

    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    assert isinstance(a.model, NextStep1) and not a.model.training
    wa, wb = _weights(a.model), _weights(b.model)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    init = cfg.model.build()
    assert any(not torch.equal(wa[k], v) for k, v in init.state_dict().items())  # it did train
    assert isinstance(a.text_tokenizer, BPETokenizer) and a.text_tokenizer.pad_id == cfg.model.pad_id
    assert a.text_tokenizer.encode("a red circle") == TEXT.build().encode("a red circle")
    assert a.image_tokenizer.latent_dim == cfg.model.latent_dim == 16
    assert a.run_dir == tmp_path / "whole"
    assert NextStep1TrainConfig.load(tmp_path / "whole" / "run_config.json") == cfg


def test_minutes_plan_the_updates_once_and_keep_the_plan_on_resume(tmp_path, ae_dir, monkeypatch):
    monkeypatch.setattr(train_run, "CALIBRATION_STEPS", 2)
    cfg = tiny(tmp_path, ae_dir, minutes=10.0, steps=2, checkpoint_every=0)  # the cap binds
    first = train_nextstep1(cfg, progress=False)
    assert (first.total_steps, first.step) == (2, 2)
    assert json.loads((tmp_path / "plan.json").read_text())["total_steps"] == 2
    again = train_nextstep1(cfg, progress=False)
    assert (again.resumed_from, again.step, again.total_steps) == (2, 2, 2)


def test_with_input_noise_the_step_reads_noisy_latents_and_scores_clean_targets(tmp_path, ae_dir):
    cfg = tiny(tmp_path, ae_dir, input_noise=0.5)
    assert cfg.data.input_noise == 0.5 and NextStep1TrainConfig.from_json(cfg.to_json()) == cfg
    batch = NextStep1Batches(cfg.data.dataset(0), cfg.data.builder(TEXT.build(), load_autoencoder(ae_dir), 0),
                             2).next_batch()
    assert batch.targets is not None and not torch.equal(batch.latents, batch.targets)
    model = cfg.model.build()

    def loss(targets):
        torch.manual_seed(0)
        return model.loss(batch.ids, batch.latents, targets=targets, attention_mask=batch.attention_mask,
                          image_weights=batch.image_weights).total

    torch.manual_seed(0)
    total, _ = NextStep1Step()(model, batch)
    assert torch.equal(total, loss(batch.targets)) and not torch.equal(total, loss(None))


def test_configs_round_trip_and_refuse_what_cannot_work(tmp_path, ae_dir):
    cfg = tiny(tmp_path, ae_dir, steps=5, minutes=1.5, drop_text_prob=0.3, lr=3e-4, max_distractors=0)
    assert NextStep1TrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.data.dataset(seed=0).source.max_distractors == 0
    assert (cfg.data.drop_text_prob, cfg.train.lr, cfg.train.steps, cfg.minutes) == (0.3, 3e-4, 5, 1.5)
    text = TEXT.build()
    assert cfg.model.vocab_size == text.vocab_size
    assert cfg.model.image_placeholder_id == text.special_id(NEXTSTEP1_SPECIALS.image_placeholder)
    with pytest.raises(ValueError, match="no setting 'colour'"):
        tiny(tmp_path, ae_dir, colour="red")
    with pytest.raises(ValueError, match="no setting 'vocab_size' \\(the tokenizers decide it\\)"):
        tiny(tmp_path, ae_dir, vocab_size=999)
    with pytest.raises(ValueError, match="task_mix names 'captioning'"):
        tiny(tmp_path, ae_dir, task_mix=(("captioning", 1.0),))
    with pytest.raises(ValueError, match="parallel='none'"):
        tiny(tmp_path, ae_dir, parallel="ddp")
    other = nextstep1_text_tokenizer(vocab_size=280, corpus_rounds=20).build()
    with pytest.raises(ValueError, match="does not match the tokenizers"):
        train_nextstep1(cfg, text_tokenizer=other, progress=False)
    with pytest.raises(FileNotFoundError, match="--kind ae"):
        tiny(tmp_path, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a NextStep-1 run directory"):
        load_run(tmp_path / "nothing")
