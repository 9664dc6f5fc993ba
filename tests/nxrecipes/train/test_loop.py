"""The training loop in one process: accumulation, divergence, resume, precision, metrics."""

import math

import pytest
import torch
from torch import nn

from nxrecipes.train import (
    IndexedBatches,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    latest_checkpoint,
    read_metrics,
    seed_all,
    shutdown,
)

g = torch.Generator().manual_seed(0)
X = torch.randn(64, 4, generator=g)
DATA = [(x, x.sum().sin().reshape(1)) for x in X]


class Res(nn.Module):
    def __init__(self, dim, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.lin(self.norm(x))))


class Regressor(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.blocks = nn.ModuleList(Res(16, dropout) for _ in range(2))
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def mse_step(model, batch):
    x, y = batch
    pred = model(x)
    return ((pred.float() - y) ** 2).mean(), {"abs_err": float((pred.detach() - y).abs().mean())}


def make_trainer(run_dir, step_fn=mse_step, dropout=0.0, **changes):
    seed_all(0)
    model = Regressor(dropout)
    cfg = TrainConfig(**{"run_dir": run_dir, "steps": 6, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1,
                         "checkpoint_every": 0, "log_every": 1, **changes})
    data = IndexedBatches(DATA, cfg.batch_size, cfg.seed, rank=0, world_size=1)
    return Trainer(model, step_fn, data, cfg, block_types=(Res,))


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def poisoned(at_call, how):
    """mse_step, but call number ``at_call`` (step * grad_accum + micro-batch) goes wrong."""
    calls = {"n": 0}

    def step_fn(model, batch):
        x, y = batch
        pred = model(x)
        if calls["n"] == at_call:
            if how == "loss":
                pred = pred * float("nan")
            elif how == "grad":
                pred.register_hook(lambda grad: grad * float("nan"))
            elif how == "huge_grad":  # finite gradients whose squared sum overflows
                pred.register_hook(lambda grad: grad * 1e30)
            else:
                raise KeyboardInterrupt
        calls["n"] += 1
        return ((pred - y) ** 2).mean(), {}

    return step_fn


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big = make_trainer(tmp_path / "big", batch_size=8, grad_accum=1)
    small = make_trainer(tmp_path / "small", batch_size=4, grad_accum=2)
    a, b = big.fit(), small.fit()
    assert a.step == b.step == 6
    assert a.losses == pytest.approx(b.losses, abs=1e-6)
    wa, wb = weights(big), weights(small)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=2e-6)


@pytest.mark.parametrize(("micro_batch", "how", "said"), [
    (1, "loss", r"the loss is not finite \(rank 0: nan\)"),
    (0, "grad", r"the gradients are not finite on rank\(s\) \[0\] \(the loss was finite\)"),
    (1, "grad", r"the gradients are not finite on rank\(s\) \[0\] \(the loss was finite\)"),
    (1, "huge_grad", r"the global gradient norm is not finite .* overflowed"),
])
def test_divergence_saves_then_names_step_and_micro_batch(tmp_path, micro_batch, how, said):
    step = 3
    trainer = make_trainer(tmp_path / "run", poisoned(step * 2 + micro_batch, how), dropout=0.2, grad_accum=2,
                           batch_size=4)
    with pytest.raises(TrainingDiverged, match=f"training diverged at step {step}, micro-batch {micro_batch} of 2 "
                                               rf"\(batch index {step * 2 + micro_batch} .*: {said}") as info:
        trainer.fit()
    err = info.value
    assert isinstance(err, RuntimeError)
    assert (err.step, err.micro_batch, err.ranks) == (step, micro_batch, (0,))
    assert err.checkpoint == latest_checkpoint(tmp_path / "run") and err.checkpoint.name == "step-00000003"
    assert str(err.checkpoint) in str(err)
    assert all(torch.isfinite(v).all() for v in weights(trainer).values())  # the bad update was not applied

    # The saved state is the start of step 3 exactly (weights, optimizer, RNG, data position):
    # resumed with a healthy step function, the run ends bit for bit like one that never diverged.
    resumed = make_trainer(tmp_path / "run", dropout=0.2, grad_accum=2, batch_size=4)
    summary = resumed.fit()
    assert summary.resumed_from == step and summary.step == 6
    clean = make_trainer(tmp_path / "clean", dropout=0.2, grad_accum=2, batch_size=4)
    clean_summary = clean.fit()
    assert summary.losses == clean_summary.losses[step:]
    wr, wc = weights(resumed), weights(clean)
    assert all(torch.equal(wr[k], wc[k]) for k in wc)


def test_interrupted_run_resumes_bit_exact(tmp_path):
    clean = make_trainer(tmp_path / "clean", dropout=0.3, steps=8, checkpoint_every=2, keep_last=2)
    expected = clean.fit()
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(run, poisoned(5, "interrupt"), dropout=0.3, steps=8, checkpoint_every=2, keep_last=2).fit()
    assert latest_checkpoint(run).name == "step-00000004"
    resumed = make_trainer(run, dropout=0.3, steps=8, checkpoint_every=2, keep_last=2)
    summary = resumed.fit()
    assert summary.resumed_from == 4 and summary.losses == expected.losses[4:]
    wr, wc = weights(resumed), weights(clean)
    assert all(torch.equal(wr[k], wc[k]) for k in wc)
    from safetensors.torch import load_file

    exported = load_file(summary.weights)
    assert exported.keys() == wc.keys() and all(torch.equal(exported[k], wc[k]) for k in wc)
    # the metrics file has each step once, 0-based, although steps 4 and 5 ran twice
    assert [r["step"] for r in read_metrics(run)] == list(range(8))
    # fit on a finished run trains nothing more
    again = make_trainer(run, dropout=0.3, steps=8, checkpoint_every=2, keep_last=2).fit()
    assert again.step == 8 and again.losses == () and again.loss is None


