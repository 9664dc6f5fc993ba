"""TrainConfig: defaults, validation messages, JSON round-trip."""

from pathlib import Path

import pytest

from nxrecipes.train import TrainConfig


def test_defaults_and_json_round_trip(tmp_path):
    cfg = TrainConfig(run_dir=tmp_path / "run", betas=[0.9, 0.99], grad_clip=None, parallel="fsdp",
                      mixed_precision="bf16", activation_checkpointing=True)
    assert cfg.run_dir == tmp_path / "run" and isinstance(cfg.run_dir, Path)
    assert cfg.betas == (0.9, 0.99)
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg
    assert TrainConfig(run_dir="r").run_dir == Path("r")
    assert cfg.global_batch_size(4) == cfg.batch_size * cfg.grad_accum * 4


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"steps": 0}, ValueError, r"TrainConfig.steps = 0 .* int >= 1"),
        ({"steps": 2.5}, TypeError, r"TrainConfig.steps = 2.5"),
        ({"batch_size": 0}, ValueError, r"batch_size = 0"),
        ({"grad_accum": 0}, ValueError, r"grad_accum = 0"),
        ({"lr": 0.0}, ValueError, r"lr = 0.0 .* > 0"),
        ({"lr": float("nan")}, ValueError, r"lr = nan"),
        ({"min_lr_ratio": 1.5}, ValueError, r"min_lr_ratio = 1.5 .* \[0.0, 1.0\]"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay = -0.1"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas = \(0.9, 1.0\) .* \[0, 1\)"),
        ({"betas": (0.9,)}, ValueError, r"betas"),
        ({"grad_clip": 0.0}, ValueError, r"grad_clip = 0.0"),
        ({"parallel": "deepspeed"}, ValueError, r"parallel = 'deepspeed' .* \['none', 'ddp', 'fsdp'\]"),
        ({"mixed_precision": "fp16"}, ValueError, r"mixed_precision = 'fp16' .* \['fp32', 'bf16'\]"),
        ({"activation_checkpointing": 1}, TypeError, r"activation_checkpointing = 1 .* True or False"),
        ({"checkpoint_every": -1}, ValueError, r"checkpoint_every = -1"),
        ({"keep_last": 0}, ValueError, r"keep_last = 0"),
        ({"log_every": 0}, ValueError, r"log_every = 0"),
        ({"seed": -1}, ValueError, r"seed = -1"),
        ({"warmup_steps": 11, "steps": 10}, ValueError, r"warmup_steps = 11 is more than steps = 10"),
        ({"run_dir": ""}, TypeError, r"run_dir must be a non-empty path"),
    ],
)
def test_bad_values_are_named(changes, error, match):
    kwargs = {"run_dir": "run", **changes}
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_unknown_json_field_is_an_error():
    text = TrainConfig(run_dir="r").to_json().replace('"steps"', '"stpes"')
    with pytest.raises(ValueError, match=r"no field\(s\) \['stpes'\]"):
        TrainConfig.from_json(text)
