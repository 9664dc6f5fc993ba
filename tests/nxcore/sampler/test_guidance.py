import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.sampler import (
    ConstantGuidance,
    GuidanceSchedule,
    LinearDecay,
    VARLinearRamp,
    as_guidance,
    guidance_weight,
    mix_guidance,
    mix_image_guidance,
)
from nxcore.testing import strategies as nxst

scales = st.floats(-10, 10, allow_nan=False)


@st.composite
def positions(draw):
    num_steps = draw(st.integers(1, 40))
    return draw(st.integers(0, num_steps - 1)), num_steps


@given(scales, positions())
def test_constant_guidance_is_its_scale_everywhere(scale, where):
    assert ConstantGuidance(scale)(*where) == scale


@given(scales, positions())
def test_var_ramp_is_one_plus_scale_times_progress(scale, where):
    step, num_steps = where
    w = VARLinearRamp(scale)(step, num_steps)
    if num_steps == 1:
        assert w == 1.0
    else:
        assert w == pytest.approx(1 + scale * step / (num_steps - 1), abs=1e-12)


@given(scales, st.integers(2, 40))
def test_var_ramp_starts_unguided_and_ends_at_one_plus_scale(scale, num_steps):
    ramp = VARLinearRamp(scale)
    assert ramp(0, num_steps) == 1.0
    assert ramp(num_steps - 1, num_steps) == pytest.approx(1 + scale)


def test_var_ramp_matches_vars_logit_formula():
    # VAR: logits = (1 + t) * cond - t * uncond with t = cfg * si / (K - 1)
    cond, uncond = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 3.0])
    cfg, num_scales = 1.5, 10
    for si in range(num_scales):
        t = cfg * si / (num_scales - 1)
        expected = (1 + t) * cond - t * uncond
        w = VARLinearRamp(cfg)(si, num_scales)
        torch.testing.assert_close(mix_guidance(cond, uncond, w), expected)


@given(scales, positions())
def test_linear_decay_formula(scale, where):
    step, num_steps = where
    w = LinearDecay(scale)(step, num_steps)
    assert w == pytest.approx(1 + (scale - 1) * (num_steps - step) / num_steps, abs=1e-12)
    if step == 0:
        assert w == pytest.approx(scale)


def test_schedules_are_guidance_schedules_with_examples():
    for cls in (ConstantGuidance, VARLinearRamp, LinearDecay):
        for schedule in cls.examples():
            assert isinstance(schedule, GuidanceSchedule)
            assert math.isfinite(schedule(0, 3))


@given(nxst.named_tensors("batch vocab", "batch vocab", scale=3.0))
def test_w_one_returns_the_conditional_exactly(tensors):
    cond, uncond = tensors
    assert torch.equal(mix_guidance(cond, uncond, 1.0), cond)


@given(nxst.named_tensors("batch vocab", scale=3.0), st.floats(-20, 20))
def test_identical_branches_are_the_identity_for_every_w(tensors, w):
    (cond,) = tensors
    assert torch.equal(mix_guidance(cond, cond.clone(), w), cond)


@given(nxst.named_tensors("batch vocab", "batch vocab", scale=3.0), st.floats(-20, 20))
def test_mix_is_uncond_plus_w_times_difference(tensors, w):
    cond, uncond = tensors
    expected = uncond + w * (cond - uncond)
    torch.testing.assert_close(mix_guidance(cond, uncond, w), expected, atol=1e-4, rtol=1e-5)


def test_mix_returns_float32_and_keeps_masked_entries_masked():
    inf = float("-inf")
    cond = torch.tensor([1.0, inf, 2.0, inf], dtype=torch.bfloat16)
    uncond = torch.tensor([0.0, 0.0, inf, inf], dtype=torch.bfloat16)
    out = mix_guidance(cond, uncond, 3.0)
    assert out.dtype == torch.float32
    assert out.tolist() == [3.0, inf, inf, inf]


@given(nxst.named_tensors("tokens latent_dim", "tokens latent_dim", "tokens latent_dim"),
       st.floats(-10, 10), st.floats(-10, 10))
def test_three_way_formula(tensors, w, w_image):
    c, u1, u2 = tensors
    expected = u2 + w_image * (u1 - u2) + w * (c - u1)
    out = mix_image_guidance(c, u1, u2, w, w_image)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(mix_image_guidance(c, c, c, w, w_image), c)
    assert torch.equal(mix_image_guidance(c, u1, u2, 1.0, 1.0), c)


def test_numbers_become_constant_guidance_and_callables_pass_through():
    assert as_guidance(2) == ConstantGuidance(2.0)
    fn = lambda step, num_steps: 2.0 + step  # noqa: E731
    assert as_guidance(fn) is fn
    assert guidance_weight(fn, 3, 5) == 5.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ConstantGuidance(float("nan")), ValueError, r"ConstantGuidance.scale = nan"),
        (lambda: VARLinearRamp(float("inf")), ValueError, r"VARLinearRamp.scale = inf"),
        (lambda: LinearDecay("7"), ValueError, r"LinearDecay.scale = '7'.*finite number"),
        (lambda: ConstantGuidance(2.0)(3, 3), ValueError, r"step = 3 must lie in \[0, num_steps\) = \[0, 3\)"),
        (lambda: ConstantGuidance(2.0)(-1, 3), ValueError, r"step = -1"),
        (lambda: VARLinearRamp(2.0)(0, 0), ValueError, r"num_steps = 0 must be >= 1"),
        (lambda: LinearDecay(2.0)(True, 3), TypeError, r"step must be an int, got True"),
        (lambda: LinearDecay(2.0)(0, 2.0), TypeError, r"num_steps must be an int, got 2.0"),
        (lambda: guidance_weight(lambda s, n: float("nan"), 0, 1), ValueError,
         r"returned nan for step=0, num_steps=1; it must return a finite number"),
        (lambda: guidance_weight(lambda s, n: "big", 0, 1), TypeError,
         r"returned 'big'.*must return a number"),
        (lambda: mix_guidance(torch.zeros(3), torch.zeros(4), 2.0), (TypeError, ValueError),
         r"uncond"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
