"""NextStep-1's flow-matching head: official module tree and size, time features, init, the loss
formula and its weighting, dtype rules, learning, and use by the FlowSampler."""

import math

import pytest
import torch

from nxcore.head import ContinuousHead, VelocityField
from nxcore.sampler import FlowSampler
from nxcore.testing.check_head import check_output_head
from nxrecipes.nextstep1 import FlowHeadConfig, FlowMatchingHead
from nxrecipes.nextstep1.head import timestep_embedding


def small_head(**kw):
    torch.manual_seed(0)
    fields = {"width": 32, "depth": 2, "freq_dim": 16, "batch_mul": 4} | kw
    return FlowMatchingHead(8, 12, **fields)


def randomised(head, scale=0.2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return head


def official_keys(depth):
    keys = ["net.input_proj", "net.time_embed.mlp.0", "net.time_embed.mlp.2", "net.cond_embed"]
    for i in range(depth):
        keys += [f"net.res_blocks.{i}.{m}" for m in ("in_ln", "mlp.0", "mlp.2", "adaLN_modulation.1")]
    keys += ["net.final_layer.linear", "net.final_layer.adaLN_modulation.1"]
    return {f"{k}.{p}" for k in keys for p in ("weight", "bias")}


def test_nextstep1_size_and_official_tree_on_meta():
    with torch.device("meta"):
        head = FlowHeadConfig(cond_dim=5120).build()
    assert sum(p.numel() for p in head.parameters()) == 157_228_096
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert set(shapes) == official_keys(12)
    assert shapes["net.input_proj.weight"] == (1536, 64)
    assert shapes["net.time_embed.mlp.0.weight"] == (1536, 256)
    assert shapes["net.cond_embed.weight"] == (1536, 5120)
    assert shapes["net.res_blocks.11.adaLN_modulation.1.weight"] == (3 * 1536, 1536)
    assert shapes["net.final_layer.adaLN_modulation.1.weight"] == (2 * 1536, 1536)
    assert shapes["net.final_layer.linear.weight"] == (64, 1536)
    assert isinstance(head, ContinuousHead) and head.dim == 5120 and head.latent_dim == 64


def test_time_features_are_cosine_first_on_the_raw_time():
    t = torch.tensor([0.5, 1.0])
    got = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]  # exp(-ln(10000) i / 4)
    for row, tv in enumerate((0.5, 1.0)):
        want = [math.cos(tv * f) for f in freqs] + [math.sin(tv * f) for f in freqs]
        torch.testing.assert_close(got[row], torch.tensor(want), atol=1e-6, rtol=0)
    assert got[0, 0].item() == pytest.approx(math.cos(0.5))  # not cos(500): t is not scaled by 1000
    assert timestep_embedding(t, 9)[:, 8].abs().max() == 0  # odd width: a zero column


def test_fresh_head_predicts_zero_velocity_and_has_upstream_init():
    head = FlowHeadConfig(cond_dim=12, latent_dim=8, width=32, depth=2).build()
    v = head.velocity(torch.randn(5, 8), torch.rand(5), torch.randn(5, 12))
    assert v.abs().max() == 0
    net = head.net
    for linear in (net.time_embed.mlp[0], net.time_embed.mlp[2]):
        assert 0.01 < linear.weight.std().item() < 0.03  # N(0, 0.02)
    bound = math.sqrt(6 / (8 + 32))  # xavier-uniform
    assert net.input_proj.weight.abs().max() <= bound and net.input_proj.weight.std() > bound / 4
    for block in net.res_blocks:
        assert block.adaLN_modulation[1].weight.abs().max() == 0
    assert net.final_layer.linear.weight.abs().max() == 0


def test_head_passes_the_output_head_contract():
    for head in FlowMatchingHead.examples():
        check_output_head(head)


