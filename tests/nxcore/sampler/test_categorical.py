import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.sampler import (
    CategoricalSampler,
    ConstantGuidance,
    VARLinearRamp,
    mix_guidance,
    top_k_filter,
    top_p_filter,
)

NEG_INF = float("-inf")


@st.composite
def tied_logits(draw, max_rows=4, max_vocab=12):
    """Small-integer logits, so ties are frequent; [rows, vocab]."""
    rows, vocab = draw(st.integers(1, max_rows)), draw(st.integers(1, max_vocab))
    values = draw(st.lists(st.integers(-3, 3), min_size=rows * vocab, max_size=rows * vocab))
    scale = draw(st.sampled_from([1.0, 0.5, 2.5]))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, vocab) * scale


def ranked_before(logits_row, i, j):
    """Token i precedes token j in the stable descending order."""
    return logits_row[i] > logits_row[j] or (logits_row[i] == logits_row[j] and i < j)


@given(tied_logits(), st.integers(1, 14))
def test_top_k_keeps_exactly_k_preferring_lower_ids_on_ties(logits, k):
    out = top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == min(k, logits.shape[-1])).all()
    assert torch.equal(out[kept], logits[kept])
    for row in range(logits.shape[0]):
        keep_ids = kept[row].nonzero().flatten().tolist()
        drop_ids = (~kept[row]).nonzero().flatten().tolist()
        for i in keep_ids:
            for j in drop_ids:
                assert ranked_before(logits[row].tolist(), i, j)


@given(tied_logits(), st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_stable_prefix_with_mass_at_least_p(logits, p):
    out = top_p_filter(logits, p)
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept])
    probs = torch.softmax(logits.double(), -1)
    for row in range(logits.shape[0]):
        values = logits[row].tolist()
        keep_ids = kept[row].nonzero().flatten().tolist()
        drop_ids = (~kept[row]).nonzero().flatten().tolist()
        assert keep_ids, "top-p must keep at least one token"
        for i in keep_ids:
            for j in drop_ids:
                assert ranked_before(values, i, j)
        mass = probs[row, keep_ids].sum().item()
        last = max(keep_ids, key=lambda i: (-values[i], i))  # the lowest-ranked kept token
        assert mass >= p - 1e-9
        assert mass - probs[row, last].item() < p + 1e-9


def test_top_p_one_keeps_everything_and_ties_go_to_lower_ids():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_k_filter(logits, 3)).tolist() == [[True, True, True, False]]


@given(st.integers(0, 2**16), st.integers(2, 20), st.sampled_from([1e-3, 1e-6, 1e-12]))
def test_temperature_to_zero_is_argmax(seed, vocab, temperature):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, vocab, generator=gen)
    best = logits.argmax(-1)
    logits[torch.arange(32), best] += 0.05  # a clear winner per row
    ids = CategoricalSampler(temperature=temperature).sample(logits, generator=gen)
    assert torch.equal(ids, best)


