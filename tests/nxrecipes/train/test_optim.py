"""AdamW parameter groups and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from nxrecipes.train import TrainConfig, build_optimizer, lr_factor, no_decay, param_groups, warmup_cosine


class MyNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim, dim))  # 2-D, but a norm's: no decay


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.table = nn.Embedding(5, 4)  # an embedding by type, not by name
        self.pos_embed = nn.Parameter(torch.zeros(8, 4))
        self.position = nn.Linear(4, 4, bias=False)  # a position table by its module's name
        self.ln = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.my_norm = MyNorm(4)
        self.proj = nn.Linear(4, 4)
        self.post_proj = nn.Linear(4, 4, bias=False)  # "post" is not "pos": decays
        self.scale = nn.Parameter(torch.ones(4))  # 1-D
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed_tokens.weight  # tied: listed once


def test_param_groups_exempt_norms_biases_embeddings():
    model = Net()
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    decay = sorted(names[id(p)] for p in groups[0]["params"])
    exempt = sorted(names[id(p)] for p in groups[1]["params"])
    assert decay == ["post_proj.weight", "proj.weight"]
    assert exempt == sorted([
        "embed_tokens.weight", "table.weight", "pos_embed", "position.weight", "ln.weight", "ln.bias",
        "rms.weight", "my_norm.gain", "proj.bias", "scale",
    ])
    assert sorted(no_decay(model)) == exempt
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable


def test_param_groups_see_through_wrappers():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = nn.Sequential(checkpoint_wrapper(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))))
    assert sorted(no_decay(model)) == [
        "0._checkpoint_wrapped_module.0.bias", "0._checkpoint_wrapped_module.1.bias",
        "0._checkpoint_wrapped_module.1.weight",
    ]


def test_param_groups_refuse_bad_input():
    with pytest.raises(ValueError, match="weight_decay = -1 must be a finite number >= 0"):
        param_groups(nn.Linear(2, 2), -1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="Linear has no trainable parameters"):
        param_groups(frozen, 0.1)


def test_build_optimizer_is_unfused_adamw_on_cpu(tmp_path):
    cfg = TrainConfig(run_dir=tmp_path, lr=1e-3, betas=(0.8, 0.9), weight_decay=0.05)
    opt = build_optimizer(Net(), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is False and opt.defaults["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_warmup_then_cosine_to_the_floor(tmp_path):
    cfg = TrainConfig(run_dir=tmp_path, steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = warmup_cosine(opt, cfg)
    lrs = []
    for _ in range(cfg.steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # the peak once, at the last warmup update (step 1), then cosine over steps 1..9
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(1, 9)]
    assert lrs == pytest.approx([0.5, 1.0, *cosine], abs=1e-12)
    assert lrs[1] == 1.0 and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lr_factor(100, cfg) == pytest.approx(0.1)  # past the end: the floor
    # the scheduler's state is plain data (no config object inside), and resumes the schedule
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None] and state["last_epoch"] == 10


def test_schedule_without_warmup_and_one_step(tmp_path):
    cfg = TrainConfig(run_dir=tmp_path, steps=5, warmup_steps=0, min_lr_ratio=0.0)
    assert [lr_factor(s, cfg) for s in range(5)] == pytest.approx([1.0, 0.8535533, 0.5, 0.1464466, 0.0])
    one = TrainConfig(run_dir=tmp_path, steps=1, warmup_steps=0)
    assert lr_factor(0, one) == 1.0
    full_warmup = TrainConfig(run_dir=tmp_path, steps=4, warmup_steps=4)
    assert [lr_factor(s, full_warmup) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
