import json
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from nxrecipes.train.metrics import (
    MetricsLogger,
    Throughput,
    mfu,
    read_metrics,
    transformer_flops_per_token,
)


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def no_tensorboard(monkeypatch):
    """Make ``import torch.utils.tensorboard`` fail, as it does without the tensorboard package."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


class FakeWriter:
    instances: list["FakeWriter"] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars, self.closed = [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step, walltime=None):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    FakeWriter.instances = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeWriter.instances


def test_each_log_is_one_json_line_on_disk_before_close(tmp_path, no_tensorboard):
    run = tmp_path / "run"
    logger = MetricsLogger(run)
    logger.log(0, {"loss": 2.5, "loss/t2i": np.float32(2.25), "loss/scale_03": torch.tensor(1.5)})
    logger.log(10, {"tokens_per_s": 1234.5, "mfu": 0.375, "tokens": 4096})
    lines = _lines(run)  # flushed: a killed run keeps these
    assert [line["step"] for line in lines] == [0, 10]
    assert lines[0]["loss"] == 2.5 and lines[0]["loss/t2i"] == 2.25 and lines[0]["loss/scale_03"] == 1.5
    assert lines[1] == {"step": 10, "time": lines[1]["time"], "tokens_per_s": 1234.5, "mfu": 0.375, "tokens": 4096}
    assert isinstance(lines[1]["tokens"], int)
    assert abs(lines[0]["time"] - __import__("time").time()) < 60
    logger.close()
    logger.close()  # twice is fine
    assert read_metrics(run) == lines == read_metrics(run / "metrics.jsonl")


def test_context_manager_closes_and_a_closed_logger_refuses(tmp_path, no_tensorboard):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
        assert logger.writes and not logger.tensorboard
    assert not logger.writes
    with pytest.raises(ValueError, match="closed"):
        logger.log(2, {"loss": 1.0})


def test_only_rank_zero_writes(tmp_path, fake_tensorboard):
    run = tmp_path / "run"
    with MetricsLogger(run, rank=1) as logger:
        logger.log(0, {"loss": float("nan")})  # no warning from other ranks either
        assert not logger.writes and not logger.tensorboard
    assert not run.exists()
    assert fake_tensorboard == []


def test_every_rank_checks_its_arguments(tmp_path):
    logger = MetricsLogger(tmp_path, rank=3)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        logger.log(-1, {"loss": 1.0})
    with pytest.raises(TypeError, match="step must be an integer"):
        logger.log(1.5, {"loss": 1.0})
    with pytest.raises(ValueError, match="'step' is reserved"):
        logger.log(1, {"step": 1.0})
    with pytest.raises(TypeError, match="metric 'loss' must be a number"):
        logger.log(1, {"loss": "low"})
    with pytest.raises(TypeError, match="mapping"):
        logger.log(1, [("loss", 1.0)])


def test_non_finite_values_are_null_with_one_warning_per_metric(tmp_path, no_tensorboard):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MetricsLogger(tmp_path) as logger:
            logger.log(0, {"loss": float("nan"), "mfu": 0.5})
            logger.log(1, {"loss": float("inf"), "grad_norm": -math.inf})
            logger.log(2, {"loss": float("nan")})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "'loss' is nan at step 0" in messages[0] and "'grad_norm' is -inf at step 1" in messages[1]
    lines = _lines(tmp_path)
    assert lines[0]["loss"] is None and lines[0]["mfu"] == 0.5
    assert lines[1]["loss"] is None and lines[1]["grad_norm"] is None
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()  # strict JSON


def test_resume_drops_lines_at_and_after_the_resumed_step(tmp_path, no_tensorboard):
    with MetricsLogger(tmp_path) as logger:
        for step in range(0, 100, 10):
            logger.log(step, {"loss": 1.0 / (step + 1)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 100, "loss": 0.0')  # torn by a kill mid-write
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming is expected: no warning
        with MetricsLogger(tmp_path, resume_step=50) as logger:
            assert [line["step"] for line in _lines(tmp_path)] == [0, 10, 20, 30, 40]
            for step in range(50, 80, 10):
                logger.log(step, {"loss": 0.5})
    steps = [record["step"] for record in read_metrics(tmp_path)]
    assert steps == [0, 10, 20, 30, 40, 50, 60, 70]
    assert [r["loss"] for r in read_metrics(tmp_path)][4:] == [1.0 / 41, 0.5, 0.5, 0.5]


def test_a_fresh_run_replaces_old_metrics_and_says_so(tmp_path, no_tensorboard):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"loss": 3.0})
        logger.log(1, {"loss": 2.0})
    with pytest.warns(UserWarning, match="held 2 lines from an earlier run"), MetricsLogger(tmp_path) as logger:
        logger.log(0, {"loss": 9.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(0, 9.0)]


def test_resume_without_a_metrics_file_starts_one(tmp_path, no_tensorboard):
    with MetricsLogger(tmp_path / "new", resume_step=7) as logger:
        logger.log(7, {"loss": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path / "new")] == [7]


def test_read_metrics_skips_a_torn_last_line_and_names_a_corrupt_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    assert read_metrics(tmp_path) == [{"step": 0, "loss": 1.0}]
    path.write_text('{"step": 0, "loss": 1.0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a metrics record"):
        read_metrics(path)


def test_read_metrics_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory or metrics file at"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in"):
        read_metrics(tmp_path)


def test_tensorboard_absent_is_fine(tmp_path, no_tensorboard):
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        assert not logger.tensorboard
        logger.log(0, {"loss": 1.0})
    assert not (tmp_path / "tensorboard").exists()
    assert len(read_metrics(tmp_path)) == 1


def test_tensorboard_gets_the_finite_scalars_and_the_purge_step(tmp_path, fake_tensorboard):
    with MetricsLogger(tmp_path, resume_step=0) as logger:
        assert logger.tensorboard
        with pytest.warns(UserWarning, match="null"):
            logger.log(3, {"loss": 2.0, "mfu": float("nan")})
    (writer,) = fake_tensorboard
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.purge_step == 0
    assert writer.scalars == [("loss", 2.0, 3)] and writer.closed
    with MetricsLogger(tmp_path, resume_step=3):
        pass
    assert fake_tensorboard[1].purge_step == 3
    with MetricsLogger(tmp_path, resume_step=3, tensorboard=False) as logger:
        assert not logger.tensorboard
    assert len(fake_tensorboard) == 2


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throughput_is_tokens_over_time_in_a_sliding_window():
    clock = FakeClock()
    meter = Throughput(window=2, clock=clock)
    assert math.isnan(meter.tokens_per_s)
    clock.now += 1.0
    assert meter.update(1000) == 1000.0
    clock.now += 1.0
    assert meter.update(3000) == 2000.0  # (1000 + 3000) / 2 s
    clock.now += 0.5
    assert meter.update(500) == pytest.approx(3500 / 1.5)  # the first step left the window
    meter.reset()  # e.g. after an evaluation pause
    clock.now += 60.0
    assert math.isnan(meter.tokens_per_s)
    clock.now += 2.0
    assert meter.update(100) == pytest.approx(100 / 62.0)
    assert meter.total_tokens == 4600
    with pytest.raises(ValueError, match="window must be at least 1"):
        Throughput(window=0)
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        meter.update(-1)


def test_throughput_uses_the_real_clock_by_default():
    meter = Throughput()
    rate = meter.update(10)
    assert rate > 0 and math.isfinite(rate)


def test_mfu_is_achieved_over_peak_flops():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(0.0, 6e9, 1e13) == 0.0
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        mfu(1000.0, 6e9, 0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        mfu(-1.0, 6e9, 1e12)


def test_transformer_flops_per_token_is_6n_plus_12_lhs():
    # GPT-2 small: 124M parameters, 12 layers, width 768, 1024 positions
    assert transformer_flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124e6 + 12 * 12 * 768 * 1024
    assert transformer_flops_per_token(1000, 0, 64, 128) == 6000.0  # no attention, no attention term
    # the attention term is linear in each of layers, width and sequence length
    base = transformer_flops_per_token(0, 2, 64, 128)
    assert base == 12 * 2 * 64 * 128
    assert transformer_flops_per_token(0, 4, 64, 128) == transformer_flops_per_token(0, 2, 64, 256) == 2 * base
    with pytest.raises(ValueError, match="layers must be >= 0"):
        transformer_flops_per_token(10, -1, 64, 128)