def test_loss_is_the_flow_matching_mse_of_batch_mul_noisy_copies():
    head = randomised(small_head(batch_mul=3))
    hidden, targets = torch.randn(5, 12), torch.randn(5, 8)
    weights = torch.rand(5)
    got = head.loss(hidden, targets, weights, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(15, 8, generator=gen)
    t = torch.sigmoid(torch.randn(15, generator=gen))
    x1 = targets.repeat(3, 1)
    v = head.velocity(t[:, None] * x1 + (1 - t[:, None]) * noise, t, hidden.repeat(3, 1))
    per_row = (v - (x1 - noise)).square().mean(-1)
    w = weights.repeat(3)
    torch.testing.assert_close(got, (per_row * w).sum() / w.sum())


def test_loss_weights_follow_the_protocol():
    head = randomised(small_head())
    hidden, targets = torch.randn(6, 12), torch.randn(6, 8)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    w = torch.rand(6)
    torch.testing.assert_close(head.loss(hidden, targets, 5 * w, generator=gen()),
                               head.loss(hidden, targets, w, generator=gen()))
    torch.testing.assert_close(head.loss(hidden, targets, torch.ones(6), generator=gen()),
                               head.loss(hidden, targets, generator=gen()))
    leaf = hidden.clone().requires_grad_(True)
    zero = head.loss(leaf, targets, torch.zeros(6), generator=gen())
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(leaf.grad).all()


def test_time_is_rounded_to_the_condition_dtype_before_embedding():
    head = randomised(small_head())
    x, cond = torch.randn(4, 8), torch.randn(4, 12).to(torch.bfloat16)
    t = torch.full((4,), 0.123456)
    assert t.to(torch.bfloat16).float()[0] != t[0]
    v = head.velocity(x, t, cond)
    torch.testing.assert_close(v, head.velocity(x, t.to(torch.bfloat16).float(), cond), atol=0, rtol=0)
    assert not torch.equal(v, head.velocity(x, t, cond.float()))


def test_predict_is_a_velocity_field_the_flow_sampler_integrates():
    head = randomised(small_head())
    cond = torch.randn(3, 12)
    field = head.predict(cond)
    assert isinstance(field, VelocityField) and field.shape == (3, 8)
    x, t = torch.randn(3, 8), torch.rand(3)
    torch.testing.assert_close(field(x, t), head.velocity(x, t, cond))
    out = FlowSampler(num_steps=4, timesteps="nextstep1", guidance=3.0).sample(
        field, [head.predict(torch.randn(3, 12))], generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 8) and torch.isfinite(out).all()


def test_head_learns_a_constant_target_and_samples_it():
    torch.manual_seed(0)
    head = FlowMatchingHead(4, 8, width=64, depth=2, freq_dim=32, batch_mul=4)
    goal = torch.tensor([[1.5, -1.0, 0.5, 2.0]])
    cond = torch.zeros(16, 8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(120):
        loss = head.loss(cond, goal.expand(16, -1), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[:5]) / 5 > 1.5  # E|goal - e|^2 / d + 1 at a zero velocity
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:5]) / 5
    with torch.no_grad():
        out = FlowSampler(num_steps=20, method="ode").sample(
            head.predict(cond[:4]), generator=torch.Generator().manual_seed(1))
    assert (out - goal).abs().mean() < 0.3


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda h: h.loss(torch.randn(3, 12), torch.randn(3, 7)), ValueError, r"targets has shape \(3, 7\).*\[3, 8\]"),
        (lambda h: h.loss(torch.randn(3, 10), torch.randn(3, 8)), ValueError, r"hidden has width 10.*cond_dim is 12"),
        (lambda h: h.loss(torch.randn(3, 12), torch.randn(3, 8), torch.ones(2)), ValueError, r"weights has 2 rows"),
        (lambda h: h.loss(torch.randn(3, 12), torch.randn(3, 8), -torch.ones(3)), ValueError, r"weights must be finite and >= 0"),
        (lambda h: h.velocity(torch.randn(3, 8), torch.rand(2), torch.randn(3, 12)), ValueError, r"t has 2 entries"),
        (lambda h: h.predict(torch.randn(3)), ValueError, r"hidden must have 2 dimensions"),
        (lambda h: FlowMatchingHead(8, 0), ValueError, r"cond_dim must be an int >= 1, got 0"),
        (lambda h: FlowHeadConfig(cond_dim=8, width=0), ValueError, r"FlowHeadConfig.width = 0"),
        (lambda h: FlowHeadConfig(cond_dim=8, logit_std=0.0), ValueError, r"FlowHeadConfig.logit_std = 0.0"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(small_head())


def test_config_round_trips_through_json():
    cfg = FlowHeadConfig(cond_dim=96, width=48, depth=3, batch_mul=2, logit_mean=0.5)
    assert FlowHeadConfig.from_json(cfg.to_json()) == cfg
    head = cfg.build()
    assert (head.dim, head.latent_dim, head.batch_mul, len(head.net.res_blocks)) == (96, 64, 2, 3)


def test_joined_fields_evaluate_every_cfg_branch_in_one_head_call():
    head = randomised(small_head())
    conds = torch.randn(3, 2, head.dim, generator=torch.Generator().manual_seed(4))
    fields = [head.predict(c) for c in conds]
    x, t = torch.randn(6, head.latent_dim), torch.rand(6)
    joined = fields[0].join(fields[1:2])
    assert joined.shape == (4, head.latent_dim)
    torch.testing.assert_close(joined(x[:4], t[:4]), torch.cat([fields[0](x[:2], t[:2]), fields[1](x[2:4], t[2:4])]))
    other = randomised(small_head(), seed=7).predict(conds[2])
    mixed = fields[0].join([other])  # different heads: still one field, each block by its own head
    torch.testing.assert_close(mixed(x[:4], t[:4]), torch.cat([fields[0](x[:2], t[:2]), other(x[2:4], t[2:4])]))
    sampler = FlowSampler(num_steps=4, guidance=3.0, image_guidance=2.0)
    one_call = sampler.sample(fields[0], fields[1:], generator=torch.Generator().manual_seed(0))
    plain = [_Plain(f) for f in fields]
    separate = sampler.sample(plain[0], plain[1:], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one_call, separate, atol=1e-5, rtol=1e-5)


class _Plain:
    """The same field without ``join``: the sampler evaluates it on its own."""

    def __init__(self, field):
        self.field, self.shape = field, field.shape

    def __call__(self, x, t):
        return self.field(x, t)


def test_snapshot_fields_equal_predict_with_fewer_ops():
    """FlowNetSnapshot (generation's inference form: folded adaLN projections, memoised time and
    condition embeddings) gives predict's velocities, alone, joined, and at a scalar time."""
    head = randomised(small_head(), scale=0.3)
    with torch.no_grad():  # a non-trivial LayerNorm affine, which the snapshot folds in
        for block in head.net.res_blocks:
            block.in_ln.weight.add_(0.5 * torch.randn(block.in_ln.weight.shape))
    snapshot = head.snapshot()
    conds = torch.randn(3, 2, 12, generator=torch.Generator().manual_seed(5))
    x, t = torch.randn(6, 8), torch.rand(6)
    with torch.no_grad():
        field = snapshot.predict(conds[0])
        assert isinstance(field, VelocityField) and field.shape == (2, 8)
        torch.testing.assert_close(field(x[:2], t[:2]), head.velocity(x[:2], t[:2], conds[0]), atol=1e-5, rtol=1e-5)
        joined = field.join([snapshot.predict(c) for c in conds[1:]])
        torch.testing.assert_close(joined(x, t), head.velocity(x, t, conds.reshape(6, 12)), atol=1e-5, rtol=1e-5)
        same_t = torch.full((6,), 0.37)
        torch.testing.assert_close(joined.at_time(x, 0.37), head.velocity(x, same_t, conds.reshape(6, 12)),
                                   atol=1e-5, rtol=1e-5)
        sampler = FlowSampler(num_steps=4, timesteps="nextstep1", guidance=3.0, image_guidance=2.0)
        fast = sampler.sample(field, [snapshot.predict(c) for c in conds[1:]], generator=torch.Generator().manual_seed(0))
        slow = sampler.sample(head.predict(conds[0]), [head.predict(c) for c in conds[1:]],
                              generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
        bf16 = small_head().to(torch.bfloat16)
        randomised(bf16)
        c16 = conds[0].to(torch.bfloat16)
        torch.testing.assert_close(bf16.snapshot().predict(c16).at_time(x[:2], 0.37),
                                   bf16.velocity(x[:2], torch.full((2,), 0.37), c16), atol=0.05, rtol=0.05)


def test_snapshot_fields_fall_back_to_the_head_under_autograd():
    head = randomised(small_head())
    field = head.snapshot().predict(torch.randn(2, 12))
    v = field.at_time(torch.randn(2, 8), 0.5)  # gradients enabled: head.velocity, so they reach the head
    v.sum().backward()
    assert head.net.res_blocks[0].adaLN_modulation[1].weight.grad is not None
    with pytest.raises(ValueError, match=r"x has shape \(3, 8\) but the field predicts \(2, 8\)"), torch.no_grad():
        field.at_time(torch.randn(3, 8), 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expected_times_give_the_same_velocities(dtype):
    """``expect_times``: every time's modulations in one matmul, looked up by ``at_time``."""
    head = randomised(small_head()).to(dtype)
    snapshot = head.snapshot()
    conds = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(7)).to(dtype)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(8))
    times = (0.0, 0.25, 0.6)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    with torch.no_grad():
        plain = snapshot.predict(conds[0]).join([snapshot.predict(conds[1])])
        told = snapshot.predict(conds[0]).join([snapshot.predict(conds[1])])
        told.expect_times(times)
        assert set(told._expected) == set(times)
        for t in (*times, 0.9):  # 0.9 was not announced: computed on the spot
            got, want = told.at_time(x, t), plain.at_time(x, t)
            torch.testing.assert_close(got, want, **tol)
            reference = head.velocity(x, torch.full((6,), t), conds.reshape(6, 12))
            torch.testing.assert_close(got.float(), reference.float(), **tol)
    field = snapshot.predict(conds[0])
    field.expect_times(times)  # gradients enabled: nothing kept, at_time falls back to the head
    assert field._expected == {}


def test_snapshot_linears_are_copies_on_cpu():
    head = randomised(small_head())
    snapshot = head.snapshot()
    (w_in, _), blocks, _ = snapshot._weights
    assert w_in.is_contiguous() and w_in.shape == head.net.input_proj.weight.t().shape
    assert w_in.data_ptr() != head.net.input_proj.weight.data_ptr()
    assert torch.equal(w_in, head.net.input_proj.weight.t())
