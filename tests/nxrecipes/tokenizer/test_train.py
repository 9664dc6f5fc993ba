import json
import shutil

import pytest
import torch

from nxrecipes.tokenizer.train import (
    TokenizerTrainConfig,
    _calibrate,
    autoencoder_training_tiny,
    dual_codebook_training_tiny,
    load_run,
    multiscale_vq_training_tiny,
    train_tokenizer,
)
from nxrecipes.train.metrics import read_metrics
from nxrecipes.train.state import list_checkpoints, load_latest_training_state

from .conftest import tiny_dual_config, tiny_run


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_few_autoencoder_steps_lower_the_loss_and_resume_exactly(tmp_path):
    whole = train_tokenizer(tiny_run(tmp_path / "whole", steps=6, checkpoint_every=4), progress=False)
    records = read_metrics(tmp_path / "whole")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [s for s, _ in list_checkpoints(tmp_path / "whole")] == [4, 6]
    assert [r["step"] for r in records if "eval/psnr" in r] == [0, 2, 4, 6]
    assert json.loads((tmp_path / "whole" / "eval.json").read_text())["step"] == 6

    # the same run in two sessions: 3 steps (checkpoints at 2 and 3), then resumed to 6
    first = train_tokenizer(tiny_run(tmp_path / "split", steps=3), progress=False)
    second = train_tokenizer(tiny_run(tmp_path / "split", steps=6), progress=False)
    assert (first.step, second.resumed_from, second.step) == (3, 3, 6)
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "split")
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert steps == list(range(6))  # no step logged twice
    assert whole.report.psnr == pytest.approx(second.report.psnr)


def test_a_few_vq_steps_lower_the_loss_and_log_usage_per_scale(tmp_path):
    summary = train_tokenizer(tiny_run(tmp_path, "vq", steps=4), progress=False)
    records = read_metrics(tmp_path)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert {"loss/l2", "loss/codebook", "loss/commitment"} <= set(records[1])
    usage = [r for r in records if "usage/all" in r]
    assert [r["step"] for r in usage] == [0, 2, 4]
    assert {f"usage/scale_{k:02d}" for k in range(4)} <= set(usage[-1])
    assert summary.report.codes["codebook_size"] == 16
    run = load_run(tmp_path / "tokenizer")  # the tokenizer directory works too
    assert type(run.model).__name__ == "MultiScaleVQTokenizer" and not run.model.training


def test_run_config_round_trips_json(tmp_path):
    for cfg in (autoencoder_training_tiny(tmp_path, minutes=2.5), multiscale_vq_training_tiny(tmp_path, steps=7)):
        assert TokenizerTrainConfig.from_json(cfg.to_json()) == cfg
    vq = multiscale_vq_training_tiny(tmp_path)
    assert vq.objective.steps[-1] == (16, 16)  # 64 px / downsample 4
    dual = dual_codebook_training_tiny(tmp_path, minutes=15)
    assert TokenizerTrainConfig.from_json(dual.to_json()) == dual
    t = dual.tokenizer  # what reaches the issue-7 targets on ShapeWorld in 15 CPU minutes
    assert (t.unit_codewords, t.vq_loss, t.scale_drop, t.codebook_size) == (False, "cumulative", 0.0, 256)
    assert dual.objective.steps[-1] == (16, 16) and dual.objective.stages == ()


def test_dual_builder_routes_tokenizer_fields_to_the_tokenizer_and_the_rest_to_the_loop(tmp_path):
    cfg = dual_codebook_training_tiny(tmp_path, steps=5, size=32, normalize=False, restart_every=20,
                                      codebook_size=64, lr=1e-3)
    t = cfg.tokenizer
    assert (t.normalize, t.restart_every, t.codebook_size, t.pix_dim) == (False, 20, 64, 8)
    assert cfg.train.lr == 1e-3 and cfg.objective.steps[-1] == (8, 8)
    assert cfg.tokenizer.build().restarts.every == 20
    with pytest.raises(ValueError, match="dual_codebook_training_tiny has no setting 'codebooks'"):
        dual_codebook_training_tiny(tmp_path, codebooks=64)


def test_dual_builder_routes_branch_fields_and_the_schedule_follows_the_downsample(tmp_path):
    cfg = dual_codebook_training_tiny(tmp_path, steps=5, size=32, ch_mult=(1, 2, 2, 2), width=24)
    t = cfg.tokenizer
    assert (t.pixel.ch_mult, t.semantic.width) == ((1, 2, 2, 2), 24)
    assert cfg.objective.steps == ((1, 1), (2, 2), (3, 3), (4, 4))  # 32 px / downsample 8