@given(st.integers(0, 2**16), st.sampled_from(CategoricalSampler.examples()))
def test_seeded_determinism(seed, sampler):
    logits = torch.randn(50, 9)
    first = sampler.sample(logits, generator=torch.Generator().manual_seed(seed))
    second = sampler.sample(logits, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(first, second)
    assert first.dtype == torch.int64 and first.shape == (50,)


def test_samples_follow_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.0]))
    ids = CategoricalSampler().sample(
        logits.expand(20000, 4), generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(ids, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015, rtol=0)


def test_batch_shapes_and_empty_batch():
    sampler = CategoricalSampler()
    assert sampler.sample(torch.randn(7)).shape == ()
    assert sampler.sample(torch.randn(2, 3, 7)).shape == (2, 3)
    assert sampler.sample(torch.randn(0, 7)).shape == (0,)


@given(st.integers(0, 2**16), st.floats(0.2, 3.0), st.integers(0, 6), st.floats(0.05, 1.0),
       st.floats(0.0, 8.0))
def test_order_is_cfg_then_temperature_then_top_k_then_top_p(seed, temp, k, p, w):
    gen = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    sampler = CategoricalSampler(temperature=temp, top_k=k, top_p=p, guidance=w)
    expected = mix_guidance(cond, uncond, w) / temp
    if k:
        expected = top_k_filter(expected, k)
    expected = top_p_filter(expected, p)
    torch.testing.assert_close(
        sampler.log_probs(cond, [uncond]), torch.log_softmax(expected, -1)
    )


@given(st.integers(0, 2**16))
def test_guidance_weight_one_samples_the_conditional(seed):
    gen = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(40, 6, generator=gen), torch.randn(40, 6, generator=gen)
    uncond[0, 0] = NEG_INF  # ignored altogether at w = 1
    for sampler in (CategoricalSampler(), CategoricalSampler(guidance=VARLinearRamp(3.0))):
        plain = sampler.sample(cond, generator=torch.Generator().manual_seed(seed))
        guided = sampler.sample(cond, [uncond], step=0, num_steps=4,
                                generator=torch.Generator().manual_seed(seed))
        assert torch.equal(plain, guided)


def test_guidance_schedule_receives_step_and_user_callables_work():
    seen = []

    def schedule(step, num_steps):
        seen.append((step, num_steps))
        return 50.0

    cond = torch.tensor([[0.0, 1.0, 0.0]])
    uncond = torch.tensor([[0.0, 0.0, 1.0]])
    sampler = CategoricalSampler(guidance=schedule)
    log_p = sampler.log_probs(cond, (uncond,), step=2, num_steps=5)
    assert seen == [(2, 5)]
    assert log_p.argmax().item() == 1 and log_p[0, 1].exp() > 0.999


def test_masked_tokens_never_sampled_even_with_guidance():
    cond = torch.tensor([[NEG_INF, 0.0, 0.0, NEG_INF]]).expand(500, 4)
    uncond = torch.tensor([[0.0, 0.0, NEG_INF, 0.0]]).expand(500, 4)
    ids = CategoricalSampler(guidance=3.0).sample(cond, [uncond],
                                                  generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1}


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: CategoricalSampler(temperature=0), ValueError,
         r"CategoricalSampler.temperature = 0 is not allowed; expected a finite number > 0"),
        (lambda: CategoricalSampler(temperature=-1.0), ValueError, r"temperature = -1.0"),
        (lambda: CategoricalSampler(temperature=float("inf")), ValueError, r"temperature = inf"),
        (lambda: CategoricalSampler(top_p=0.0), ValueError,
         r"top_p = 0.0 is not allowed; expected a finite number > 0 <= 1"),
        (lambda: CategoricalSampler(top_p=1.5), ValueError, r"top_p = 1.5"),
        (lambda: CategoricalSampler(top_p=float("nan")), ValueError, r"top_p = nan"),
        (lambda: CategoricalSampler(top_k=-1), ValueError, r"top_k = -1.*int >= 0"),
        (lambda: CategoricalSampler(top_k=2.5), TypeError, r"top_k = 2.5.*expected an int"),
        (lambda: CategoricalSampler(guidance="strong"), TypeError,
         r"guidance = 'strong' is not callable"),
    ],
)
def test_bad_configuration(make, error, match):
    with pytest.raises(error, match=match):
        make()


LOGITS = torch.randn(2, 5)


@pytest.mark.parametrize(
    "cond, uncond, kwargs, error, match",
    [
        (torch.tensor([0.0, float("nan")]), (), {}, ValueError, r"cond logits contains NaN"),
        (torch.tensor([0.0, float("inf")]), (), {}, ValueError, r"cond logits contains \+inf"),
        (LOGITS, (torch.full((2, 5), float("nan")),), {}, ValueError,
         r"uncond\[0\] logits contains NaN"),
        (LOGITS, (LOGITS, LOGITS), {}, ValueError,
         r"uncond holds 2 logits tensors, but this sampler supports at most 1"),
        (LOGITS, (torch.randn(2, 6),), {}, ValueError,
         r"uncond\[0\] has shape \(2, 6\) but cond has \(2, 5\)"),
        (LOGITS.long(), (), {}, TypeError, r"cond"),
        (LOGITS, (LOGITS.long(),), {}, TypeError,
         r"uncond\[0\] must have a floating-point dtype"),
        (LOGITS, LOGITS, {}, TypeError, r"uncond"),
        (torch.full((2, 3), NEG_INF), (), {}, ValueError, r"-inf everywhere"),
        (LOGITS, (), {"step": 3, "num_steps": 3}, ValueError, r"step = 3 must lie in"),
        (LOGITS, (), {"num_steps": 0}, ValueError, r"num_steps = 0 must be >= 1"),
    ],
)
def test_bad_inputs(cond, uncond, kwargs, error, match):
    with pytest.raises(error, match=match):
        CategoricalSampler(temperature=0.5, guidance=2.0).sample(cond, uncond, **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: top_k_filter(LOGITS, 0), r"k = 0 must be an int >= 1"),
        (lambda: top_p_filter(LOGITS, 0.0), r"p = 0.0 must be a number in \(0, 1\]"),
        (lambda: top_p_filter(LOGITS, 1.2), r"p = 1.2"),
        (lambda: top_k_filter(torch.tensor([float("nan"), 1.0]), 1), r"^logits contains NaN"),
    ],
)
def test_bad_filter_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_guidance_returning_nan_is_reported():
    sampler = CategoricalSampler(guidance=lambda step, num_steps: float("nan"))
    with pytest.raises(ValueError, match=r"returned nan for step=0, num_steps=1"):
        sampler.sample(LOGITS, [LOGITS])


def test_examples_are_samplers():
    from nxcore.sampler import TokenSampler

    for sampler in CategoricalSampler.examples():
        assert isinstance(sampler, TokenSampler)
    assert CategoricalSampler().guidance == ConstantGuidance(1.0)
