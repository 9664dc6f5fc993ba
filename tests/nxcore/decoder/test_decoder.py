"""The diffusion decoder (NextFlow §2.3): its condition, the denoiser swap, the flow-matching loss,
seeded sampling, the 2x decoder, checkpoints and bad input."""

import pytest
import torch

from nxcore.checkpoint import from_pretrained, load_into, save_pretrained
from nxcore.config import Config
from nxcore.decoder import (
    CaptionEncoderConfig,
    DecoderCondition,
    DiffusionDecoder,
    DiffusionDecoderConfig,
    DiTDenoiser,
    DiTDenoiserConfig,
    UNetDenoiser,
    UNetDenoiserConfig,
    VQDecoder,
    diffusion_decoder_tiny,
    flow_matching_loss,
)
from nxcore.schedule import Schedule
from nxcore.tokenizer.dual import dual_tiny

SCHEDULE = Schedule(((1, 1), (2, 2), (4, 4)))
TEXT = CaptionEncoderConfig(dim=16, depth=1, heads=2, max_len=16)
UNET = UNetDenoiserConfig(ch=8, ch_mult=(1, 2), norm_groups=4, heads=2)
DIT = DiTDenoiserConfig(dim=16, depth=1, heads=2, patch=2)
CAPTIONS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return dual_tiny().build().eval()


@pytest.fixture(scope="module")
def codes(tokenizer):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return tokenizer.encode(images, SCHEDULE)


def small(tokenizer, denoiser=UNET, **changes):
    torch.manual_seed(0)
    return diffusion_decoder_tiny(tokenizer, cond_channels=8, denoiser=denoiser, text=TEXT, num_steps=3,
                                  **changes).build().eval()


