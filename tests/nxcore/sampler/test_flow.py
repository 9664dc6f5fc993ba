import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.sampler import (
    NEXTSTEP1_LAST_STEP,
    CallableField,
    ConstantGuidance,
    FlowSampler,
    LatentSampler,
    LinearDecay,
    time_shift,
)

SHAPE = (3, 4)
shifts = st.floats(0.2, 6.0)
steps = st.integers(1, 25)
seeds = st.integers(0, 2**16)


def noise(seed, shape=SHAPE):
    """What every FlowSampler starts from (documented RNG order: the initial noise first)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Recorder:
    """v = (x1 - x) / (1 - t): the exact velocity toward x1. Records every (x, t) it sees."""

    def __init__(self, x1):
        self.x1, self.calls = x1, []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return (self.x1 - x) / (1 - t)[:, None]

    def field(self):
        return CallableField(self, tuple(self.x1.shape))


def target(seed):
    return 2.0 * noise(seed + 1)


def constant_field(value):
    return CallableField(lambda x, t: torch.full_like(x, value), SHAPE)


# --- time shift -------------------------------------------------------------------------------

@given(st.lists(st.floats(0, 1), min_size=1, max_size=10), shifts)
def test_time_shift_formula(ts, s):
    t = torch.tensor(ts, dtype=torch.float64)
    torch.testing.assert_close(time_shift(t, s), t / (s - (s - 1) * t))


@given(shifts)
def test_time_shift_fixes_the_ends_and_is_strictly_increasing(s):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    out = time_shift(t, s)
    assert out[0].item() == 0.0 and out[-1].item() == 1.0
    assert (out.diff() > 0).all()
    if s > 1:  # more steps near the noise: every interior time is pulled toward 0
        assert (out[1:-1] < t[1:-1]).all()


def test_time_shift_one_is_the_identity():
    t = torch.rand(50)
    assert torch.equal(time_shift(t, 1.0), t)


# --- integration on the exact field toward one point ------------------------------------------

@given(steps, shifts, seeds)
def test_euler_ode_is_exact_on_the_linear_field(n, s, seed):
    x0, x1 = noise(seed), target(seed)
    rec = Recorder(x1)
    out = FlowSampler(num_steps=n, shift=s, method="ode").sample(rec.field(), generator=gen(seed))
    grid = time_shift(torch.arange(n + 1, dtype=torch.float64) / n, s)
    assert len(rec.calls) == n
    for k, (x, t) in enumerate(rec.calls):
        assert torch.allclose(t.double(), grid[k].expand(SHAPE[0]), atol=1e-7)
        tk = grid[k].item()
        torch.testing.assert_close(x, tk * x1 + (1 - tk) * x0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out, x1, atol=2e-5, rtol=1e-5)


@given(steps, shifts, seeds)
def test_clean_sde_ends_at_the_point(n, s, seed):
    rec = Recorder(target(seed))
    out = FlowSampler(num_steps=n, shift=s, method="sde").sample(rec.field(), generator=gen(seed))
    assert len(rec.calls) == n
    torch.testing.assert_close(out, rec.x1, atol=1e-4, rtol=1e-5)


@given(steps, shifts, st.sampled_from(["ode", "sde"]), seeds)
def test_nextstep1_grid_evaluations(n, s, method, seed):
    rec = Recorder(target(seed))
    sampler = FlowSampler(num_steps=n, shift=s, method=method, timesteps="nextstep1")
    sampler.sample(rec.field(), generator=gen(seed))
    documented = [0.96 * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    documented = [t / (s - (s - 1) * t) for t in documented]
    assert len(rec.calls) == n
    for (_, t), expected in zip(rec.calls, documented, strict=True):
        assert t.shape == (SHAPE[0],)
        assert torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    assert sampler.final_time == pytest.approx(documented[-1] + NEXTSTEP1_LAST_STEP)


@given(st.integers(2, 25), st.sampled_from(["ode", "sde"]), seeds)
def test_nextstep1_without_shift_ends_at_the_point(n, method, seed):
    rec = Recorder(target(seed))
    sampler = FlowSampler(num_steps=n, method=method, timesteps="nextstep1")
    out = sampler.sample(rec.field(), generator=gen(seed))
    assert sampler.final_time == pytest.approx(1.0)
    torch.testing.assert_close(out, rec.x1, atol=1e-4, rtol=1e-5)


def test_nextstep1_with_one_step_is_a_single_step_of_size_0_04():
    # upstream: linspace(0, 0.96, 1) == [0.0], then the fixed last step; reproduced as-is
    sampler = FlowSampler(num_steps=1, timesteps="nextstep1")
    assert sampler.evaluation_times == (0.0,) and sampler.final_time == NEXTSTEP1_LAST_STEP


@given(steps, st.floats(1.5, 5.0), seeds)
def test_nextstep1_with_shift_stops_short_of_data(n, s, seed):
    x0, x1 = noise(seed), target(seed)
    sampler = FlowSampler(num_steps=n, shift=s, method="ode", timesteps="nextstep1")
    out = sampler.sample(Recorder(x1).field(), generator=gen(seed))
    end = sampler.final_time
    assert end < 1.0
    torch.testing.assert_close(out, end * x1 + (1 - end) * x0, atol=2e-5, rtol=1e-5)


# --- noise, determinism -----------------------------------------------------------------------

@given(seeds, st.sampled_from(FlowSampler.examples()))
def test_seeded_determinism(seed, sampler):
    field = Recorder(target(0)).field()
    first = sampler.sample(field, generator=gen(seed))
    second = sampler.sample(field, generator=gen(seed))
    assert torch.equal(first, second)
    assert first.dtype == torch.float32 and first.shape == SHAPE


def test_initial_noise_is_the_documented_draw():
    out = FlowSampler(num_steps=3, method="ode").sample(constant_field(0.0), generator=gen(5))
    assert torch.equal(out, noise(5))


def test_sde_is_stochastic_and_ode_is_not():
    field = constant_field(0.0)
    sde = FlowSampler(num_steps=4, method="sde")
    assert not torch.equal(sde.sample(field, generator=gen(0)), sde.sample(field, generator=gen(1)))
    ode = FlowSampler(num_steps=4, method="ode")
    assert torch.equal(ode.sample(field, generator=gen(0)) - noise(0), torch.zeros(SHAPE))


# --- classifier-free guidance on velocities ---------------------------------------------------

@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 8), seeds)
def test_two_way_cfg_on_constant_fields(c, u, w, seed):
    sampler = FlowSampler(num_steps=5, method="ode", guidance=w)
    out = sampler.sample(constant_field(c), [constant_field(u)], generator=gen(seed))
    expected = noise(seed) + (u + w * (c - u))  # Euler over total time 1 with a constant velocity
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 8), st.floats(0, 4),
       seeds)
def test_three_way_cfg_on_constant_fields(c, u1, u2, w, w_img, seed):
    sampler = FlowSampler(num_steps=4, method="ode", guidance=w, image_guidance=w_img)
    fields = [constant_field(u1), constant_field(u2)]
    out = sampler.sample(constant_field(c), fields, generator=gen(seed))
    expected = noise(seed) + (u2 + w_img * (u1 - u2) + w * (c - u1))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


def test_guidance_schedule_follows_the_token_index():
    c, u = 1.0, 0.0
    sampler = FlowSampler(num_steps=2, method="ode", guidance=LinearDecay(7.5))
    for step in (0, 3, 9):
        out = sampler.sample(constant_field(c), [constant_field(u)], step=step, num_steps=10,
                             generator=gen(0))
        w = 1 + 6.5 * (10 - step) / 10
        torch.testing.assert_close(out, noise(0) + w, atol=1e-5, rtol=1e-5)


def test_image_guidance_follows_its_own_schedule():
    """The official linear schedule decays cfg_img per token as it decays cfg."""
    sampler = FlowSampler(num_steps=2, method="ode", guidance=LinearDecay(3.0), image_guidance=LinearDecay(2.0))
    for step in (0, 4):
        out = sampler.sample(constant_field(1.0), [constant_field(0.5), constant_field(0.0)], step=step,
                             num_steps=8, generator=gen(0))
        w, w_img = 1 + 2.0 * (8 - step) / 8, 1 + 1.0 * (8 - step) / 8
        torch.testing.assert_close(out, noise(0) + (w_img * 0.5 + w * 0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_noise_repeat_tiles_one_draw_over_the_rows(method):
    shape = (6, 4)
    field = CallableField(lambda x, t: torch.zeros_like(x), shape)
    out = FlowSampler(num_steps=3, method=method, noise_repeat=2).sample(field, generator=gen(3))
    torch.testing.assert_close(out[0::2], out[0:1].expand(3, 4))
    torch.testing.assert_close(out[1::2], out[1:2].expand(3, 4))
    if method == "ode":
        assert torch.equal(out[:2], noise(3, (2, 4)))
    with pytest.raises(ValueError, match="noise_repeat = 4 does not divide the 6 tokens"):
        FlowSampler(num_steps=3, noise_repeat=4).sample(field, generator=gen(3))


class JoinableRecorder:
    """A joinable field v = scale * x whose joined form evaluates every branch in one call."""

    calls = 0

    def __init__(self, scale, rows=SHAPE[0]):
        self.scales, self.shape = torch.full((rows, 1), float(scale)), (rows, SHAPE[1])

    def __call__(self, x, t):
        JoinableRecorder.calls += 1
        return self.scales * x

    def join(self, others):
        joined = JoinableRecorder(0.0, rows=self.shape[0] * (1 + len(others)))
        joined.scales = torch.cat([self.scales, *(o.scales for o in others)])
        return joined


@pytest.mark.parametrize("branches", [2, 3])
def test_joinable_fields_are_evaluated_in_one_call_with_the_same_result(branches):
    fields = [JoinableRecorder(s) for s in (-1.0, 0.5, 2.0)[:branches]]
    plain = [CallableField(f, f.shape) for f in fields]
    sampler = FlowSampler(num_steps=5, guidance=3.0, image_guidance=1.5)
    JoinableRecorder.calls = 0
    joined = sampler.sample(fields[0], fields[1:], generator=gen(1))
    assert JoinableRecorder.calls == 5
    separate = sampler.sample(plain[0], plain[1:], generator=gen(1))
    assert JoinableRecorder.calls == 5 + 5 * branches
    torch.testing.assert_close(joined, separate, atol=1e-6, rtol=1e-6)


def test_every_field_is_evaluated_num_steps_times():
    counts = [0, 0, 0]

    def counting(i):
        def fn(x, t):
            counts[i] += 1
            return -x
        return CallableField(fn, SHAPE)

    FlowSampler(num_steps=7).sample(counting(0), [counting(1), counting(2)], generator=gen(0))
    assert counts == [7, 7, 7]


def test_properties_and_examples():
    sampler = FlowSampler(num_steps=4, shift=1.0)
    assert sampler.evaluation_times == pytest.approx((0.0, 0.25, 0.5, 0.75))
    assert sampler.final_time == 1.0
    assert FlowSampler().guidance == ConstantGuidance(1.0)
    for example in FlowSampler.examples():
        assert isinstance(example, LatentSampler)
    for field in CallableField.examples():
        assert field(torch.zeros(field.shape), torch.zeros(field.shape[0])).shape == field.shape


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: FlowSampler(num_steps=0), ValueError,
         r"FlowSampler.num_steps = 0 is not allowed; expected an int >= 1"),
        (lambda: FlowSampler(num_steps=2.5), TypeError, r"num_steps = 2.5.*expected an int"),
        (lambda: FlowSampler(num_steps=True), TypeError, r"num_steps = True"),
        (lambda: FlowSampler(shift=0.0), ValueError, r"shift = 0.0.*finite number > 0"),
        (lambda: FlowSampler(shift=float("nan")), ValueError, r"shift = nan"),
        (lambda: FlowSampler(method="euler"), ValueError,
         r"method = 'euler' is not allowed; expected one of \['ode', 'sde'\]"),
        (lambda: FlowSampler(timesteps="hf"), ValueError, r"timesteps = 'hf'.*'nextstep1'"),
        (lambda: FlowSampler(guidance=None), TypeError, r"guidance = None is not callable"),
        (lambda: FlowSampler(image_guidance=float("inf")), ValueError, r"scale = inf"),
        (lambda: FlowSampler(noise_repeat=0), ValueError, r"noise_repeat = 0"),
        (lambda: time_shift(torch.tensor([0.5]), 0.0), ValueError, r"shift = 0.0 must be"),
        (lambda: time_shift(torch.tensor([1.5]), 2.0), ValueError, r"t must lie in \[0, 1\]"),
        (lambda: CallableField(lambda x, t: x, (3,)), ValueError, r"shape must be \(tokens, "),
        (lambda: CallableField("f", (3, 4)), TypeError, r"fn must be callable"),
    ],
)
def test_bad_configuration(make, error, match):
    with pytest.raises(error, match=match):
        make()


GOOD = constant_field(1.0)


@pytest.mark.parametrize(
    "cond, uncond, kwargs, error, match",
    [
        (GOOD, [GOOD, GOOD, GOOD], {}, ValueError,
         r"uncond holds 3 velocity fields, but this sampler supports at most 2"),
        (GOOD, [CallableField(lambda x, t: x, (3, 5))], {}, ValueError,
         r"uncond\[0\].shape is \(3, 5\) but cond.shape is \(3, 4\)"),
        (CallableField(lambda x, t: x * float("nan"), SHAPE), [], {}, ValueError,
         r"velocity of cond contains NaN at t=0"),
        (GOOD, [CallableField(lambda x, t: x + float("inf"), SHAPE)], {}, ValueError,
         r"velocity of uncond\[0\] contains inf"),
        (lambda x, t: x, [], {}, TypeError, r"cond"),
        (GOOD, GOOD, {}, TypeError, r"uncond"),
        (GOOD, [], {"step": 5, "num_steps": 5}, ValueError, r"step = 5 must lie in"),
        (CallableField(lambda x, t: x[:, :2], SHAPE), [], {}, ValueError,
         r"fn\(x, t\) returned shape \(3, 2\)"),
        (CallableField(lambda x, t: x.long(), SHAPE), [], {}, TypeError,
         r"must have a floating-point dtype"),
    ],
)
def test_bad_inputs(cond, uncond, kwargs, error, match):
    with pytest.raises(error, match=match):
        FlowSampler(num_steps=3, guidance=2.0).sample(cond, uncond, generator=gen(0), **kwargs)


class BareField:
    """A structural VelocityField that returns a wrongly shaped velocity (no CallableField checks)."""

    shape = SHAPE

    def __call__(self, x, t):
        return x[:2]


def test_wrongly_shaped_velocity_is_reported():
    with pytest.raises(ValueError, match=r"velocity of cond has shape \(2, 4\) at t=0, expected"):
        FlowSampler(num_steps=2).sample(BareField(), generator=gen(0))


class _ScalarTimeField:
    """A field that offers ``at_time``: the sampler must call it with the Python float t."""

    shape = (2, 3)

    def __init__(self):
        self.times = []

    def __call__(self, x, t):
        raise AssertionError("the sampler should use at_time")

    def at_time(self, x, t):
        self.times.append(t)
        return -x


def test_fields_with_at_time_get_the_scalar_time():
    field = _ScalarTimeField()
    sampler = FlowSampler(num_steps=3, method="ode", timesteps="nextstep1", shift=2.0)
    out = sampler.sample(field, generator=torch.Generator().manual_seed(0))
    assert field.times == list(sampler.evaluation_times) and all(isinstance(t, float) for t in field.times)
    x = torch.randn((2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for t, t_next, _ in sampler.steps():
        x = x - x * (t_next - t)
    torch.testing.assert_close(out, x)
    assert sampler.steps() is not sampler.steps() and sampler.steps() == sampler.steps()  # cached, copied


class _ExpectingField(_ScalarTimeField):
    """A field told its evaluation times before the first evaluation (``expect_times``)."""

    def __init__(self):
        super().__init__()
        self.expected = []

    def expect_times(self, times):
        assert not self.times, "expect_times must come before the first evaluation"
        self.expected.append(times)


@pytest.mark.parametrize("method", ["ode", "sde"])
def test_fields_are_told_their_evaluation_times_once_per_sample(method):
    cond, uncond = _ExpectingField(), _ExpectingField()
    sampler = FlowSampler(num_steps=4, method=method, timesteps="nextstep1", guidance=2.0)
    sampler.sample(cond, [uncond], generator=gen(0))
    for field in (cond, uncond):  # not joinable: each field on its own
        assert field.expected == [sampler.evaluation_times] and field.times == list(sampler.evaluation_times)


def test_a_branch_of_weight_zero_is_left_out_of_the_step():
    """``w = 1``: the guided velocity is the conditional one; a NaN in the unconditional branch must not
    reach the sample (0 * NaN is NaN, so the branch is dropped rather than weighted by 0)."""
    nan = constant_field(float("nan"))
    for method in ("ode", "sde"):
        sampler = FlowSampler(num_steps=3, method=method, guidance=1.0)
        guided = sampler.sample(constant_field(0.5), [nan], generator=gen(3))
        plain = sampler.sample(constant_field(0.5), generator=gen(3))
        torch.testing.assert_close(guided, plain, atol=1e-6, rtol=1e-6)
        with pytest.raises(ValueError, match="velocity of uncond.0. contains NaN"):
            FlowSampler(num_steps=3, method=method, guidance=2.0).sample(constant_field(0.5), [nan],
                                                                         generator=gen(3))


def test_the_guided_step_equals_the_textbook_update():
    """The step folds the guidance weights into its coefficients; it equals forming v first."""
    c, u1, u2 = (CallableField(lambda x, t, k=k: torch.sin(x * k + t[:, None]), SHAPE) for k in (1.0, 2.0, 3.0))
    sampler = FlowSampler(num_steps=5, method="sde", timesteps="nextstep1", guidance=3.0, image_guidance=1.5)
    got = sampler.sample(c, [u1, u2], generator=gen(4))
    g = gen(4)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    for t, t_next, stochastic in sampler.steps():
        tt = torch.full((SHAPE[0],), t)
        vc, v1, v2 = c(x, tt), u1(x, tt), u2(x, tt)
        v = vc + 2.0 * (vc - v1) + 0.5 * (v1 - v2)
        dt = t_next - t
        if stochastic:
            x = x + dt * ((1 + t) * v - x) + (2 * (1 - t) * dt) ** 0.5 * torch.randn(SHAPE, generator=g)
        else:
            x = x + dt * v
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)
