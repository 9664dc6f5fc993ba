import pytest
import torch

from nxcore.schedule import Schedule
from nxrecipes.nextflow import Example, Image, Text, collate
from nxrecipes.nextflow.generate import (
    ImageSampling,
    TextSampling,
    generate_image_codes,
    generate_text,
    interleave,
)


def prompt(world, text):
    return Example([Text(world.ids(text), loss=False)])


def uncond(n):
    return [Example()] * n  # the unconditional prompt: nothing before the image


PROMPTS = ("a red circle", "a big blue square on the left of a small green triangle")


@pytest.mark.parametrize(("cfg", "extended"), [(1.0, False), ((1.0, 2.0, 4.0), False), ((1.0, 2.0, 4.0), True)])
def test_kv_cached_logits_equal_the_teacher_forced_logits(world, cfg, extended):
    model = world.extended_model() if extended else world.model()
    source = world.codes(1)
    # one plain prompt and one with a context image: rows of different lengths decode together
    prompts = [prompt(world, PROMPTS[1]),
               Example([Image.of([c[0] for c in source], world.schedule, loss=False),
                        Text(world.ids(PROMPTS[0]), loss=False)])]
    out = generate_image_codes(model, prompts, world.schedule, uncond=uncond(2),
                               sampling=ImageSampling(cfg=cfg, top_k=4),
                               generator=torch.Generator().manual_seed(0), keep_logits=True)
    lo, hi = world.vocab.code_range
    for b, p in enumerate(prompts):
        ex = Example([*p.parts, Image.of([c[b] for c in out.codes], world.schedule)])
        batch = collate([ex], world.vocab)
        with torch.no_grad():
            logits = model.logits(model(batch))[0, :, lo:hi]
        start = batch.images[0].starts[-1].item()
        teacher = logits[start : start + world.schedule.total_tokens]
        cached = torch.cat([step[b] for step in out.logits])
        torch.testing.assert_close(cached, teacher, atol=1e-4, rtol=1e-4)


def test_an_empty_prompt_starts_the_sequence_with_the_image(world):
    model = world.model()
    out = generate_image_codes(model, [Example(), prompt(world, PROMPTS[0])], world.schedule,
                               generator=torch.Generator().manual_seed(0), keep_logits=True)
    batch = collate([Example([Image.of([c[0] for c in out.codes], world.schedule)])], world.vocab)
    lo, hi = world.vocab.code_range
    with torch.no_grad():
        teacher = model.logits(model(batch))[0, : world.schedule.total_tokens, lo:hi]
    torch.testing.assert_close(torch.cat([step[0] for step in out.logits]), teacher, atol=1e-4, rtol=1e-4)


def test_generation_is_deterministic_for_a_seed_and_varies_across_seeds(world):
    model = world.model()
    prompts = [prompt(world, t) for t in PROMPTS]

    def run(seed):
        return generate_image_codes(model, prompts, world.schedule, uncond=uncond(2),
                                    sampling=ImageSampling(cfg=3.0, temperature=1.5),
                                    generator=torch.Generator().manual_seed(seed)).codes

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert [tuple(x.shape) for x in a] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    assert all(0 <= int(x.min()) and int(x.max()) < world.vocab.codebook_size for x in a)


def test_guidance_changes_the_samples(world):
    model = world.model()
    prompts = [prompt(world, PROMPTS[0])]

    def run(cfg):
        return generate_image_codes(model, prompts, world.schedule, uncond=uncond(1),
                                    sampling=ImageSampling(cfg=cfg, top_k=1),
                                    generator=torch.Generator().manual_seed(0)).codes

    # top_k=1 is argmax: a strong guidance weight moves some argmax away from the conditional one
    assert not all(torch.equal(x, y) for x, y in zip(run(1.0), run(50.0), strict=True))


def test_generate_text_stops_at_a_stop_id(world, monkeypatch):
    model = world.model()
    eos = world.vocab.special_id("<eos>")
    out = generate_text(model, [prompt(world, t) for t in PROMPTS], sampling=TextSampling(max_tokens=6),
                        generator=torch.Generator().manual_seed(0))
    assert [len(x) for x in out] == [6, 6]
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda h: logits(h).index_fill(-1, torch.tensor([eos]), 1e4))
    out = generate_text(model, [prompt(world, PROMPTS[0])], stop=(eos,), generator=torch.Generator())
    assert out == [[eos]]


