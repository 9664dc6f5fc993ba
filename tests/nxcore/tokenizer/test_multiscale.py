"""MultiScaleVQTokenizer and the residual-quantizer core: shapes over random schedules, the φ tick
rule, the two next-scale input modes, monotone residuals, training forward, clear errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nxcore.config import Config
from nxcore.schedule import Schedule, var_schedule
from nxcore.tokenizer.multiscale import (
    CodebookStream,
    MultiScaleQuantizer,
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    PhiBank,
    QuantizerConfig,
    code_usage,
    multiscale_vq_tiny,
    next_scale_inputs,
    phi_index,
    reconstruct,
    residual_quantize,
    var_vqvae,
)
from nxcore.tokenizer.protocol import DiscreteImageTokenizer


def _tokenizer(seed=0, **changes) -> MultiScaleVQTokenizer:
    torch.manual_seed(seed)
    return MultiScaleVQTokenizer(multiscale_vq_tiny(**changes)).eval()


def _images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@st.composite
def schedules(draw, max_side=5, max_steps=4):
    """Random non-shrinking schedules, square or not."""
    k = draw(st.integers(1, max_steps))
    h = sorted(draw(st.lists(st.integers(1, max_side), min_size=k, max_size=k)))
    w = sorted(draw(st.lists(st.integers(1, max_side), min_size=k, max_size=k)))
    return Schedule(tuple(zip(h, w, strict=True)))


# --- configs ------------------------------------------------------------------------------------

def test_var_vqvae_has_the_released_sizes_and_quirks():
    c = var_vqvae()
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.norm_groups, c.downsample) == (160, (1, 1, 2, 2, 4), 2, 32, 16)
    q = c.quantizer
    assert (q.codebook_size, q.code_dim, q.beta, q.normalize) == (4096, 32, 0.25, False)
    assert (q.phi_count, q.phi_ratio, q.phi_ticks, q.down, q.up, q.inputs) == (4, 0.5, "var", "area", "bicubic", "accumulated")
    assert var_vqvae(inputs="residual").quantizer.inputs == "residual"


def test_config_round_trips_through_json_and_builds():
    config = multiscale_vq_tiny(inputs="residual", ch_mult=[1, 2], up="bilinear")
    again = Config.from_json(config.to_json())
    assert again == config and again.ch_mult == (1, 2) and again.quantizer.up == "bilinear"
    assert isinstance(again.build(), MultiScaleVQTokenizer)
    assert isinstance(config.quantizer.build(), MultiScaleQuantizer)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: multiscale_vq_tiny(ch=6), ValueError, r"width 6 .* not divisible by norm_groups = 4"),
        (lambda: QuantizerConfig(up="area"), ValueError, r"QuantizerConfig\.up = 'area' is not allowed"),
        (lambda: QuantizerConfig(inputs="summed"), ValueError, r"inputs = 'summed'.*'accumulated', 'residual'"),
        (lambda: QuantizerConfig(phi_ratio=0.0), ValueError, r"phi_ratio = 0\.0 is not allowed"),
        (lambda: QuantizerConfig(beta=-1.0), ValueError, r"beta = -1\.0 is not allowed"),
        (lambda: MultiScaleVQConfig(quant_conv_kernel=2), ValueError, r"quant_conv_kernel = 2 .* odd"),
        (lambda: MultiScaleVQConfig(quantizer={"code_dim": 4}), TypeError, r"quantizer must be a QuantizerConfig"),
        (lambda: MultiScaleVQTokenizer(QuantizerConfig()), TypeError, r"config must be a MultiScaleVQConfig"),
    ],
)
def test_bad_configs_get_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


# --- φ ------------------------------------------------------------------------------------------

def test_phi_tick_rule_is_vars():
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 13, 4) for k in range(13)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    # VAR's third-spaced ticks apply to 4 convs only; "uniform" uses half-spaced ticks for every count
    assert [phi_index(k, 10, 4, "uniform") for k in range(10)] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 5, 3) for k in range(5)] == [phi_index(k, 5, 3, "uniform") for k in range(5)]
    # the middle of 3 steps lies exactly between two ticks: float64 rounding decides, as in VAR
    assert [phi_index(k, 3, 4) for k in range(3)] == [0, 2, 3]
    assert phi_index(0, 1, 4) == 0  # one step: position 0 (VAR would divide by zero)
    assert [phi_index(k, 6, 1) for k in range(6)] == [0] * 6


def test_phi_blends_half_the_input_with_half_the_conv():
    bank = PhiBank(3, 2, ratio=0.5)
    h = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        bank.qresi_ls[1].weight.zero_()
        bank.qresi_ls[1].bias.fill_(1.0)
    torch.testing.assert_close(bank(h, 3, 4), 0.5 * h + 0.5)
    expected = 0.5 * h + 0.5 * F.conv2d(h, bank.qresi_ls[0].weight, bank.qresi_ls[0].bias, padding=1)
    torch.testing.assert_close(bank(h, 0, 4), expected)


# --- shapes -------------------------------------------------------------------------------------

TOKENIZERS = {
    "var-quirks": _tokenizer(),
    "residual-no-phi": _tokenizer(seed=1, inputs="residual", phi_count=0, up="nearest"),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=12)
@given(schedule=schedules(), batch=st.integers(1, 2))
def test_shapes_for_random_schedules_and_non_square_grids(name, schedule, batch):
    tok = TOKENIZERS[name]
    gh, gw = schedule.grid
    images = _images(batch, gh * tok.downsample, gw * tok.downsample)
    codes = tok.encode(images, schedule)
    assert [tuple(c.shape) for c in codes] == [(batch, h, w) for h, w in schedule.steps]
    assert all(c.dtype == torch.int64 and 0 <= c.min() and c.max() < tok.codebook_size for c in codes)
    assert tok.decode(codes, schedule).shape == images.shape
    assert tok.quantized_features(codes, schedule).shape == (batch, tok.code_dim, gh, gw)
    for mode in ("accumulated", "residual"):
        inputs = tok.quantize.next_scale_inputs(codes, schedule, mode=mode)
        assert [tuple(x.shape) for x in inputs] == [(batch, tok.code_dim, h, w) for h, w in schedule.steps[1:]]
    # a prefix of the codes (generation in progress): the image so far, the input of each next step
    prefix = codes[: max(1, len(codes) - 1)]
    assert tok.decode(prefix, schedule).shape == images.shape
    assert len(tok.next_scale_inputs(prefix, schedule)) == min(len(prefix), schedule.num_steps - 1)


def test_is_a_discrete_image_tokenizer_with_var_sizes_at_tiny_scale():
    tok = _tokenizer()
    assert isinstance(tok, DiscreteImageTokenizer)
    assert (tok.codebook_size, tok.code_dim, tok.downsample) == (32, 4, 2)


# --- the two next-scale input modes -------------------------------------------------------------

def _codes_and_tokenizer(schedule, **changes):
    tok = _tokenizer(**changes)
    gh, gw = schedule.grid
    return tok.encode(_images(2, gh * 2, gw * 2), schedule), tok


def test_modes_agree_on_the_first_input_without_phi():
    schedule = Schedule(((1, 1), (2, 3), (3, 4), (4, 6)))
    codes, tok = _codes_and_tokenizer(schedule, phi_count=0)
    acc = tok.quantize.next_scale_inputs(codes, schedule, mode="accumulated")
    res = tok.quantize.next_scale_inputs(codes, schedule, mode="residual")
    # the 1x1 code map, up-sampled (to the final grid, then area-averaged / straight to 2x3): e[idx_1] everywhere
    expected = tok.embed_codes(codes[0], 0).expand(-1, -1, 2, 3)
    torch.testing.assert_close(acc[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(res[0], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(acc[1], res[1], atol=1e-3)  # later they differ: accumulation


def test_accumulated_inputs_are_running_sums_of_residual_inputs_without_resampling():
    schedule = Schedule(((3, 4),) * 4)  # every step at the final grid: no resampling anywhere
    codes, tok = _codes_and_tokenizer(schedule, phi_count=0)
    acc = tok.quantize.next_scale_inputs(codes, schedule, mode="accumulated")
    res = tok.quantize.next_scale_inputs(codes, schedule, mode="residual")
    torch.testing.assert_close(torch.stack(acc), torch.stack(res).cumsum(0), atol=1e-6, rtol=0)


def test_residual_inputs_are_each_steps_own_codebook_features_up_sampled():
    schedule = Schedule(((1, 2), (2, 3), (4, 6)))
    codes, tok = _codes_and_tokenizer(schedule, up="bicubic", phi_count=2)
    res = tok.quantize.next_scale_inputs(codes, schedule, mode="residual")
    for k, (h, w) in enumerate(schedule.steps[1:]):
        own = F.interpolate(tok.embed_codes(codes[k], k), size=(h, w), mode="bicubic")
        torch.testing.assert_close(res[k], own)


def test_accumulated_inputs_down_sample_the_partial_reconstruction():
    schedule = Schedule(((1, 1), (2, 3), (3, 4)))
    codes, tok = _codes_and_tokenizer(schedule)
    acc = tok.next_scale_inputs(codes, schedule)  # configured mode: accumulated (VAR)
    for k, (h, w) in enumerate(schedule.steps[1:]):
        partial = tok.quantized_features(codes[: k + 1], schedule)
        torch.testing.assert_close(acc[k], F.interpolate(partial, size=(h, w), mode="area"))


def test_input_mode_changes_only_the_inputs():
    schedule = Schedule(((1, 1), (2, 2), (3, 4)))
    images = _images(2, 6, 8)
    acc, res = _tokenizer(), _tokenizer(inputs="residual")
    codes = acc.encode(images, schedule)
    assert all(torch.equal(a, b) for a, b in zip(codes, res.encode(images, schedule), strict=True))
    torch.testing.assert_close(acc.decode(codes, schedule), res.decode(codes, schedule), atol=0, rtol=0)


# --- residual quantization ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "steps", [((1, 1), (2, 2), (4, 4), (8, 8)), ((1, 1), (2, 3), (4, 6)), ((1, 2), (1, 2), (3, 4), (6, 8))]
)
def test_residual_norm_never_grows_as_steps_are_added(steps):
    # With a zero codeword, no φ, block-average down-sampling and block-replicating up-sampling
    # (integer ratios), each step's choice can only shrink ‖f - f_hat‖: the zero code leaves it as is.
    schedule = Schedule(steps)
    tok = _tokenizer(phi_count=0, up="nearest", codebook_size=64)
    with torch.no_grad():
        tok.quantize.embedding.weight[0].zero_()
        tok.quantize.embedding.weight.mul_(0.5)
    gh, gw = schedule.grid
    images = _images(3, gh * 2, gw * 2, seed=1)
    f = tok.features(images).detach()
    codes = tok.encode(images, schedule)
    norms = [f.norm().item()] + [
        (f - tok.quantized_features(codes[: k + 1], schedule)).norm().item() for k in range(len(codes))
    ]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(norms, norms[1:], strict=False)), norms
    assert norms[-1] < 0.9 * norms[0], norms


def test_two_streams_search_like_one_stream_of_their_concatenation():
    # The dual-codebook case: squared distances of the two halves add up, so two unweighted streams
    # choose exactly the codes of one stream holding both halves side by side.
    g = torch.Generator().manual_seed(0)
    sem, pix = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 2, 4, 6, generator=g)
    cb_sem, cb_pix = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    steps = ((1, 1), (2, 3), (4, 6))
    two = residual_quantize([sem, pix], [CodebookStream(cb_sem), CodebookStream(cb_pix)], steps, up="bilinear")
    one = residual_quantize([torch.cat([sem, pix], 1)], [CodebookStream(torch.cat([cb_sem, cb_pix], 1))], steps,
                            up="bilinear")
    assert all(torch.equal(a, b) for a, b in zip(two.codes, one.codes, strict=True))
    torch.testing.assert_close(torch.cat(two.quantized, 1), one.quantized[0])
    inputs = next_scale_inputs([CodebookStream(cb_sem), CodebookStream(cb_pix)], two.codes, steps, mode="residual")
    assert [tuple(x.shape) for x in inputs] == [(2, 5, 2, 3), (2, 5, 4, 6)]
    # weights pick the half that matters: all weight on the semantic half = a semantic-only search
    sem_only = residual_quantize([sem, pix], [CodebookStream(cb_sem, weight=1.0), CodebookStream(cb_pix, weight=0.0)],
                                 steps)
    assert torch.equal(sem_only.codes[0], residual_quantize([sem], [CodebookStream(cb_sem)], steps).codes[0])


def test_normalized_streams_quantize_with_unit_codewords_and_step_losses():
    # TokenFlow's codebook_l2_norm: search and look up L2-normalised codewords; per-step losses.
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 3, 2, 3, generator=g, requires_grad=True)
    stream = CodebookStream(torch.randn(8, 3, generator=g) * 5, normalized=True)
    steps = ((1, 1), (2, 3))
    q = residual_quantize([f], [stream], steps, normalize=True, loss="step", up="nearest")
    unit = F.normalize(stream.codebook, dim=-1)
    first = unit[q.codes[0].reshape(-1)].reshape(2, 3, 1, 1)
    torch.testing.assert_close(reconstruct([stream], q.codes[:1], steps, up="nearest")[0], first.expand(-1, -1, 2, 3))
    # step 1: the 1x1 residual is the mean of f; step 2: f minus step 1's codewords, at the full grid
    z1 = F.normalize(f.detach().mean((2, 3)), dim=-1)
    rest = (f.detach() - first).permute(0, 2, 3, 1).reshape(-1, 3)
    z2 = F.normalize(rest, dim=-1)
    e2 = unit[q.codes[1].reshape(-1)]
    expected = ((first.reshape(2, 3) - z1).square().mean() + (e2 - z2).square().mean()) / 2
    torch.testing.assert_close(q.codebook_loss, expected)
    torch.testing.assert_close(q.commitment_loss, expected)
    q.commitment_loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0  # the commitment term reaches the features
    with pytest.raises(ValueError, match=r"loss must be 'cumulative' \(VAR\) or 'step' \(TokenFlow\), got 'sum'"):
        residual_quantize([f], [stream], steps, loss="sum")


def test_reconstruct_matches_the_loops_running_sum():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 4, 3, 5, generator=g)
    bank = PhiBank(4, 3)
    stream = CodebookStream(torch.randn(8, 4, generator=g), bank)
    steps = ((1, 1), (2, 3), (3, 5))
    q = residual_quantize([f], [stream], steps)
    torch.testing.assert_close(reconstruct([stream], q.codes, steps)[0], q.quantized[0])


# --- training -----------------------------------------------------------------------------------

def test_forward_gives_reconstruction_loss_codes_and_gradients_everywhere():
    schedule = Schedule(((1, 1), (2, 2), (3, 4)))
    tok = _tokenizer().train()
    images = _images(2, 6, 8)
    out = tok(images, schedule)
    assert out.reconstruction.shape == images.shape and out.steps == (0, 1, 2)
    assert all(torch.equal(a, b) for a, b in zip(out.codes, tok.encode(images, schedule), strict=True))
    # both terms measure ‖f_hat - f‖² (the stop-gradients only route the gradients)
    torch.testing.assert_close(out.codebook_loss, out.commitment_loss)
    torch.testing.assert_close(out.loss, out.codebook_loss * 1.25)
    (out.reconstruction.square().mean() + out.loss).backward()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "quantize.embedding.weight",
                 "quantize.quant_resi.qresi_ls.0.weight", "post_quant_conv.weight", "decoder.conv_out.weight"):
        grad = tok.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_straight_through_passes_gradients_to_the_features_unchanged():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(1, 4, 3, 4, generator=g, requires_grad=True)
    stream = CodebookStream(torch.randn(8, 4, generator=g))
    q = residual_quantize([f], [stream], ((1, 1), (3, 4)))
    weights = torch.randn(q.quantized[0].shape, generator=g)
    (q.quantized[0] * weights).sum().backward()
    torch.testing.assert_close(f.grad, weights)


def test_keep_quantizes_only_some_steps_and_keeps_their_phi():
    schedule = Schedule(((1, 1), (2, 2), (3, 4), (3, 4)))
    tok = _tokenizer(phi_count=4)
    out = tok(_images(2, 6, 8), schedule, keep=(0, 2, 3))
    assert out.steps == (0, 2, 3) and [tuple(c.shape[1:]) for c in out.codes] == [(1, 1), (3, 4), (3, 4)]
    q = tok.quantize(tok.features(_images(2, 6, 8)), schedule, keep=(0, 2, 3))
    streams = tok.quantize.streams
    torch.testing.assert_close(reconstruct(streams, q.codes, schedule.steps, at=q.steps)[0], q.quantized[0])
    shifted = reconstruct(streams, q.codes, schedule.steps, at=(0, 1, 2))[0]  # other φ for the last two
    assert not torch.allclose(shifted, q.quantized[0], atol=1e-3)


def test_code_usage_counts_codes_per_step():
    codes = [torch.tensor([[[0]]]), torch.tensor([[[1, 1], [2, 3]]])]
    usage = code_usage(codes, 4)
    assert usage.counts.tolist() == [[1, 0, 0, 0], [0, 2, 1, 1]]
    torch.testing.assert_close(usage.usage, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(usage.perplexity, torch.tensor([1.0, 2 ** 1.5]))


# --- errors -------------------------------------------------------------------------------------

SCHEDULE = Schedule(((1, 1), (2, 2), (3, 4)))
TOK = _tokenizer()
CODES = TOK.encode(_images(2, 6, 8), SCHEDULE)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: TOK.encode(_images(1, 8, 8), SCHEDULE), ValueError,
         r"images are 8x8 .* final grid 3x4 needs 6x8 images \(downsample = 2\).*last step is \(4, 4\)"),
        (lambda: TOK.encode(_images(1, 7, 8), SCHEDULE), ValueError, r"images are 7x8 .*multiples of downsample = 2"),
        (lambda: TOK.encode(torch.rand(1, 1, 6, 8), SCHEDULE), ValueError, r"images have 1 channels.*in_channels = 3"),
        (lambda: TOK.encode(torch.rand(6, 8), SCHEDULE), ValueError, r"images must have 4 dimensions"),
        (lambda: TOK.encode(_images(1, 6, 8), ((1, 1), (3, 4))), TypeError, r"schedule must be a ScaleSchedule"),
        (lambda: TOK.decode(CODES[::-1], SCHEDULE), ValueError, r"codes\[0\] is a \(3, 4\) grid but schedule step 0 is \(1, 1\)"),
        (lambda: TOK.decode(CODES + CODES[-1:], SCHEDULE), ValueError, r"codes has 4 grids but the schedule has 3 steps"),
        (lambda: TOK.decode([CODES[0] + 32, *CODES[1:]], SCHEDULE), ValueError, r"codes\[0\] holds values in \[\d+, \d+\], outside \[0, 32\)"),
        (lambda: TOK.decode([c.float() for c in CODES], SCHEDULE), TypeError, r"codes\[0\] must have an integer dtype"),
        (lambda: TOK.decode([CODES[0], CODES[1][:1], CODES[2]], SCHEDULE), ValueError, r"codes\[1\] has batch 1 but codes\[0\] has 2"),
        (lambda: TOK.decode(CODES[0], SCHEDULE), TypeError, r"codes must be a list of int64"),
        (lambda: TOK.embed_codes(CODES[0], -1), ValueError, r"step must be an int >= 0 \(a schedule step index\), got -1"),
        (lambda: TOK.embed_codes(torch.full_like(CODES[0], -1), 0), ValueError, r"outside \[0, 32\)"),
        (lambda: TOK(_images(2, 6, 8), SCHEDULE, keep=(2, 1)), ValueError, r"keep must be a non-empty increasing"),
        (lambda: TOK.quantize(torch.randn(1, 4, 3, 3), SCHEDULE), ValueError, r"features\[0\] is a \(3, 3\) map but the schedule ends at \(3, 4\)"),
        (lambda: TOK.quantize.next_scale_inputs(CODES, SCHEDULE, mode="sum"), ValueError, r"mode must be one of \['accumulated', 'residual'\]"),
        (lambda: residual_quantize([torch.randn(1, 2, 1, 1)] * 3, [CodebookStream(torch.randn(4, 2))] * 3, ((1, 1),)),
         ValueError, r"streams: expected 1 or 2 CodebookStreams"),
        (lambda: code_usage(CODES, 0), ValueError, r"codebook_size must be an int >= 1, got 0"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_var_preset_schedule_needs_256_pixel_images_at_downsample_16():
    tok = MultiScaleVQTokenizer(var_vqvae(ch=32))  # VAR's layout with narrow levels
    with pytest.raises(ValueError, match=r"final grid 16x16 needs 256x256 images"):
        tok.check_images(_images(1, 224, 224), var_schedule(256))