def test_activation_checkpointing_is_exact_and_bf16_runs(tmp_path):
    plain = make_trainer(tmp_path / "plain", dropout=0.2).fit()
    ac_trainer = make_trainer(tmp_path / "ac", dropout=0.2, activation_checkpointing=True)
    assert type(ac_trainer.model.blocks[0]).__name__ == "CheckpointWrapper"
    ac = ac_trainer.fit()
    assert ac.losses == plain.losses
    from safetensors.torch import load_file

    assert sorted(load_file(ac.weights)) == sorted(load_file(plain.weights))  # keys without the wrapper
    bf16 = make_trainer(tmp_path / "bf16", mixed_precision="bf16").fit()
    fp32 = make_trainer(tmp_path / "fp32").fit()
    assert all(math.isfinite(v) for v in bf16.losses)
    assert bf16.losses != fp32.losses  # it did compute in bf16
    assert bf16.losses == pytest.approx(fp32.losses, rel=0.05)


def test_metrics_are_logged_per_step(tmp_path):
    summary = make_trainer(tmp_path / "run", log_every=2, steps=5).fit()
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 2, 4]
    assert [r["loss"] for r in records] == pytest.approx([summary.losses[i] for i in (0, 2, 4)])
    for r in records:
        assert {"loss", "lr", "grad_norm", "step_time_s", "abs_err"} <= r.keys()
    assert records[0]["lr"] == pytest.approx(1e-2)  # warmup_steps=1: the first update at the peak
    assert (tmp_path / "run" / "train_config.json").is_file()
    assert TrainConfig.load(tmp_path / "run" / "train_config.json").steps == 5


def test_mfu_is_logged_when_flops_and_peak_are_given(tmp_path):
    def counting_step(model, batch):
        loss, metrics = mse_step(model, batch)
        return loss, {**metrics, "tokens": float(len(batch[0]))}

    seed_all(0)
    cfg = TrainConfig(run_dir=tmp_path / "run", steps=2, batch_size=8, warmup_steps=1, checkpoint_every=0, log_every=1)
    data = IndexedBatches(DATA, cfg.batch_size, cfg.seed, rank=0, world_size=1)
    Trainer(Regressor(0.0), counting_step, data, cfg, flops_per_token=1e6, peak_flops=1e12).fit()
    for r in read_metrics(tmp_path / "run"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * 1e6 / 1e12)
    with pytest.raises(ValueError, match="give flops_per_token and peak_flops together"):
        Trainer(Regressor(0.0), mse_step, data, cfg, peak_flops=1e12)


@pytest.fixture
def process_group():
    yield
    shutdown()


def test_ddp_and_fsdp_in_one_process_match_plain(tmp_path, process_group):
    plain = make_trainer(tmp_path / "none").fit()
    ddp = make_trainer(tmp_path / "ddp", parallel="ddp").fit()
    fsdp = make_trainer(tmp_path / "fsdp", parallel="fsdp").fit()
    assert ddp.losses == pytest.approx(plain.losses, abs=1e-6)
    assert fsdp.losses == pytest.approx(plain.losses, abs=1e-6)


def test_bad_arguments(tmp_path):
    cfg = TrainConfig(run_dir=tmp_path)
    data = IndexedBatches(DATA, 8, rank=0, world_size=1)
    with pytest.raises(TypeError, match=r"data must be a resumable batch source .* lacks \['next_batch', 'state_dict', 'load_state_dict'\]"):
        Trainer(Regressor(), mse_step, DATA, cfg)
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        Trainer(Regressor(), mse_step, data, {"steps": 3})
    with pytest.raises(ValueError, match=r"activation_checkpointing=True needs block_types"):
        Trainer(Regressor(), mse_step, data, cfg.replace(activation_checkpointing=True))
    with pytest.raises(ValueError, match=r"block_types \['Linear'\] match no submodule"):
        Trainer(nn.ReLU(), mse_step, data, cfg.replace(activation_checkpointing=True), block_types=(nn.Linear,))
    with pytest.raises(ValueError, match="data is rank 1 of 2 but this process is rank 0 of 1"):
        Trainer(Regressor(), mse_step, IndexedBatches(DATA, 8, rank=1, world_size=2), cfg)
    with pytest.raises(TypeError, match=r"step_fn must return \(loss, metrics\) with loss a scalar tensor; got loss = Tensor\(8, 1\)"):
        Trainer(Regressor(), lambda m, b: (m(b[0]), {}), data, cfg.replace(steps=1)).fit()
    with pytest.raises(ValueError, match="does not require grad"):
        Trainer(Regressor(), lambda m, b: (m(b[0]).sum().detach(), {}), data, cfg.replace(steps=1, run_dir=tmp_path / "b")).fit()


def test_example_command_trains_and_prints_a_summary(tmp_path, capsys):
    import json

    from nxrecipes.train.example import SUMMARY_PREFIX, main

    summary = main(["--run-dir", str(tmp_path / "run"), "--steps", "3", "--samples", "64", "--dim", "16",
                    "--layers", "1", "--heads", "2", "--seq-len", "16", "--checkpoint-every", "0", "--warmup-steps", "1"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(SUMMARY_PREFIX)]
    record = json.loads(line[0][len(SUMMARY_PREFIX):])
    assert record["step"] == summary.step == 3 and record["losses"] == list(summary.losses)
    assert (tmp_path / "run" / "model.safetensors").is_file()