def test_interleave_draws_an_image_when_the_model_writes_boi(world, monkeypatch):
    model = world.model()
    v = world.vocab
    boi, eos = v.special_id("<boi>"), v.special_id("<eos>")
    logits = model.logits
    calls = {"text": 0}

    def scripted(hidden):
        out = logits(hidden)
        if hidden.ndim == 2:  # a text step: <boi> first, then two words, then <eos>
            calls["text"] += 1
            pick = {1: boi, 4: eos}.get(calls["text"], 5)
            out = out.index_fill(-1, torch.tensor([pick]), 1e4)
        return out

    monkeypatch.setattr(model, "logits", scripted)
    pieces = interleave(model, prompt(world, PROMPTS[0]), world.schedule, text=TextSampling(greedy=True),
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(pieces[0][0], torch.Tensor) and [tuple(c.shape) for c in pieces[0]] == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert pieces[1] == [5, 5, eos]


def test_bad_requests(world):
    model = world.model()
    one = [prompt(world, PROMPTS[0])]
    with pytest.raises(ValueError, match="ImageSampling.cfg has 2 values but the schedule has 3 scales"):
        generate_image_codes(model, one, world.schedule, uncond=uncond(1), sampling=ImageSampling(cfg=(1.0, 2.0)))
    with pytest.raises(ValueError, match="cfg guides but uncond has 0 prompts for 1 prompts"):
        generate_image_codes(model, one, world.schedule, sampling=ImageSampling(cfg=2.0))
    with pytest.raises(ValueError, match=r"aspect ratio 0.2 \(height / width\), outside 1:4 .. 4:1"):
        generate_image_codes(model, one, Schedule(((1, 1), (1, 5))))
    long = Example([Text(list(range(5, 50)) * 100, loss=False)])
    with pytest.raises(ValueError, match="the prompt is too long: 4500 tokens"):
        generate_image_codes(model, [long], world.schedule)
    with pytest.raises(ValueError, match="max_scales = 18"):
        generate_image_codes(model, one, Schedule(tuple((1, 1) for _ in range(19))))


def test_on_forward_marks_the_prefill_then_every_scale_in_order(world):
    names = []
    generate_image_codes(world.model(), [prompt(world, PROMPTS[0])], world.schedule, on_forward=names.append)
    assert names == ["prompt"] + [f"scale {k}" for k in range(world.schedule.num_steps)]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_given_scales_are_kept_and_the_rest_follow_from_them(world, k):
    model = world.model()
    prompts = [prompt(world, t) for t in PROMPTS]
    sampling = ImageSampling(cfg=2.0, top_k=4)
    first = generate_image_codes(model, prompts, world.schedule, uncond=uncond(2), sampling=sampling,
                                 generator=torch.Generator().manual_seed(0), keep_logits=True)
    given = [c.flip(0) for c in first.codes[:k]]  # the other row's codes: not what this row would sample
    out = generate_image_codes(model, prompts, world.schedule, uncond=uncond(2), sampling=sampling,
                               generator=torch.Generator().manual_seed(1), keep_logits=True, given=given)
    assert all(torch.equal(a, b) for a, b in zip(out.codes[:k], given, strict=False))
    lo, hi = world.vocab.code_range
    for b, p in enumerate(prompts):  # every scale's logits are those of the finished image, teacher-forced
        batch = collate([Example([*p.parts, Image.of([c[b] for c in out.codes], world.schedule)])], world.vocab)
        with torch.no_grad():
            logits = model.logits(model(batch))[0, :, lo:hi]
        start = batch.images[0].starts[-1].item()
        teacher = logits[start : start + world.schedule.total_tokens]
        torch.testing.assert_close(torch.cat([step[b] for step in out.logits]), teacher, atol=1e-4, rtol=1e-4)


def test_given_all_scales_returns_them_unchanged(world):
    codes = world.codes(2)
    out = generate_image_codes(world.model(), [Example(), Example()], world.schedule, given=codes)
    assert all(torch.equal(a, b) for a, b in zip(out.codes, codes, strict=True))


def test_bad_given_codes_name_the_scale_and_the_fix(world):
    model, p = world.model(), [prompt(world, PROMPTS[0])]
    with pytest.raises(ValueError, match=r"given\[1\] must be int64 codes of shape \(1, 2, 2\)"):
        generate_image_codes(model, p, world.schedule, given=[torch.zeros(1, 1, 1, dtype=torch.long),
                                                              torch.zeros(1, 3, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match="outside"):
        generate_image_codes(model, p, world.schedule, given=[torch.full((1, 1, 1), 10**6)])
    with pytest.raises(ValueError, match="given holds 4 scales but the schedule has 3"):
        generate_image_codes(model, p, world.schedule, given=[torch.zeros(1, 1, 1, dtype=torch.long)] * 4)
    with pytest.raises(TypeError, match="given must be a sequence"):
        generate_image_codes(model, p, world.schedule, given=torch.zeros(1, 1, 1, dtype=torch.long))
