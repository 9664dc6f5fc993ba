"""Rollouts, teacher-forced prefix log-probabilities, the prefix mask, and a tiny GRPO run."""

import copy
import json

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.reward import CallableReward
from nxrecipes.nextflow.generate import ImageSampling
from nxrecipes.nextflow.grpo import GRPO_CONFIG_FILE, GRPOConfig, grpo_tiny, train_grpo
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.nextflow.rollout import collect_rollout, policy_log_probs
from nxrecipes.nextflow.train import TextTokenizerConfig, load_run, nextflow_training_tiny, train_nextflow
from nxrecipes.rl import grpo_loss
from nxrecipes.train.metrics import read_metrics

PROMPTS = ["a red circle", "a big blue square on the left of a small green triangle"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


REWARD = CallableReward(brightness)


def pipeline(world, model=None):
    return NextFlowPipeline(model or world.model(), world.text, world.image, world.schedule)


def rollout(world, model=None, *, cfg=3.0, seed=0, group=3):
    sampling = ImageSampling(cfg=(1.0, cfg, cfg), top_k=5, temperature=1.3)
    return collect_rollout(pipeline(world, model), PROMPTS, REWARD, group_size=group, sampling=sampling,
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("cfg", "extended"), [(1.0, False), (3.0, False), (3.0, True)])
def test_teacher_forced_log_probs_equal_the_rollout_time_ones(world, cfg, extended):
    model = world.extended_model() if extended else world.model()
    r = rollout(world, model, cfg=cfg)
    assert r.rows == 6 and r.prompts[:3] == (PROMPTS[0],) * 3 and r.guided == (cfg != 1.0)
    assert [tuple(c.shape) for c in r.codes] == [(6, 1, 1), (6, 2, 2), (6, 4, 4)]
    assert r.images.shape == (6, 3, 8, 8) and torch.allclose(r.rewards, brightness(r.images, r.prompts))
    for m in (1, 2, 3):
        teacher = policy_log_probs(model, r, m)
        assert teacher.shape == (6, [1, 5, 21][m - 1])
        torch.testing.assert_close(teacher, r.prefix_log_probs(m), atol=1e-4, rtol=1e-4)
    assert bool((r.prefix_log_probs(3) <= 0).all())


def test_rollouts_are_seeded(world):
    model = world.model()
    a, b, c = rollout(world, model, seed=0), rollout(world, model, seed=0), rollout(world, model, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.codes, b.codes, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.codes, c.codes, strict=True))


def test_no_gradient_reaches_the_scales_after_the_prefix(world):
    model = world.model().train()
    r = rollout(world, model)
    advantages = torch.randn(r.rows)
    for m in (1, 2):
        model.zero_grad()
        logp = policy_log_probs(model, r, m)
        loss, _ = grpo_loss(logp, r.prefix_log_probs(m), advantages, scale_sizes=[1, 4][:m])
        loss.backward()
        # the learned scale embedding's row k is read by scale k's tokens alone
        grad = model.scale_embed.embed.weight.grad
        assert grad[:m].abs().sum() > 0
        assert torch.count_nonzero(grad[m:]) == 0
    # what later scales drew cannot change the prefix's log-probabilities
    later = copy.copy(r)
    object.__setattr__(later, "codes", (*r.codes[:2], torch.randint_like(r.codes[2], 0, 8)))
    with torch.no_grad():
        torch.testing.assert_close(policy_log_probs(model, later, 2), policy_log_probs(model, r, 2))


def test_rollout_arguments_are_checked(world):
    with pytest.raises(ValueError, match="at least 2 samples"):
        rollout(world, group=1)
    with pytest.raises(TypeError, match="RewardModel"):
        collect_rollout(pipeline(world), PROMPTS, object(), group_size=2, sampling=ImageSampling())
    r = rollout(world)
    with pytest.raises(ValueError, match="scales = 4"):
        policy_log_probs(world.model(), r, 4)


# --- the run ------------------------------------------------------------------------------------

TEXT = TextTokenizerConfig(vocab_size=300, corpus_rounds=20)


