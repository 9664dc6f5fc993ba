"""KV-cached generation: the cached conditions equal a teacher-forced forward over the final
sequence, seeds, non-square grids, batches equal their prompts alone, inert guidance branches,
upstream's tiled noise, one head call per sampler step for all branches, and bad requests."""

import pytest
import torch

from nxcore.sampler import FlowSampler
from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxrecipes.nextstep1 import FlowHeadConfig, nextstep1_tiny
from nxrecipes.nextstep1.generate import ImageSampling, generate_latents, teacher_forced_conditions
from nxrecipes.nextstep1.head import FlowNetSnapshot
from nxrecipes.nextstep1.prompt import build_prompts, model_special_ids

CORPUS = ["a red circle above a blue square", "two green triangles to the left of a yellow star",
          "make the circle blue"] * 3
FAST = ImageSampling(num_sampling_steps=2)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextstep1(), min_frequency=1)


def build_model(tok, **changes):
    """2 layers, a 1-block head whose weights are all random (a fresh head predicts zero velocity)."""
    torch.manual_seed(0)
    fields = {"num_layers": 2, "vocab_size": tok.vocab_size, "head": FlowHeadConfig(cond_dim=128, width=32,
                                                                                    depth=1, freq_dim=32)}
    model = nextstep1_tiny(**model_special_ids(tok), **{**fields, **changes}).build().eval()
    with torch.no_grad():
        for p in model.image_head.parameters():
            p.copy_(0.2 * torch.randn(p.shape))
    return model


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok)


def run(model, prompts, sampling=FAST, seed=0, **kw):
    return generate_latents(model, prompts, sampling=sampling, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("gen_pos", [False, True])
def test_cached_conditions_equal_teacher_forced(tok, model, gen_pos):
    """Text CFG over captions of different lengths (left padding), two images per caption."""
    m = build_model(tok, use_gen_pos_embed=True, gen_pos_grid=4) if gen_pos else model
    prompts = build_prompts(tok, ["a red circle", "two green triangles to the left"], (2, 3),
                            num_images_per_caption=2, cfg=3.0)
    out = run(m, prompts, ImageSampling(cfg=3.0, num_sampling_steps=2), keep_conditions=True)
    assert out.latents.shape == (4, 2, 3, 64) and out.conditions.shape == (6, 8, 128)
    forced = teacher_forced_conditions(m, prompts, out.latents)
    torch.testing.assert_close(out.conditions, forced, rtol=0, atol=1e-5)


def test_edit_cached_conditions_equal_teacher_forced(tok, model):
    """3-way CFG with the source image's placeholders in two of the three branches, use_norm on."""
    source = torch.randn(2, 1, 2, 64, generator=torch.Generator().manual_seed(3))
    prompts = build_prompts(tok, ["<image>make the circle blue", "<image>blue"], (2, 2), sources=source,
                            cfg=3.0, cfg_img=2.0, negative_prompt="copy")
    sampling = ImageSampling(cfg=3.0, cfg_img=2.0, num_sampling_steps=2, use_norm=True, cfg_schedule="linear")
    out = run(model, prompts, sampling, keep_conditions=True)
    forced = teacher_forced_conditions(model, prompts, out.latents)
    torch.testing.assert_close(out.conditions, forced, rtol=0, atol=1e-5)
    tokens = out.latents.reshape(-1, 64)  # use_norm: every token has zero mean and unit variance
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(8), rtol=0, atol=1e-5)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(8), rtol=0, atol=1e-3)


def test_seeds_and_non_square_grids(tok, model):
    prompts = build_prompts(tok, ["a red circle"], (1, 3))
    a, b, c = (run(model, prompts, seed=s).latents for s in (0, 0, 1))
    assert a.shape == (1, 1, 3, 64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1
    tall = run(model, build_prompts(tok, ["a red circle"], (3, 1))).latents
    assert tall.shape == (1, 3, 1, 64)


def test_a_batch_equals_its_prompts_alone(tok, model):
    """Left padding is harmless (positions shift by a constant, RoPE is relative) and tiled noise
    makes each caption's draws independent of the rest of the batch."""
    captions = ["a red circle", "two green triangles to the left of a yellow star"]
    sampling = ImageSampling(cfg=2.0, num_sampling_steps=2)
    batch = run(model, build_prompts(tok, captions, (2, 2), cfg=2.0), sampling).latents
    for i, caption in enumerate(captions):
        alone = run(model, build_prompts(tok, [caption], (2, 2), cfg=2.0), sampling).latents
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-5)


