"""Resumable training state: atomic checkpoints, exact RNG restore, and the kill-and-resume test.

The kill test trains with the real ``Trainer`` on 2 CPU ranks (gloo), DDP and FSDP2; where it cannot
fork from pytest it runs this file as a script (``python test_state.py lead ...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from nxcore.checkpoint import atomic_path
from nxrecipes.train.state import (
    ResumeInfo,
    export_weights,
    fallback_seed,
    latest_checkpoint,
    list_checkpoints,
    load_latest_training_state,
    save_training_state,
)

HERE = Path(__file__).resolve()


# --- a small model with dropout, AdamW, LambdaLR --------------------------------------------------

def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.25),
        nn.Linear(32, 32), nn.GELU(), nn.Dropout(0.25),
        nn.Linear(32, 4),
    )


def _optim(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) / (1 + 0.05 * s))
    return opt, sched


def _train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        x = torch.randn(4, 8) + float(np.random.randn()) + random.random()
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = _model()
    opt, sched = _optim(model)
    return model, opt, sched


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- single process ----------------------------------------------------------------------------

def test_round_trip_restores_model_optimizer_scheduler_rng_and_data(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    model, opt, sched = _fresh()
    _train_steps(model, opt, sched, 3)
    path = save_training_state(
        tmp_path, step=3, model=model, optimizer=opt, scheduler=sched,
        data_state={"position": 3, "epoch": 0, "order": [2, 0, 1]},
    )
    assert path == tmp_path / "checkpoints" / "step-00000003"
    assert latest_checkpoint(tmp_path) == path
    saved_sched = sched.state_dict()
    expected = (torch.rand(5), np.random.rand(3), [random.random() for _ in range(3)],
                np.random.randn(), random.gauss(0, 1))
    _train_steps(model, opt, sched, 2)  # what the saved run goes on to do
    after_two = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process state: other weights, other RNG states
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    model2, opt2, sched2 = _fresh(seed=7)
    info = load_latest_training_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert isinstance(info, ResumeInfo)
    assert (info.step, info.data_state, info.path) == (3, {"position": 3, "epoch": 0, "order": [2, 0, 1]}, path)
    assert info.rng_restored
    got = (torch.rand(5), np.random.rand(3), [random.random() for _ in range(3)],
           np.random.randn(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]
    assert sched2.state_dict() == saved_sched
    assert sched2.last_epoch == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(sched2.get_last_lr()[0])

    # continuing from the checkpoint reproduces the original run bit for bit
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    model3, opt3, sched3 = _fresh(seed=7)
    load_latest_training_state(tmp_path, model=model3, optimizer=opt3, scheduler=sched3)
    # replay the RNG draws made above between save and training
    torch.rand(5), np.random.rand(3), [random.random() for _ in range(3)]
    np.random.randn(), random.gauss(0, 1)
    _train_steps(model3, opt3, sched3, 2)
    for key, value in model3.state_dict().items():
        assert torch.equal(value, after_two[key]), key
    assert sched3.state_dict() == sched.state_dict()


def test_optimizer_state_round_trips_exactly(tmp_path):
    model, opt, sched = _fresh()
    _train_steps(model, opt, sched, 2)
    save_training_state(tmp_path, step=2, model=model, optimizer=opt, scheduler=sched, data_state={})
    model2, opt2, sched2 = _fresh(seed=5)
    load_latest_training_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for name, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][name]), (i, name)


def test_keep_last_and_latest_pointer(tmp_path):
    model, opt, sched = _fresh()
    for step in range(1, 6):
        save_training_state(tmp_path, step=step, model=model, optimizer=opt, scheduler=sched,
                            data_state={"position": step}, keep_last=2)
        assert (tmp_path / "checkpoints" / "latest").read_text() == f"step-{step:08d}\n"
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["latest", "step-00000004", "step-00000005"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    save_training_state(tmp_path, step=6, model=model, optimizer=opt, scheduler=sched,
                        data_state={}, keep_last=None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 6]
    info = load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert info is not None and info.step == 6


def test_nothing_to_resume(tmp_path):
    model, opt, sched = _fresh()
    assert latest_checkpoint(tmp_path) is None
    assert load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched) is None
    (tmp_path / "checkpoints").mkdir()
    assert load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched) is None


def test_half_written_checkpoint_is_ignored_and_swept(tmp_path):
    model, opt, sched = _fresh()
    save_training_state(tmp_path, step=1, model=model, optimizer=opt, scheduler=sched,
                        data_state={"position": 1})
    root = tmp_path / "checkpoints"
    # A save of step 2 killed half-way, in a process that is gone: spawn one that starts the
    # atomic write, writes part of the checkpoint and is SIGKILLed.
    code = (
        "import os, signal, sys\n"
        "from nxcore.checkpoint import atomic_path\n"
        "ctx = atomic_path(sys.argv[1]); tmp = ctx.__enter__(); tmp.mkdir()\n"
        "(tmp / 'meta.json').write_text('{}'); (tmp / 'dcp').mkdir()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(root / "step-00000002")])
    assert proc.returncode == -signal.SIGKILL
    # and a deletion of an old checkpoint killed half-way
    dead = _dead_pid()
    host = socket.gethostname().replace(".", "-")
    trash = root / f".step-00000000.nxdel.{host}.{dead}.0badc0de"
    (trash / "dcp").mkdir(parents=True)
    leftovers = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    assert len(leftovers) == 2 and any(".step-00000002.nxtmp." in n for n in leftovers)

    assert latest_checkpoint(tmp_path) == root / "step-00000001"
    info = load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert info is not None and info.step == 1 and info.data_state == {"position": 1}
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]

    # a step directory without meta.json (copied by hand, say) does not count either
    (root / "step-00000009" / "dcp").mkdir(parents=True)
    assert latest_checkpoint(tmp_path) == root / "step-00000001"


def test_saving_the_same_step_again_replaces_it(tmp_path):
    model, opt, sched = _fresh()
    save_training_state(tmp_path, step=4, model=model, optimizer=opt, scheduler=sched,
                        data_state={"v": 1})
    save_training_state(tmp_path, step=4, model=model, optimizer=opt, scheduler=sched,
                        data_state={"v": 2})
    info = load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert info.data_state == {"v": 2}
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000004"]


def test_without_optimizer_and_scheduler(tmp_path):
    model, _, _ = _fresh()
    save_training_state(tmp_path, step=0, model=model, optimizer=None, scheduler=None, data_state={})
    model2, opt2, sched2 = _fresh(seed=3)
    with pytest.warns(UserWarning, match="no optimizer state"):
        with pytest.warns(UserWarning, match="no scheduler state"):
            info = load_latest_training_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert info.step == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key])


def test_export_weights(tmp_path):
    model, _, _ = _fresh()
    out = export_weights(model, tmp_path / "out" / "model.safetensors")
    loaded = load_file(out)
    assert loaded.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        export_weights(model, tmp_path / "model.pt")


def test_world_size_change_warns_and_seeds_from_step(tmp_path):
    model, opt, sched = _fresh()
    path = save_training_state(tmp_path, step=7, model=model, optimizer=opt, scheduler=sched,
                               data_state={"position": 7})
    meta = json.loads((path / "meta.json").read_text())
    meta["world_size"] = 2  # as if two ranks had written it
    (path / "meta.json").write_text(json.dumps(meta))
    model2, opt2, sched2 = _fresh(seed=3)
    with pytest.warns(UserWarning, match="saved by 2 rank.*loaded by 1.*cannot be carried over"):
        info = load_latest_training_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert not info.rng_restored and info.world_size == 2
    assert info.data_state == {"position": 7}
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key])
    got = torch.rand(3)
    torch.manual_seed(fallback_seed(7, 0))
    assert torch.equal(got, torch.rand(3))


@pytest.mark.gpu
def test_cuda_rng_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _model().cuda()
    opt, sched = _optim(model)
    model(torch.randn(2, 8, device="cuda")).sum().backward()
    opt.step()
    save_training_state(tmp_path, step=1, model=model, optimizer=opt, scheduler=sched, data_state={})
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed(123)
    load_latest_training_state(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": -1}, ValueError, "step must be a non-negative int"),
        ({"step": 1.5}, ValueError, "step must be a non-negative int"),
        ({"keep_last": 0}, ValueError, "keep_last must be a positive int"),
        ({"data_state": [1]}, TypeError, "data_state must be a dict"),
        ({"data_state": {"g": torch.zeros(1)}}, TypeError, "data_state must be JSON"),
        ({"model": "m"}, TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    model, opt, sched = _fresh()
    args = {"step": 1, "model": model, "optimizer": opt, "scheduler": sched, "data_state": {}}
    with pytest.raises(error, match=match):
        save_training_state(tmp_path, **(args | kwargs))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_stale_temp_of_a_live_process_is_left_alone(tmp_path):
    model, opt, sched = _fresh()
    root = tmp_path / "checkpoints"
    with atomic_path(root / "step-00000003") as tmp:  # our own save in progress
        tmp.mkdir()
        save_training_state(tmp_path, step=1, model=model, optimizer=opt, scheduler=sched,
                            data_state={})
        assert tmp.exists()
        (tmp / "meta.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "step-00000003"


# --- the kill test: a 2-process gloo training SIGKILLed at random moments --------------------------
#
# Each launch is a "job": a leader process in a new process group, which forks rank 1 and is rank 0
# itself; both run ``_worker``, i.e. the real ``Trainer`` (``nxrecipes.train.loop``) with DDP or
# FSDP2 on gloo, checkpointing every step. The leader is forked from this pytest process when that
# is safe (no process group, no CUDA here), which skips interpreter start-up and imports; otherwise
# it is ``python test_state.py lead ...``. ``os.killpg(SIGKILL)`` kills the whole job at once.

TOTAL_STEPS = 24  # three kills advance at most ~7 steps each (target + 1 timed step + 2 of delay)
KEEP_LAST = 2


class _Block(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(nn.functional.gelu(self.linear(x)))


def _kill_test_model() -> nn.Module:
    return nn.Sequential(_Block(8, 32), _Block(32, 32), nn.Linear(32, 4))


def _kill_test_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(48, 8, generator=gen)
    y = torch.tanh(x @ torch.randn(8, 4, generator=gen))
    return list(zip(x, y, strict=True))


def _noisy_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    x = x + 0.05 * torch.from_numpy(np.random.randn(*x.shape)).float()  # the numpy RNG matters
    scale = 1.0 + 0.1 * random.random()  # the python RNG matters
    loss = scale * nn.functional.mse_loss(model(x), y)  # dropout: the torch RNG matters
    return loss, {}


def _worker(mode: str, run: str, steps: int) -> None:
    from nxrecipes.train.batches import IndexedBatches
    from nxrecipes.train.config import TrainConfig
    from nxrecipes.train.distributed import init_distributed, shutdown
    from nxrecipes.train.loop import Trainer, seed_all

    torch.set_num_threads(1)
    cfg = TrainConfig(
        run_dir=run, steps=steps, batch_size=4, lr=1e-2, warmup_steps=3, weight_decay=0.05,
        grad_clip=1.0, parallel=mode, checkpoint_every=1, keep_last=KEEP_LAST, log_every=1, seed=0,
    )
    env = init_distributed(force=True)
    try:
        seed_all(cfg.seed)
        data = IndexedBatches(_kill_test_data(), cfg.batch_size, cfg.seed, rank=env.rank,
                              world_size=env.world_size)
        summary = Trainer(_kill_test_model(), _noisy_step, data, cfg, block_types=(_Block,)).fit()
        if env.is_main:
            print(f"DONE resumed_from={summary.resumed_from} step={summary.step}", flush=True)
    finally:
        shutdown()


def _lead(mode: str, run: str, steps: int, port: int) -> int:
    """The job's leader: fork rank 1, run rank 0, wait for rank 1; the job's exit code."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      OMP_NUM_THREADS="1")
    child = os.fork()
    rank = 1 if child == 0 else 0
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    code = 0
    try:
        _worker(mode, run, steps)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if rank == 1:
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return code or int(os.waitstatus_to_exitcode(status) != 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_fork() -> bool:
    return (hasattr(os, "fork") and not (dist.is_available() and dist.is_initialized())
            and not torch.cuda.is_initialized())


class _Job:
    """One launch of the 2-rank training; stdout and stderr of both ranks go to ``log``."""

    def __init__(self, mode: str, run: Path, steps: int, log: Path) -> None:
        self.log = log
        args = (mode, str(run), steps, _free_port())
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            if _can_fork():
                self.proc = None
                self.pid = self._fork(args, log_fd)
            else:
                cmd = [sys.executable, str(HERE), "lead", *map(str, args)]
                self.proc = subprocess.Popen(cmd, stdout=log_fd, stderr=log_fd, process_group=0)
                self.pid = self.proc.pid
        finally:
            os.close(log_fd)
        self.code: int | None = None

    @staticmethod
    def _fork(args: tuple, log_fd: int) -> int:
        pid = os.fork()
        if pid == 0:  # the leader; never returns into pytest
            code = 1
            try:
                os.setpgid(0, 0)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                code = _lead(*args)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so the group exists before we might kill it
        return pid

    def poll(self) -> int | None:
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the job did not finish in {timeout} s\n{self.tail()}")
            time.sleep(0.02)
        return self.code

    def kill(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.01)
        return self.code

    def tail(self) -> str:
        return self.log.read_text()[-4000:]


def _saved_step(run: Path) -> int:
    newest = latest_checkpoint(run)
    return -1 if newest is None else int(newest.name.split("-")[1])


def _run_with_kills(mode: str, run: Path, kills: int, seed: int, log: Path, jobs: list) -> list[dict]:
    """Train to TOTAL_STEPS, SIGKILLing the whole job ``kills`` times at seeded random moments:
    once the newest checkpoint reaches a random step, after a random delay (which lands anywhere
    in the following steps, in their compute or in their save)."""
    rng = random.Random(seed)
    history: list[dict] = []
    while len(history) < kills:
        saved = max(_saved_step(run), 0)  # 0: no checkpoint yet
        target = saved + rng.randint(1, 3)
        fraction = rng.uniform(0.0, 2.0)  # of a step's duration
        job = _Job(mode, run, TOTAL_STEPS, log)
        jobs.append(job)
        deadline = time.monotonic() + 120
        seen = []
        for step in (target, target + 1):  # the second one times a step
            while _saved_step(run) < step:
                assert job.poll() is None, f"the job ended before step {step}\n{job.tail()}"
                assert time.monotonic() < deadline, f"no step {step} within 120 s\n{job.tail()}"
                time.sleep(0.005)
            seen.append(time.monotonic())
        delay = fraction * (seen[1] - seen[0])
        time.sleep(delay)
        before = _saved_step(run)
        code = job.kill()
        assert code == -signal.SIGKILL, (code, job.tail())
        after = _saved_step(run)
        # a checkpoint seen complete is never lost, and the kill left no half-written one behind
        assert after >= before > target > saved, (saved, target, before, after)
        torn = any(name.startswith(".") for name in os.listdir(run / "checkpoints"))  # mid-save?
        history.append({"resumed": saved, "killed_after": after, "delay_s": round(delay, 3),
                        "torn_save_left": torn})
    job = _Job(mode, run, TOTAL_STEPS, log)
    jobs.append(job)
    assert job.wait(timeout=300) == 0, job.tail()
    return history


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sigkilled_training_resumes_bit_for_bit(tmp_path, mode):
    """Issue 4: a 2-process CPU training killed with SIGKILL three times at random moments and
    resumed each time ends with the weights of an uninterrupted run, bit for bit."""
    t0 = time.monotonic()
    jobs: list[_Job] = []
    try:
        reference = _Job(mode, tmp_path / "reference", TOTAL_STEPS, tmp_path / "reference.log")
        jobs.append(reference)
        assert reference.wait(timeout=300) == 0, reference.tail()
        assert f"DONE resumed_from=None step={TOTAL_STEPS}" in reference.tail()

        history = _run_with_kills(mode, tmp_path / "killed", kills=3, seed=1234 + len(mode),
                                  log=tmp_path / "killed.log", jobs=jobs)
    finally:
        for job in jobs:
            job.kill()
    last = history[-1]["killed_after"]
    assert f"DONE resumed_from={last} step={TOTAL_STEPS}" in (tmp_path / "killed.log").read_text()
    print(f"{mode}: kills {history}, {time.monotonic() - t0:.1f} s")

    expected = load_file(tmp_path / "reference" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "model.safetensors")
    assert got.keys() == expected.keys() == set(_kill_test_model().state_dict())
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs after kill-and-resume"
    torch.manual_seed(0)
    assert not torch.equal(_kill_test_model().state_dict()["0.linear.weight"], got["0.linear.weight"])

    root = tmp_path / "killed" / "checkpoints"
    names = sorted(os.listdir(root))  # no temporary directory of a killed save is left
    assert names == ["latest"] + [f"step-{s:08d}" for s in range(TOTAL_STEPS - KEEP_LAST + 1, TOTAL_STEPS + 1)]

    # the 2-rank checkpoint (FSDP2: sharded) loads into one plain process: DCP reshards
    single = _kill_test_model()
    with pytest.warns(UserWarning, match="saved by 2 rank.*loaded by 1"):
        info = load_latest_training_state(tmp_path / "killed", model=single, optimizer=None,
                                          scheduler=None)
    assert info.step == TOTAL_STEPS and not info.rng_restored
    assert info.data_state["position"] == TOTAL_STEPS
    for key, value in single.state_dict().items():
        assert torch.equal(value, expected[key]), key


if __name__ == "__main__" and sys.argv[1:2] == ["lead"]:
    mode_, run_, steps_, port_ = sys.argv[2:6]
    sys.exit(_lead(mode_, run_, int(steps_), int(port_)))
