import copy
import json
import math

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.tokenizer import BPETokenizer
from nxrecipes.nextflow import NextFlow
from nxrecipes.nextflow.train import (
    PLAN_FILE,
    NextFlowTrainConfig,
    TextTokenizerConfig,
    load_run,
    nextflow_training_tiny,
    train_nextflow,
)
from nxrecipes.train import run as train_run
from nxrecipes.train.metrics import read_metrics

# the conftest world's BPE (text_corpus(20), 300 ids), so the configs' vocabulary is the world's
TEXT = TextTokenizerConfig(vocab_size=300, corpus_rounds=20)
MIX = (("t2i", 0.5), ("captioning", 0.25), ("text_only", 0.25))


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("nextflow") / "tokenizer"
    save_pretrained(copy.deepcopy(world.image), path)
    return path


def tiny(run_dir, tokenizer_dir, world, **changes):
    fields = {"tokenizer_dir": tokenizer_dir, "size": 32, "schedule": world.schedule.steps, "batch_size": 2,
              "task_mix": MIX, "num_layers": 1, "text_tokenizer": TEXT, "warmup_steps": 0,
              "min_lr_ratio": 1.0, "checkpoint_every": 0, "log_every": 1, "per_scale": True}
    fields.update(changes)
    return nextflow_training_tiny(run_dir, **fields)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_tiny_run_trains_resumes_and_reloads(tmp_path, tokenizer_dir, world):
    cfg = tiny(tmp_path / "whole", tokenizer_dir, world, steps=2)
    vocab = world.vocab.replace(pad_to_multiple_of=64)
    assert cfg.model.vocabulary == vocab
    whole = train_nextflow(cfg, progress=False)
    assert (whole.step, whole.total_steps) == (2, 2) and math.isfinite(whole.loss)
    logged = read_metrics(tmp_path / "whole")
    assert [r["step"] for r in logged] == [0, 1]
    assert {"loss", "loss/text", "loss/image", "loss/scale_0", "tokens"} <= set(logged[0])

    # the same run in two sessions (constant LR, so 1 + 1 updates equal 2)
    train_nextflow(tiny(tmp_path / "split", tokenizer_dir, world, steps=1), progress=False)
    resumed = train_nextflow(tiny(tmp_path / "split", tokenizer_dir, world, steps=2), progress=False)
    assert (resumed.resumed_from, resumed.step) == (1, 2)

    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    assert isinstance(a.model, NextFlow) and not a.model.training
    wa, wb = _weights(a.model), _weights(b.model)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    init = cfg.model.build()
    assert any(not torch.equal(wa[k], v) for k, v in init.state_dict().items())  # it did train
    assert a.vocabulary == vocab and a.schedule.steps == world.schedule.steps
    assert isinstance(a.text_tokenizer, BPETokenizer) and a.text_tokenizer.eos_id == world.vocab.special_id("<eos>")
    assert a.text_tokenizer.encode("a red circle") == world.ids("a red circle")
    image = world.image.state_dict()
    assert all(torch.equal(image[k], v) for k, v in a.image_tokenizer.state_dict().items())
    assert NextFlowTrainConfig.load(tmp_path / "whole" / "run_config.json") == cfg


def test_minutes_plan_the_updates_once_and_keep_the_plan_on_resume(tmp_path, tokenizer_dir, world,
                                                                   monkeypatch):
    monkeypatch.setattr(train_run, "CALIBRATION_STEPS", 2)
    cfg = tiny(tmp_path, tokenizer_dir, world, minutes=10.0, steps=3)  # the cap binds
    first = train_nextflow(cfg, progress=False)
    assert (first.total_steps, first.step) == (3, 3)
    assert json.loads((tmp_path / PLAN_FILE).read_text())["total_steps"] == 3
    again = train_nextflow(cfg, progress=False)
    assert (again.resumed_from, again.step, again.total_steps) == (3, 3, 3)


def test_configs_round_trip_and_refuse_what_cannot_work(tmp_path, tokenizer_dir, world):
    cfg = tiny(tmp_path, tokenizer_dir, world, steps=5, minutes=1.5, inputs="accumulated", cfg_dropout=0.2,
               max_distractors=1)
    assert NextFlowTrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.data.dataset(seed=0).source.max_distractors == 1
    assert (cfg.model.inputs, cfg.data.cfg_dropout, cfg.train.steps) == ("accumulated", 0.2, 5)
    with pytest.raises(ValueError, match="no setting 'colour'"):
        tiny(tmp_path, tokenizer_dir, world, colour="red")
    with pytest.raises(ValueError, match="task_mix names 'painting'"):
        tiny(tmp_path, tokenizer_dir, world, task_mix=(("painting", 1.0),))
    other = TextTokenizerConfig(vocab_size=280, corpus_rounds=20).build()
    with pytest.raises(ValueError, match="vocabulary"):
        train_nextflow(cfg, text_tokenizer=other, progress=False)
    with pytest.raises(FileNotFoundError, match="no image tokenizer"):
        tiny(tmp_path, tmp_path / "missing", world)
    with pytest.raises(FileNotFoundError, match="not a NextFlow run directory"):
        load_run(tmp_path / "nothing")