def test_cfg_one_equals_no_guidance(tok, model):
    unguided = run(model, build_prompts(tok, ["a red circle"], (2, 2))).latents
    with_rows = run(model, build_prompts(tok, ["a red circle"], (2, 2), cfg=4.0)).latents  # cfg=1 sampling
    torch.testing.assert_close(with_rows, unguided, rtol=0, atol=1e-5)
    guided = run(model, build_prompts(tok, ["a red circle"], (2, 2), cfg=4.0),
                 ImageSampling(cfg=4.0, num_sampling_steps=2)).latents
    assert (guided - unguided).abs().max() > 1e-3


def test_tiled_noise_is_shared_across_captions_and_independent_is_not(tok, model):
    prompts = build_prompts(tok, ["a red circle", "a red circle"], (1, 2), num_images_per_caption=2)
    tiled = run(model, prompts).latents
    torch.testing.assert_close(tiled[0:2], tiled[2:4], rtol=0, atol=1e-6)  # image j of each caption
    assert (tiled[0] - tiled[1]).abs().max() > 0.1
    independent = run(model, prompts, ImageSampling(num_sampling_steps=2, noise="independent")).latents
    assert (independent[0] - independent[2]).abs().max() > 0.1


def test_every_branch_goes_through_the_head_in_one_call_per_step(tok, model):
    """3 branches x 2 images: one head call of 6 rows per sampler step, 3 steps per token."""
    source = torch.randn(1, 1, 1, 64)
    prompts = build_prompts(tok, ["<image>blue"], (1, 2), sources=source, num_images_per_caption=2,
                            cfg=3.0, cfg_img=2.0)
    calls = []
    original = FlowNetSnapshot.velocity_modulated  # every evaluation of the head's network

    def counted(self, x, mods):
        calls.append(x.shape[0])
        return original(self, x, mods)

    FlowNetSnapshot.velocity_modulated = counted
    try:
        run(model, prompts, ImageSampling(cfg=3.0, cfg_img=2.0, num_sampling_steps=3))
    finally:
        FlowNetSnapshot.velocity_modulated = original
    assert calls == [6] * (2 * 3)


def test_sampling_settings_and_schedules():
    sampler = ImageSampling(cfg=7.5, cfg_img=2.0, cfg_schedule="linear").sampler(per_caption=4)
    assert isinstance(sampler, FlowSampler) and sampler.timesteps == "nextstep1" and sampler.method == "sde"
    assert sampler.noise_repeat == 4  # upstream's tiling: one draw per image index, shared by captions
    assert sampler.guidance(0, 4) == 7.5 and sampler.image_guidance(0, 4) == 2.0
    assert sampler.guidance(2, 4) == 1 + 6.5 * 2 / 4 and sampler.image_guidance(2, 4) == 1.5  # GH-v1's decay
    constant = ImageSampling(cfg=7.5, noise="independent").sampler(per_caption=4)
    assert constant.guidance(3, 4) == 7.5 and constant.noise_repeat is None
    assert ImageSampling.official_t2i().cfg == 7.5 and ImageSampling.official_edit().timesteps_shift == 3.2
    with pytest.raises(ValueError, match=r"ImageSampling.noise = 'shared' is not allowed"):
        ImageSampling(noise="shared")


def test_bad_requests(tok, model):
    prompts = build_prompts(tok, ["a red circle"], (1, 1))
    with pytest.raises(ValueError, match=r"cfg = 3.0, cfg_img = 1.0 \(2 rows per image\) but the prompts hold 1"):
        run(model, prompts, ImageSampling(cfg=3.0))
    with pytest.raises(TypeError, match=r"prompts must be a PromptBatch"):
        generate_latents(model, prompts.ids)
    long = build_prompts(tok, ["a red circle"], (64, 64))
    with pytest.raises(ValueError, match=r"exceeds the model's max_seq_len = 4096"):
        run(model, long)