def test_the_condition_is_the_three_maps_projected(tokenizer, codes):
    cond = tokenizer.decoder_condition(codes, SCHEDULE)
    assert tokenizer.decoder_condition_dims == (8, 4, 16) == cond.dims
    assert [tuple(m.shape) for m in cond] == [(2, 8, 4, 4), (2, 4, 4, 4), (2, 16, 4, 4)]
    f_sem, f_pix = tokenizer.quantized_features(codes, SCHEDULE)
    torch.testing.assert_close(cond.semantic, f_sem)
    torch.testing.assert_close(cond.pixel, f_pix)
    torch.testing.assert_close(cond.features, tokenizer.decode_semantic(codes, SCHEDULE))
    decoder = small(tokenizer)
    assert decoder.project.in_features == 8 + 4 + 16 == decoder.config.condition_width
    projected = decoder.condition(cond)
    assert projected.shape == (2, 8, 4, 4)
    by_hand = decoder.project(torch.cat(list(cond), dim=1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(projected, by_hand)


def test_vq_decoder_is_the_tokenizer_decode(tokenizer, codes):
    assert torch.equal(VQDecoder().decode(tokenizer, codes, SCHEDULE), tokenizer.decode(codes, SCHEDULE))
    assert VQDecoder().scale_factor == 1


@pytest.mark.parametrize(("denoiser", "kind"), [(UNET, UNetDenoiser), (DIT, DiTDenoiser)])
def test_denoisers_swap_by_sub_config(tokenizer, codes, denoiser, kind):
    decoder = small(tokenizer, denoiser)
    assert isinstance(decoder.denoiser, kind)
    images = decoder.decode(tokenizer, codes, SCHEDULE, captions=CAPTIONS, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert Config.from_json(decoder.config.to_json()) == decoder.config
    assert decoder.config.replace(denoiser=UNET if denoiser is DIT else DIT).denoiser != decoder.config.denoiser


def test_the_loss_is_flow_matching_mse(tokenizer, codes):
    decoder = small(tokenizer, prediction="velocity")
    with torch.no_grad():  # a non-zero output layer, so the hand check is not trivially 0 - v
        decoder.denoiser.conv_out.weight.normal_(0, 0.1)
    cond = tokenizer.decoder_condition(codes, SCHEDULE)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([0.25, 0.8])
    loss = decoder.loss(images, cond, CAPTIONS, noise=noise, t=t)
    x_t = t[:, None, None, None] * images + (1 - t[:, None, None, None]) * noise
    text, mask = decoder.text(CAPTIONS, 2)
    v = decoder.denoiser(x_t, t, decoder.condition(cond), text, mask)
    expected = ((v - (images - noise)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(flow_matching_loss(v, images, noise), expected)
    loss.backward()
    assert decoder.project.weight.grad is not None and decoder.project.weight.grad.abs().sum() > 0


def test_data_prediction_turns_the_predicted_image_into_the_velocity(tokenizer, codes, monkeypatch):
    """prediction="data": a network that outputs the true image gives the true velocity (loss 0), and
    the loss of any output is the velocity MSE of (x̂ - x_t) / (1 - t)."""
    decoder = small(tokenizer, prediction="data")
    cond = tokenizer.decoder_condition(codes, SCHEDULE)
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.9])
    monkeypatch.setattr(decoder.denoiser, "forward", lambda x, t, *rest: images)
    assert decoder.loss(images, cond, CAPTIONS, noise=noise, t=t).item() < 1e-10
    guess = images + 0.5
    monkeypatch.setattr(decoder.denoiser, "forward", lambda x, t, *rest: guess)
    x_t = t[:, None, None, None] * images + (1 - t[:, None, None, None]) * noise
    v = (guess - x_t) / (1 - t[:, None, None, None])
    torch.testing.assert_close(decoder.loss(images, cond, CAPTIONS, noise=noise, t=t),
                               flow_matching_loss(v, images, noise))


def test_sampling_is_seeded(tokenizer, codes):
    decoder = small(tokenizer, DIT)
    with torch.no_grad():
        decoder.denoiser.final_layer.linear.weight.normal_(0, 0.1)

    def run(seed, **kw):
        return decoder.decode(tokenizer, codes, SCHEDULE, captions=CAPTIONS,
                              generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert run(0, guidance=3.0, num_steps=2).shape == (2, 3, 8, 8)


def test_the_2x_decoder_doubles_the_size_and_takes_the_1x_weights(tokenizer, codes, tmp_path):
    base = small(tokenizer)
    up = small(tokenizer, scale_factor=2)
    save_pretrained(base, tmp_path / "base")
    load_into(up, tmp_path / "base" / "model.safetensors")
    images = up.decode(tokenizer, codes, SCHEDULE, generator=torch.Generator().manual_seed(0))
    assert up.scale_factor == 2 and images.shape == (2, 3, 16, 16)
    cond = tokenizer.decoder_condition(codes, SCHEDULE)
    assert up.loss(torch.zeros(2, 3, 16, 16), cond).ndim == 0


def test_save_and_load_round_trip(tokenizer, codes, tmp_path):
    decoder = small(tokenizer, DIT)
    save_pretrained(decoder, tmp_path / "dec")
    loaded = from_pretrained(tmp_path / "dec", config_type=DiffusionDecoderConfig).eval()
    assert isinstance(loaded, DiffusionDecoder) and loaded.config == decoder.config

    def run(d):
        return d.decode(tokenizer, codes, SCHEDULE, captions=CAPTIONS, generator=torch.Generator().manual_seed(0))

    assert torch.equal(run(decoder), run(loaded))


def test_bad_input_is_named(tokenizer, codes):
    decoder = small(tokenizer)
    cond = tokenizer.decoder_condition(codes, SCHEDULE)
    wrong = DecoderCondition(cond.semantic, cond.pixel, cond.features[:, :8])
    with pytest.raises(ValueError, match=r"widths \(8, 4, 8\) .* built for \(8, 4, 16\)"):
        decoder.condition(wrong)
    with pytest.raises(TypeError, match="condition must be a DecoderCondition"):
        decoder.condition(torch.zeros(2, 28, 4, 4))
    with pytest.raises(ValueError, match="got 1 captions for 2 images"):
        decoder.decode(tokenizer, codes, SCHEDULE, captions=["one"])
    with pytest.raises(TypeError, match="captions must be a list of strings"):
        decoder.decode(tokenizer, codes, SCHEDULE, captions="a red circle")
    with pytest.raises(TypeError, match="tokenizer must give a diffusion decoder its condition"):
        decoder.decode(object(), codes, SCHEDULE)
    with pytest.raises(ValueError, match=r"images are \(2, 3, 8, 8\) but the condition has batch 2 and .* "
                       r"1-channel"):
        small(tokenizer, channels=1).loss(torch.zeros(2, 3, 8, 8), cond)
    with pytest.raises(ValueError, match=r"scale_factor = 3 is not allowed"):
        diffusion_decoder_tiny(tokenizer, scale_factor=3)
    with pytest.raises(TypeError, match="denoiser must be a UNetDenoiserConfig or DiTDenoiserConfig"):
        diffusion_decoder_tiny(tokenizer, denoiser=TEXT)
    with pytest.raises(ValueError, match="multiples of 4"):
        small(tokenizer, denoiser=DiTDenoiserConfig(dim=16, depth=1, heads=2, patch=4)).denoiser(
            torch.zeros(1, 3, 6, 6), torch.zeros(1), torch.zeros(1, 8, 4, 4), torch.zeros(1, 1, 16),
            torch.ones(1, 1, dtype=torch.bool))