def test_a_minute_budget_fixes_the_steps_after_calibration(tmp_path):
    cfg = tiny_run(tmp_path, steps=10_000, checkpoint_every=0, log_every=5, min_lr_ratio=0.1)
    cfg = cfg.replace(minutes=0.05, eval_every=1000)
    summary = train_tokenizer(cfg, progress=False)
    assert summary.step == summary.total_steps >= 8  # calibrated after 8 updates
    assert summary.elapsed_s <= 0.05 * 60 * 1.5
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    assert lrs[-1] < lrs[0]  # the cosine decayed over the calibrated number of steps


def test_calibration_arithmetic():
    # after 8 updates of 0.1 s (the first, 0.5 s, is warm-up), 9.6 s of 20 s spent; evaluations of
    # 1 s every 10 updates add 0.1 s per update; one final evaluation of 1 s
    total = _calibrate(8, 10_000, 20.0, 9.6, [0.5] + [0.1] * 7, 0.1, 1.0)
    assert total == 8 + int((0.98 * 20.0 - 9.6 - 1.0) / 0.2)
    assert _calibrate(8, 20, 1000.0, 1.0, [0.1] * 8, 0.0, 0.0) == 20  # capped at train.steps
    assert _calibrate(8, 100, 1.0, 5.0, [0.1] * 8, 0.0, 0.0) == 8  # already over budget


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda c: c.replace(minutes=0), ValueError, r"TokenizerTrainConfig.minutes = 0"),
        (lambda c: c.replace(objective=c.tokenizer), TypeError, r"objective must be a TokenizerObjective config"),
        (lambda c: c.replace(data="shapeworld"), TypeError, r"data must be an nx Config.*got str"),
        (lambda c: c.replace(train=c.train.replace(parallel="ddp")), ValueError, r"parallel='ddp'"),
    ],
)
def test_bad_configs_are_named(tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        change(tiny_run(tmp_path))


def test_load_run_names_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run_config.json does not exist.*not a tokenizer run"):
        load_run(tmp_path)


def test_a_longer_plan_never_raises_the_learning_rate_after_warmup():
    from nxrecipes.tokenizer.train import _Plan
    from nxrecipes.train.config import TrainConfig

    plan = _Plan(TrainConfig(run_dir="unused", steps=100, warmup_steps=5, lr=1e-3))
    factors = [plan.factor(step) for step in range(40)]
    plan.set_total(400)  # calibration found more time: the cosine stretches
    factors += [plan.factor(step) for step in range(40, 120)]
    after_warmup = factors[4:]
    assert all(b <= a for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert factors[0] < factors[4] == 1.0  # warmup still rises


def _branch(model, names):
    return {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in names}


def test_staged_dual_training_freezes_the_other_branch_after_the_switch_and_resumes_in_its_stage(tmp_path):
    from nxcore.tokenizer.dual import STAGES

    stages = (("joint", 0.5), ("pixel", 0.5))  # updates 0-1 joint, 2-3 pixel only
    whole = train_tokenizer(tiny_run(tmp_path / "whole", "dual", steps=4, stages=stages), progress=False)
    assert [(r["step"], r["stage"]) for r in read_metrics(tmp_path / "whole") if "stage" in r] == [(0, 0), (2, 1)]

    # the step-2 checkpoint (just before the switch) against the end of the run
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    shutil.rmtree(dict(list_checkpoints(tmp_path / "split"))[4])
    at_switch = tiny_dual_config().build()
    assert load_latest_training_state(tmp_path / "split", model=at_switch, optimizer=None, scheduler=None).step == 2
    final = load_run(tmp_path / "whole").model
    semantic = [n for n in STAGES["joint"] if n not in STAGES["pixel"]]
    before, after = _branch(at_switch, semantic), _branch(final, semantic)
    assert before and all(torch.equal(before[k], after[k]) for k in before)  # frozen: unchanged
    before, after = _branch(at_switch, STAGES["pixel"]), _branch(final, STAGES["pixel"])
    assert not torch.equal(before["encoder.conv_in.weight"], after["encoder.conv_in.weight"])

    # resumed at step 2, the run re-enters the pixel stage and ends where the whole run did
    resumed = train_tokenizer(tiny_run(tmp_path / "split", "dual", steps=4, stages=stages), progress=False)
    assert resumed.resumed_from == 2
    split = load_run(tmp_path / "split").model.state_dict()
    assert all(torch.equal(split[k], v) for k, v in final.state_dict().items())
    assert whole.report.psnr == pytest.approx(resumed.report.psnr)