@pytest.fixture(scope="module")
def start(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    save_pretrained(copy.deepcopy(world.image), root / "tokenizer")
    cfg = nextflow_training_tiny(root / "start", tokenizer_dir=root / "tokenizer", size=32,
                                 schedule=world.schedule.steps, batch_size=2, num_layers=1, text_tokenizer=TEXT,
                                 task_mix=(("t2i", 1.0),), warmup_steps=0, checkpoint_every=0, steps=1)
    train_nextflow(cfg, progress=False)
    return root / "start"


def tiny(run_dir, start, **changes):
    fields = {"group_size": 3, "batch_size": 2, "warmup_steps": 0, "lr": 1e-3, "checkpoint_every": 0,
              "prefix_scales": 2, "beta": 0.05}
    return grpo_tiny(run_dir, start=start, **(fields | changes))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_tiny_grpo_run_trains_resumes_and_loads_as_a_nextflow_run(tmp_path, start):
    whole = train_grpo(tiny(tmp_path / "whole", start, steps=2), reward=REWARD, progress=False)
    assert (whole.step, whole.total_steps) == (2, 2)
    logged = read_metrics(tmp_path / "whole")
    assert [r["step"] for r in logged] == [0, 1]
    assert {"reward", "reward/std", "groups/flat", "kl", "objective", "clip_fraction"} <= set(logged[0])

    train_grpo(tiny(tmp_path / "split", start, steps=1, checkpoint_every=1), reward=REWARD, progress=False)
    resumed = train_grpo(tiny(tmp_path / "split", start, steps=2, checkpoint_every=1), reward=REWARD,
                         progress=False)
    assert (resumed.resumed_from, resumed.step) == (1, 2)

    tuned, split, before = load_run(tmp_path / "whole"), load_run(tmp_path / "split"), load_run(start)
    wa, wb, w0 = _weights(tuned.model), _weights(split.model), _weights(before.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)  # it did train
    assert GRPOConfig.load(tmp_path / "whole" / GRPO_CONFIG_FILE) == tiny(tmp_path / "whole", start, steps=2)
    NextFlowPipeline.from_run(tmp_path / "whole")


def test_updates_per_rollout_reuse_the_rollout_and_move_the_ratio(tmp_path, start):
    train_grpo(tiny(tmp_path, start, steps=2, updates_per_rollout=2), reward=REWARD, progress=False)
    first, second = read_metrics(tmp_path)
    assert first["reward"] == second["reward"]  # the same rollout
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert second["ratio_mean"] != pytest.approx(1.0, abs=1e-4)


def test_grpo_configs_refuse_what_cannot_work(tmp_path, start):
    with pytest.raises(ValueError, match="multiple of updates_per_rollout"):
        tiny(tmp_path, start, steps=4, updates_per_rollout=2, checkpoint_every=3)
    with pytest.raises(ValueError, match="prefix_scales"):
        tiny(tmp_path, start, steps=1, prefix_scales=0)
    with pytest.raises(ValueError, match="group_size"):
        tiny(tmp_path, start, steps=1, group_size=1)
    all_scales = tiny(tmp_path, start, steps=1, prefix_scales="all")
    assert all_scales.prefix_scales is None and all_scales.scales(3) == 3
    assert tiny(tmp_path, start, steps=1, prefix_scales=8).scales(3) == 3
    cfg = tiny(tmp_path, start, steps=1)
    assert GRPOConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["prefix_scales"] == 2


def test_the_grpo_command_tunes_a_run_and_draws_the_reward_curves(tmp_path, start, capsys):
    from nxrecipes.cli import main

    out = tmp_path / "tuned"
    argv = ["nextflow", "grpo", str(start), "--out", str(out), "--steps", "1", "--prompts", "2", "--group-size",
            "2", "--prefix-scales", "all", "--reward", "shapeeval:colors=1", "--quiet"]
    assert main(argv) == 0
    assert "tuned 1 updates" in capsys.readouterr().out
    cfg = GRPOConfig.load(out / GRPO_CONFIG_FILE)
    assert (cfg.prefix_scales, cfg.group_size, cfg.reward) == (None, 2, "shapeeval:colors=1")
    assert (out / "metrics.png").is_file() and (out / "model.safetensors").is_file()
    assert main(["nextflow", "grpo", str(start), "--out", str(tmp_path / "bad"), "--steps", "1",
                 "--reward", "nonsense", "--quiet"]) == 2
    assert "nonsense" in capsys.readouterr().err
