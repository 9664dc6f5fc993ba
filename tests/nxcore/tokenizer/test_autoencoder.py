"""NextStepAutoencoder: shapes, the official token layout, latent normalisation, scaling, training helpers."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from nxcore.config import Config
from nxcore.tokenizer.autoencoder import (
    NextStepAutoencoder,
    autoencoder_tiny,
    kl_divergence,
    nextstep1_f8ch16,
    patch_layer_norm,
    patchify,
    perturb,
    perturbation_scales,
    reconstruction_loss,
    sample_posterior,
    unpatchify,
)
from nxcore.tokenizer.protocol import ContinuousImageTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run fastest on one thread, and far faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(**changes) -> NextStepAutoencoder:
    torch.manual_seed(0)
    model = NextStepAutoencoder(autoencoder_tiny(**changes))
    with torch.no_grad():  # O(1) weights so that every check sees non-trivial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def _images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "size"),
    [({}, (8, 8)), ({}, (8, 20)), ({"ch_mult": (1, 2, 2), "z_channels": 16}, (48, 16)),
     ({"patch_size": 1, "norm_patch_size": 1}, (6, 10))],
)
def test_encode_decode_shapes_square_and_non_square(changes, size):
    model = _model(**changes)
    d, dim = model.downsample, model.latent_dim
    assert isinstance(model, ContinuousImageTokenizer)
    assert dim == model.config.z_channels * model.config.patch_size**2
    images = _images(2, *size)
    latents = model.encode(images)
    assert latents.shape == (2, size[0] // d, size[1] // d, dim)
    assert model.decode(latents).shape == images.shape
    assert model(images).shape == images.shape


def test_official_sizes_give_latent_dim_64_and_downsample_16():
    config = nextstep1_f8ch16()
    assert (config.latent_dim, config.downsample, config.spatial_factor) == (64, 16, 8)
    assert config.widths == (128, 256, 256 * 2, 512)


def test_config_round_trips_through_json_and_builds():
    config = autoencoder_tiny(scaling_factor=0.36, shift_factor=0.1, ch_mult=[1, 2])
    again = Config.from_json(config.to_json())
    assert again == config and again.ch_mult == (1, 2)
    assert isinstance(again.build(), NextStepAutoencoder)


# --- patchify -----------------------------------------------------------------------------------

def test_patchify_element_order_on_a_hand_built_map():
    b, c, p, h, w = 2, 3, 2, 2, 3  # non-square grid of 2 x 3 tokens
    x = torch.arange(b * c * h * p * w * p, dtype=torch.float32).reshape(b, c, h * p, w * p)
    tokens = patchify(x, p)
    assert tokens.shape == (b, h, w, c * p * p)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for ch in range(c):
                    for r in range(p):
                        for q in range(p):
                            assert tokens[n, i, j, ch * p * p + r * p + q] == x[n, ch, i * p + r, j * p + q]
    # raster order: flattening the grid puts token (i, j) at i * w + j
    flat = tokens.reshape(b, h * w, -1)
    assert torch.equal(flat[:, 1 * w + 2], tokens[:, 1, 2])
    # the first token of the first image, written out
    assert tokens[0, 0, 0].tolist() == [0, 1, 6, 7, 24, 25, 30, 31, 48, 49, 54, 55]


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_patchify_and_unpatchify_are_inverse(batch, channels, patch, h, w):
    x = torch.randn(batch, channels, h * patch, w * patch)
    tokens = patchify(x, patch)
    assert torch.equal(unpatchify(tokens, patch), x)
    assert torch.equal(patchify(unpatchify(tokens, patch), patch), tokens)


def test_patch_size_one_is_a_channels_last_permute():
    x = torch.randn(2, 5, 3, 4)
    assert torch.equal(patchify(x, 1), x.permute(0, 2, 3, 1))


# --- token-wise LayerNorm ------------------------------------------------------------------------

def test_patch_layer_norm_normalises_each_token_without_affine():
    x = torch.randn(2, 4, 6, 8) * 3 + 1
    tokens = patchify(patch_layer_norm(x, 2), 2)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(2, 3, 4), atol=1e-4, rtol=0)
    expected = F.layer_norm(patchify(x, 2), (16,), eps=1e-6)
    torch.testing.assert_close(tokens, expected)


def test_patch_layer_norm_is_token_wise():
    x = torch.randn(1, 4, 4, 4)
    y = x.clone()
    y[:, :, :2, :2] = y[:, :, :2, :2] * 5 + 2  # affine change of token (0, 0) only
    a, b = patchify(patch_layer_norm(x, 2), 2), patchify(patch_layer_norm(y, 2), 2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # no token sees another token's values
    z = x.clone()
    z[:, :, :2, :2] = torch.randn(1, 4, 2, 2)
    c = patchify(patch_layer_norm(z, 2), 2)
    assert not torch.allclose(c[:, 0, 0], a[:, 0, 0])
    torch.testing.assert_close(c.reshape(-1, 16)[1:], a.reshape(-1, 16)[1:])


def test_encode_normalises_tokens_then_scales_and_shifts():
    model = _model(scaling_factor=1.0, shift_factor=0.0)
    tokens = model.encode(_images(2, 8, 12))
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(tokens.shape[:3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(tokens.shape[:3]), atol=1e-4, rtol=0)
    scaled = _model(scaling_factor=0.3611, shift_factor=0.1159)
    images = _images(2, 8, 12)
    mean, logvar = scaled.posterior(images)
    raw_mean = scaled.encoder(images)[:, :4]
    torch.testing.assert_close(mean, patch_layer_norm(raw_mean, 2))
    torch.testing.assert_close(logvar, scaled.encoder(images)[:, 4:])
    torch.testing.assert_close(scaled.encode(images), patchify((mean - 0.1159) * 0.3611, 2))


def test_per_pixel_norm_and_no_norm():
    images = _images(1, 8, 8)
    pixel = _model(norm_patch_size=1)
    mean, _ = pixel.posterior(images)
    torch.testing.assert_close(mean.mean(1), torch.zeros(1, 4, 4), atol=1e-5, rtol=0)
    plain = _model(encoder_norm=False)
    torch.testing.assert_close(plain.posterior(images)[0], plain.encoder(images)[:, :4])


# --- scaling and decoding ----------------------------------------------------------------------

def test_scaling_factors_round_trip_and_decode_inverts_them():
    model = _model(scaling_factor=0.3611, shift_factor=0.1159)
    z = torch.randn(2, 4, 4, 6)
    torch.testing.assert_close(model.to_map(model.to_latents(z)), z)
    latents = model.to_latents(z)
    torch.testing.assert_close(latents, patchify((z - 0.1159) * 0.3611, 2))
    torch.testing.assert_close(model.decode(latents), model.decoder(unpatchify(latents, 2) / 0.3611 + 0.1159))


def test_encode_and_decode_are_differentiable():
    model = _model()
    images = _images(2, 8, 12).requires_grad_()
    latents = model.encode(images)
    latents.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    tokens = torch.randn(1, 2, 3, model.latent_dim, requires_grad=True)
    model.decode(tokens).sum().backward()
    assert tokens.grad.abs().sum() > 0 and model.decoder.conv_out.weight.grad.abs().sum() > 0


# --- training helpers ---------------------------------------------------------------------------

def test_perturb_with_gamma_zero_is_the_identity():
    x = torch.randn(3, 2, 2, 16)
    assert perturb(x, 0.0) is x
    assert perturb(x, 0, torch.Generator().manual_seed(0)) is x


def test_perturb_draws_one_scale_per_sample_then_gaussian_noise():
    x = torch.randn(4, 2, 3, 16)
    out = perturb(x, 0.2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    alpha = perturbation_scales(4, 0.2, generator=g)
    noise = torch.randn(x.shape, generator=g)
    torch.testing.assert_close(out, x + alpha.view(4, 1, 1, 1) * noise)


def test_perturbation_scales_are_uniform_on_zero_to_gamma():
    gamma = 0.2
    alpha = perturbation_scales(20_000, gamma, generator=torch.Generator().manual_seed(0))
    assert alpha.min() >= 0 and alpha.max() <= gamma
    assert abs(alpha.mean().item() - gamma / 2) < 0.005
    assert abs(alpha.var().item() - gamma**2 / 12) < 2e-4
    # the per-sample noise std seen in perturbed zeros stays in [0, gamma] and spreads over it
    noisy = perturb(torch.zeros(400, 4, 8, 8), gamma, torch.Generator().manual_seed(1))
    std = noisy.flatten(1).std(1)
    assert std.max() <= gamma * 1.2 and std.min() < 0.1 * gamma and std.max() > 0.9 * gamma


def test_sample_posterior_and_kl():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_posterior(mean, logvar, g), mean + torch.exp(0.5 * logvar) * eps)
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3))
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    torch.testing.assert_close(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_reconstruction_loss_parts():
    model = _model()
    images = _images(2, 8, 8)
    plain = reconstruction_loss(model, images)
    torch.testing.assert_close(plain.l2, F.mse_loss(model(images), images))
    assert plain.kl == 0 and torch.equal(plain.total, plain.l2)
    mean, logvar = model.posterior(images)
    weighted = reconstruction_loss(model, images, kl_weight=0.5)
    torch.testing.assert_close(weighted.kl, kl_divergence(mean, logvar).mean())
    torch.testing.assert_close(weighted.total, weighted.l2 + 0.5 * weighted.kl)
    noisy = reconstruction_loss(model, images, gamma=0.2, sample=True, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z = perturb(sample_posterior(mean, logvar, g), 0.2, g)
    torch.testing.assert_close(noisy.l2, F.mse_loss(model.decoder(z), images))
    noisy.total.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = NextStepAutoencoder(autoencoder_tiny())
    images = _images(4, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(30):
        loss = reconstruction_loss(model, images, gamma=0.1, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        first = loss.total.item() if first is None else first
    assert loss.total.item() < 0.7 * first


# --- errors -------------------------------------------------------------------------------------

def test_bad_image_sizes_name_the_size_and_the_fix():
    model = _model()
    with pytest.raises(ValueError, match=r"images are 8x10 \(height x width\), not multiples of downsample = 4.*e\.g\. 8x8"):
        model.encode(_images(1, 8, 10))
    with pytest.raises(ValueError, match="images have 1 channels but the autoencoder takes in_channels = 3"):
        model.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        model.encode(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="images must have a floating-point dtype"):
        model.encode(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_bad_latents_are_rejected():
    model = _model()
    with pytest.raises(ValueError, match=r"latents have width 12 but this tokenizer's latent_dim is 16"):
        model.decode(torch.zeros(1, 2, 2, 12))
    with pytest.raises(ValueError, match=r"latents map is 3x4, not a multiple of patch = 2"):
        patchify(torch.zeros(1, 2, 3, 4), 2)
    with pytest.raises(ValueError, match="tokens have width 6, not a multiple of patch"):
        unpatchify(torch.zeros(1, 2, 2, 6), 2)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"ch": 6}, ValueError, r"channel width 6 .* not divisible by norm_groups = 4"),
        ({"norm_patch_size": 3}, ValueError, r"norm_patch_size = 3 must divide patch_size = 2"),
        ({"scaling_factor": 0.0}, ValueError, r"scaling_factor = 0 is not allowed"),
        ({"shift_factor": float("nan")}, ValueError, r"shift_factor = nan is not allowed"),
        ({"ch_mult": ()}, ValueError, r"ch_mult = \(\) is not allowed; expected a non-empty tuple"),
        ({"ch_mult": (1, 0)}, ValueError, r"ch_mult = \(1, 0\) is not allowed"),
        ({"encoder_norm": 1}, TypeError, r"encoder_norm = 1 is not allowed; expected True or False"),
        ({"z_channels": 0}, ValueError, r"z_channels = 0 is not allowed"),
    ],
)
def test_bad_configs_are_rejected(changes, error, message):
    with pytest.raises(error, match=message):
        autoencoder_tiny(**changes)


def test_bad_training_arguments_are_rejected():
    model = _model()
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0 .* got -0.1"):
        perturb(x, -0.1)
    with pytest.raises(TypeError, match="gamma must be a number >= 0"):
        perturb(x, True)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        perturb(x, 0.1, 3)
    with pytest.raises(ValueError, match=r"kl_weight must be a finite number >= 0"):
        reconstruction_loss(model, _images(1, 8, 8), kl_weight=-1.0)
    with pytest.raises(TypeError, match="model must be a NextStepAutoencoder"):
        reconstruction_loss(torch.nn.Identity(), _images(1, 8, 8))
    with pytest.raises(TypeError, match="config must be an AutoencoderConfig"):
        NextStepAutoencoder({"ch": 8})


def test_examples_are_small_and_conform():
    from nxcore.testing.check_tokenizer import check_continuous_image_tokenizer

    examples = NextStepAutoencoder.examples()
    assert len(examples) >= 2
    for model in examples:
        assert sum(p.numel() for p in model.parameters()) < 200_000
        check_continuous_image_tokenizer(model)


def test_save_pretrained_round_trip(tmp_path):
    from nxcore.checkpoint import from_pretrained, save_pretrained

    model = _model(scaling_factor=0.5)
    save_pretrained(model, tmp_path / "ae")
    again = from_pretrained(tmp_path / "ae")
    assert isinstance(again, NextStepAutoencoder) and again.config == model.config
    images = _images(1, 8, 8)
    torch.testing.assert_close(again.encode(images), model.encode(images))


def test_cpu_decode_runs_channels_last_and_returns_a_contiguous_image():
    """``decode`` feeds the decoder a channels-last map on CPU (faster oneDNN convolutions): the same
    images up to rounding as the plain NCHW map, contiguous, with gradients."""
    model = _model(ch_mult=(1, 2, 2), z_channels=16)
    latents = model.encode(_images(2, 16, 24)).detach().requires_grad_()
    out = model.decode(latents)
    plain = model.decoder(model.to_map(latents).contiguous())
    assert out.is_contiguous() and out.shape == plain.shape
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
