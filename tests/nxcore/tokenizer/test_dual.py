"""DualCodebookTokenizer: configs, protocol shapes over random schedules, the joint shared-index
search, decode from the pixel half, training forward (losses, scale dropping, fp32 under autocast),
branch-wise stages, the teacher (frozen copy, local safetensors / weights-only files), clear errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from nxcore.checkpoint import CheckpointMismatchError
from nxcore.config import Config
from nxcore.schedule import Schedule
from nxcore.testing.check_tokenizer import check_discrete_image_tokenizer
from nxcore.tokenizer.dual import (
    STAGES,
    DualCodebookConfig,
    DualCodebookTokenizer,
    EncoderTeacher,
    PixelConfig,
    SemanticConfig,
    drop_scales,
    dual_tiny,
    load_teacher,
    semantic_loss,
    sincos_2d,
    tokenflow_like,
)
from nxcore.tokenizer.multiscale import code_usage
from nxcore.tokenizer.protocol import DiscreteImageTokenizer

torch.set_num_threads(1)
SCHEDULE = Schedule(((1, 1), (2, 2), (3, 4)))


def _tokenizer(seed=0, teacher=None, **changes) -> DualCodebookTokenizer:
    torch.manual_seed(seed)
    return DualCodebookTokenizer(dual_tiny(**changes), teacher=teacher).eval()


def _images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@st.composite
def schedules(draw, max_side=5, max_steps=4):
    """Random non-shrinking schedules, square or not."""
    k = draw(st.integers(1, max_steps))
    h = sorted(draw(st.lists(st.integers(1, max_side), min_size=k, max_size=k)))
    w = sorted(draw(st.lists(st.integers(1, max_side), min_size=k, max_size=k)))
    return Schedule(tuple(zip(h, w, strict=True)))


TOKENIZER = _tokenizer()


# --- configs ------------------------------------------------------------------------------------

def test_config_round_trips_through_json_and_builds():
    config = dual_tiny(inputs="accumulated", ch_mult=[1, 2], w_pix=0.5, teacher_dim=None, decoder_ch=16)
    again = Config.from_json(config.to_json())
    assert again == config and again.pixel.ch_mult == (1, 2) and again.pixel.decoder_ch == 16
    tok = again.build()
    assert isinstance(tok, DualCodebookTokenizer) and isinstance(tok, DiscreteImageTokenizer)
    assert (tok.codebook_size, tok.code_dim, tok.downsample) == (32, 8 + 4, 2)


def test_tokenflow_like_has_tokenflows_sizes_and_nextflows_defaults():
    c = tokenflow_like()
    assert (c.codebook_size, c.sem_dim, c.pix_dim, c.code_dim, c.w_sem, c.w_pix) == (32768, 32, 8, 40, 1.0, 1.0)
    assert (c.pixel.ch, c.pixel.ch_mult, c.pixel.z_channels, c.downsample) == (128, (1, 1, 2, 2, 4), 256, 16)
    assert (c.inputs, c.scale_drop, c.down, c.up) == ("residual", 0.5, "area", "bicubic")
    assert (c.semantic.decoder_depth, c.semantic.target_dim) == (3, 768)
    assert (c.unit_codewords, c.vq_loss) == (True, "step")  # TokenFlow's codebook_l2_norm, per-step loss


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: dual_tiny(w_sem=0.0, w_pix=0.0), ValueError, r"w_sem and w_pix are both 0"),
        (lambda: SemanticConfig(width=18, heads=4), ValueError, r"width = 18 is not divisible by heads = 4"),
        (lambda: SemanticConfig(width=6, heads=2, decoder_width=8), ValueError, r"width = 6 is not a multiple of 4"),
        (lambda: PixelConfig(ch=6, norm_groups=4), ValueError, r"width 6 .* not divisible by norm_groups = 4"),
        (lambda: PixelConfig(decoder_ch=6, ch=8, norm_groups=4, ch_mult=(1,)), ValueError,
         r"decoder_ch 6 .* norm_groups = 4"),
        (lambda: dual_tiny(scale_drop=1.5), ValueError, r"scale_drop = 1\.5 is not allowed"),
        (lambda: dual_tiny(scale_drop=-0.1), ValueError, r"scale_drop = -0\.1 is not allowed"),
        (lambda: dual_tiny(inputs="summed"), ValueError, r"inputs = 'summed'.*'accumulated', 'residual'"),
        (lambda: dual_tiny(vq_loss="sum"), ValueError, r"vq_loss = 'sum' is not allowed.*\['step', 'cumulative'\]"),
        (lambda: dual_tiny(unit_codewords=1), TypeError, r"unit_codewords = 1 is not allowed"),
        (lambda: DualCodebookConfig(pixel={"ch": 8}), TypeError, r"pixel must be a PixelConfig"),
        (lambda: DualCodebookTokenizer(PixelConfig()), TypeError, r"config must be a DualCodebookConfig"),
        (lambda: DualCodebookTokenizer(dual_tiny(teacher_dim=12)), ValueError,
         r"teacher_dim = 12 but no teacher was given"),
        (lambda: DualCodebookTokenizer(dual_tiny(), teacher="siglip"), TypeError, r"teacher must be a torch\.nn\.Module"),
    ],
)
def test_bad_configs_get_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


# --- protocol shapes --------------------------------------------------------------------------------

@pytest.mark.parametrize("tokenizer", DualCodebookTokenizer.examples())
def test_examples_pass_the_conformance_check(tokenizer):
    check_discrete_image_tokenizer(tokenizer, SCHEDULE)
    check_discrete_image_tokenizer(tokenizer, Schedule(((2, 1), (2, 1), (4, 3))), batch=1)


@settings(max_examples=12)
@given(schedule=schedules(), batch=st.integers(1, 2))
def test_shapes_for_random_schedules_and_non_square_grids(schedule, batch):
    d = TOKENIZER.downsample
    gh, gw = schedule.grid
    images = _images(batch, gh * d, gw * d)
    codes = TOKENIZER.encode(images, schedule)
    assert [tuple(c.shape) for c in codes] == [(batch, h, w) for h, w in schedule.steps]
    assert all(c.dtype == torch.int64 and 0 <= c.min() and c.max() < 32 for c in codes)
    assert TOKENIZER.decode(codes, schedule).shape == images.shape
    assert TOKENIZER.decode(codes[:1], schedule).shape == images.shape  # a prefix: the image so far
    assert TOKENIZER.decode_semantic(codes, schedule).shape == (batch, 16, gh, gw)
    for mode in ("residual", "accumulated"):
        inputs = TOKENIZER.next_scale_inputs(codes, schedule, mode=mode)
        assert [tuple(x.shape) for x in inputs] == [(batch, 12, h, w) for h, w in schedule.steps[1:]]


# --- the joint search and the protocol's features ---------------------------------------------------

@pytest.mark.parametrize(("w_sem", "w_pix"), [(1.0, 1.0), (1.0, 0.3), (0.0, 1.0), (2.0, 0.0)])
def test_index_is_the_brute_force_argmin_of_the_weighted_normalised_distances(w_sem, w_pix):
    tok = _tokenizer(w_sem=w_sem, w_pix=w_pix)
    schedule = Schedule(((3, 4),))  # one step at the latent grid: the features themselves are searched
    images = _images(2, 6, 8, seed=3)
    codes = tok.encode(images, schedule)[0]
    f_sem, f_pix = tok.features(images)
    d = torch.zeros(2, 3, 4, 32, dtype=torch.float64)
    for f, cb, wt in ((f_sem, tok.codebook_sem.weight, w_sem), (f_pix, tok.codebook_pix.weight, w_pix)):
        z = F.normalize(f.double().permute(0, 2, 3, 1), dim=-1)
        e = F.normalize(cb.double(), dim=-1)
        d += wt * (z[..., None, :] - e).square().sum(-1)
    assert torch.equal(codes, d.argmin(-1))


@pytest.mark.parametrize("unit", [True, False])
def test_two_steps_search_the_residual_left_by_the_first(unit):
    tok = _tokenizer(w_pix=0.5, unit_codewords=unit)
    schedule = Schedule(((1, 1), (3, 4)))
    images = _images(2, 6, 8, seed=4)
    c0, c1 = tok.encode(images, schedule)
    rest = []
    for f, cb in zip(tok.features(images), (tok.codebook_sem.weight, tok.codebook_pix.weight), strict=True):
        e = F.normalize(cb.float(), dim=-1) if unit else cb.float()  # what the first step added
        first = F.interpolate(e[c0].permute(0, 3, 1, 2), size=(3, 4), mode="bicubic")
        rest.append(F.normalize((f - first).permute(0, 2, 3, 1), dim=-1))
    e_sem, e_pix = (F.normalize(w, dim=-1) for w in (tok.codebook_sem.weight, tok.codebook_pix.weight))
    d = (rest[0][..., None, :] - e_sem).square().sum(-1) + 0.5 * (rest[1][..., None, :] - e_pix).square().sum(-1)
    assert torch.equal(c1, d.argmin(-1))


def test_embed_codes_concatenates_the_unit_codewords_semantic_first():
    tok = _tokenizer(unit_codewords=True)
    codes = torch.tensor([[[0, 5], [31, 7]]])
    emb = tok.embed_codes(codes, 2)
    sem = F.normalize(tok.codebook_sem.weight, dim=-1)[codes].permute(0, 3, 1, 2)
    pix = F.normalize(tok.codebook_pix.weight, dim=-1)[codes].permute(0, 3, 1, 2)
    torch.testing.assert_close(emb, torch.cat([sem, pix], dim=1))
    torch.testing.assert_close(emb[:, :8].norm(dim=1), torch.ones(1, 2, 2))


def test_raw_codewords_are_searched_by_cosine_but_added_and_embedded_as_they_are():
    tok = _tokenizer(unit_codewords=False)
    unit = _tokenizer(unit_codewords=True)  # same seed: same weights
    images = _images(2, 6, 8, seed=3)
    one = Schedule(((3, 4),))
    assert torch.equal(tok.encode(images, one)[0], unit.encode(images, one)[0])  # the search is cosine
    codes = torch.tensor([[[0, 5], [31, 7]]])
    want = torch.cat([tok.codebook_sem.weight[codes], tok.codebook_pix.weight[codes]], -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(tok.embed_codes(codes, 0), want)
    assert not torch.allclose(tok.embed_codes(codes, 0).norm(dim=1), torch.ones(1, 2, 2))
    codes = tok.encode(images, SCHEDULE)
    f_sem, f_pix = tok.quantized_features(codes, SCHEDULE)
    want = sum(F.interpolate(tok.codebook_pix.weight[c].permute(0, 3, 1, 2), size=(3, 4), mode="bicubic")
               for c in codes)
    torch.testing.assert_close(f_pix, want)


def test_residual_inputs_are_each_steps_embedding_up_sampled_and_accumulated_ones_differ():
    images = _images(2, 6, 8, seed=1)
    codes = TOKENIZER.encode(images, SCHEDULE)
    residual = TOKENIZER.next_scale_inputs(codes, SCHEDULE)  # config default: residual (NextFlow)
    for k, x in enumerate(residual):
        want = F.interpolate(TOKENIZER.embed_codes(codes[k], k), size=SCHEDULE.steps[k + 1], mode="bicubic")
        torch.testing.assert_close(x, want)
    accumulated = TOKENIZER.next_scale_inputs(codes, SCHEDULE, mode="accumulated")
    assert not torch.allclose(accumulated[1], residual[1])


def test_decode_reads_the_pixel_half_only_and_decode_semantic_the_semantic_half():
    tok = _tokenizer()
    codes = tok.encode(_images(1, 6, 8), SCHEDULE)
    images, semantic = tok.decode(codes, SCHEDULE), tok.decode_semantic(codes, SCHEDULE)
    with torch.no_grad():
        tok.codebook_sem.weight.normal_()
    assert torch.equal(tok.decode(codes, SCHEDULE), images)
    assert not torch.allclose(tok.decode_semantic(codes, SCHEDULE), semantic)


# --- training forward -------------------------------------------------------------------------------

def test_forward_returns_the_multiscale_fields_and_named_losses():
    tok = _tokenizer(beta=0.5, semantic_weight=2.0, recon_weight=3.0, perceptual_weight=0.25)
    images = _images(2, 6, 8)
    out = tok(images, SCHEDULE, perceptual=lambda r, x: (r - x).abs().mean())
    assert out.reconstruction.shape == images.shape and out.semantic.shape == (2, 16, 3, 4)
    assert out.steps == (0, 1, 2) and [tuple(c.shape[1:]) for c in out.codes] == list(SCHEDULE.steps)
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.5 * out.commitment_loss + 2.0 * out.semantic_loss)
    torch.testing.assert_close(out.reconstruction_loss, F.mse_loss(out.reconstruction, images))
    torch.testing.assert_close(out.perceptual_loss, (out.reconstruction - images).abs().mean())
    torch.testing.assert_close(out.total, out.loss + 3.0 * out.reconstruction_loss + 0.25 * out.perceptual_loss)
    assert set(out.losses) == {"reconstruction", "perceptual", "codebook", "commitment", "semantic"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.losses.values())
    assert [c.tolist() for c in out.codes] == [c.tolist() for c in tok.encode(images, SCHEDULE)]
    usage = code_usage(out.codes, tok.codebook_size)
    assert usage.counts.shape == (3, 32)


def test_training_forward_drops_half_the_later_steps_and_keep_overrides():
    tok = _tokenizer().train()
    schedule = Schedule(((1, 1), (1, 2), (2, 2), (2, 3), (3, 4)))
    images = _images(1, 6, 8)
    seen = set()
    for seed in range(6):
        out = tok(images, schedule, generator=torch.Generator().manual_seed(seed))
        assert out.steps[0] == 0 and len(out.steps) == 3 and len(out.codes) == 3  # 2 of 4 later steps dropped
        assert [tuple(c.shape[1:]) for c in out.codes] == [schedule.steps[k] for k in out.steps]
        seen.add(out.steps)
    assert len(seen) > 1
    again = tok(images, schedule, generator=torch.Generator().manual_seed(0)).steps
    assert again == tok(images, schedule, generator=torch.Generator().manual_seed(0)).steps
    assert tok(images, schedule, keep=(0, 2, 4)).steps == (0, 2, 4)
    assert tok.eval()(images, schedule).steps == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    ("num_steps", "fraction", "kept"), [(1, 0.5, 1), (2, 0.5, 1), (5, 0.5, 3), (10, 0.5, 5), (4, 0.5, 2), (6, 0.0, 6)]
)
def test_drop_scales_drops_a_rounded_half_up_share_of_the_later_steps(num_steps, fraction, kept):
    keep = drop_scales(num_steps, fraction, generator=torch.Generator().manual_seed(1))
    assert len(keep) == kept and keep[0] == 0 and list(keep) == sorted(set(keep))


def test_quantization_runs_in_fp32_under_autocast():
    tok = _tokenizer()
    images = _images(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = tok.quantize(images, SCHEDULE)
        out = tok(images, SCHEDULE)
    assert all(x.dtype == torch.float32 for x in q.quantized)
    assert q.codebook_loss.dtype == torch.float32 and out.codebook_loss.dtype == torch.float32
    assert all(c.dtype == torch.int64 for c in q.codes)


def test_joint_stage_trains_every_branch_and_never_the_teacher():
    tok = _tokenizer()
    tok(_images(2, 6, 8), SCHEDULE).total.backward()
    for name in STAGES["joint"]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(tok, name).parameters()), name
    assert all(p.grad is None and not p.requires_grad for p in tok.teacher.parameters())


@pytest.mark.parametrize("stage", ["semantic", "pixel", "decoder", "joint"])
def test_stage_freezes_exactly_the_other_branches(stage):
    tok = _tokenizer().set_stage(stage)
    assert tok.stage == stage
    tok(_images(2, 6, 8), SCHEDULE).total.backward()
    trained = set(STAGES[stage])
    for name, child in tok.named_children():
        params = list(child.parameters())
        if name in trained:
            assert all(p.requires_grad for p in params)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
        else:
            assert all(not p.requires_grad and p.grad is None for p in params), name
    tok.set_stage("joint")
    assert all(p.requires_grad for n, p in tok.named_parameters() if not n.startswith("teacher."))


def test_cumulative_vq_loss_compares_the_running_sum_with_the_features_and_teaches_codeword_length():
    tok = _tokenizer(unit_codewords=False, vq_loss="cumulative")
    images = _images(2, 6, 8, seed=7)
    out = tok(images, SCHEDULE)  # eval mode: every step
    f = [x.detach() for x in tok.features(images)]
    want = 0.0
    for k in range(1, len(SCHEDULE.steps) + 1):
        f_hat = tok.quantized_features(out.codes[:k], SCHEDULE)
        err = sum((a - b).square().sum() for a, b in zip(f_hat, f, strict=True))
        want = want + err / sum(x.numel() for x in f)
    torch.testing.assert_close(out.codebook_loss, want / len(SCHEDULE.steps))
    torch.testing.assert_close(out.commitment_loss, out.codebook_loss)
    out.codebook_loss.backward()
    grad = tok.codebook_pix.weight.grad
    used = out.codes[0].reshape(-1)[0]
    row = tok.codebook_pix.weight[used].detach()
    assert grad[used].abs().sum() > 0 and (grad[used] @ row).abs() > 1e-6  # not only a turn: a length change


@pytest.mark.parametrize(("unit", "vq_loss"), [(True, "step"), (False, "cumulative")])
def test_straight_through_and_vq_losses_send_gradients_to_both_encoders(unit, vq_loss):
    tok = _tokenizer(unit_codewords=unit, vq_loss=vq_loss)
    out = tok(_images(1, 6, 8), SCHEDULE)
    out.commitment_loss.backward()
    assert tok.semantic_encoder.patch_embed.weight.grad.abs().sum() > 0
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.codebook_sem.weight.grad is None or tok.codebook_sem.weight.grad.abs().sum() == 0


# --- the teacher ------------------------------------------------------------------------------------

class _ConvTeacher(nn.Module):
    def __init__(self, dim=12, stride=2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=stride, stride=stride)

    def forward(self, images):
        return self.proj(images)


class _TokenTeacher(_ConvTeacher):
    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


def test_default_teacher_is_a_frozen_copy_of_the_initial_vit_trunk():
    tok = _tokenizer()
    assert isinstance(tok.teacher, EncoderTeacher)
    images = _images(2, 6, 8)
    before = tok.semantic_encoder.trunk(images).detach()
    torch.testing.assert_close(tok.teacher(images), before)
    opt = torch.optim.SGD([p for p in tok.parameters() if p.requires_grad], lr=0.5)
    tok.train()(images, SCHEDULE).total.backward()
    opt.step()
    assert not torch.allclose(tok.semantic_encoder.trunk(images), before)
    torch.testing.assert_close(tok.teacher(images), before)
    assert not tok.teacher.training  # train() keeps the teacher in eval mode


def test_teacher_loads_from_a_local_safetensors_file(tmp_path):
    torch.manual_seed(5)
    source = _ConvTeacher()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    teacher = load_teacher(_ConvTeacher(), path)
    assert torch.equal(teacher.proj.weight, source.proj.weight)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    tok = _tokenizer(teacher=teacher, teacher_dim=12)
    images = _images(2, 6, 8)
    out = tok(images, SCHEDULE)
    assert out.semantic.shape == (2, 12, 3, 4)
    torch.testing.assert_close(out.semantic_loss, semantic_loss(out.semantic, source(images)))
    assert tok.state_dict()["teacher.proj.weight"].shape == (12, 3, 2, 2)


def test_teacher_loads_from_a_weights_only_torch_file_and_may_give_tokens_or_other_grids(tmp_path):
    torch.manual_seed(6)
    path = tmp_path / "teacher.pt"
    torch.save(_TokenTeacher().state_dict(), path)
    tok = _tokenizer(teacher=load_teacher(_TokenTeacher(), path), teacher_dim=12)
    assert tok(_images(1, 6, 8), SCHEDULE).semantic.shape == (1, 12, 3, 4)
    coarse = _tokenizer(teacher=_ConvTeacher(stride=1), teacher_dim=12)  # a 6x8 map, area-resized to 3x4
    assert torch.isfinite(coarse(_images(1, 6, 8), SCHEDULE).semantic_loss)


def test_teacher_errors_name_the_fix(tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_file({"other.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointMismatchError, match=r"proj\.weight"):
        load_teacher(_ConvTeacher(), path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(_ConvTeacher(), tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module"):
        load_teacher("siglip", path)
    tok = _tokenizer(teacher=_ConvTeacher(dim=10), teacher_dim=12)
    with pytest.raises(ValueError, match=r"teacher\(images\) gave a map \(1, 10, 3, 4\).*teacher_dim"):
        tok(_images(1, 6, 8), SCHEDULE)
    tok = _tokenizer(teacher=_TokenTeacher(stride=1), teacher_dim=12)
    with pytest.raises(ValueError, match=r"gave tokens \(1, 48, 12\) but the tokenizer needs \[1, 12, 12\]"):
        tok(_images(1, 6, 8), SCHEDULE)


# --- small pieces and errors ------------------------------------------------------------------------

def test_sincos_positions_differ_per_cell_and_follow_the_grid():
    pos = sincos_2d(3, 4, 8)
    assert pos.shape == (12, 8) and torch.unique(pos, dim=0).shape[0] == 12
    torch.testing.assert_close(pos[:4, :4], pos[:1, :4].expand(4, 4))  # row half constant along a row
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(2, 2, 6)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t: t.encode(_images(1, 6, 6), SCHEDULE), ValueError, r"images are 6x6 .* needs 6x8 images"),
        (lambda t: t.encode(torch.zeros(1, 1, 6, 8), SCHEDULE), ValueError, r"images have 1 channels"),
        (lambda t: t.encode(_images(1, 6, 8), [(1, 1), (3, 4)]), TypeError, r"schedule must be a ScaleSchedule"),
        (lambda t: t.decode([torch.zeros(1, 1, 1, dtype=torch.long)] * 4, SCHEDULE), ValueError,
         r"codes has 4 grids but the schedule has 3 steps"),
        (lambda t: t.embed_codes(torch.full((1, 2, 2), 32), 0), ValueError, r"outside \[0, 32\)"),
        (lambda t: t.embed_codes(torch.zeros(1, 2, 2, dtype=torch.long), -1), ValueError, r"step must be an int"),
        (lambda t: t.next_scale_inputs(t.encode(_images(1, 6, 8), SCHEDULE), SCHEDULE, mode="sum"), ValueError,
         r"mode must be one of"),
        (lambda t: t.set_stage("vit"), ValueError, r"stage must be one of \['semantic', 'pixel', 'joint'"),
        (lambda t: t(_images(1, 6, 8), SCHEDULE, keep=(1, 0)), ValueError, r"keep must be a non-empty increasing"),
        (lambda t: t(_images(1, 6, 8), SCHEDULE, perceptual=lambda r, x: (r - x).abs()), ValueError,
         r"must give a scalar loss"),
        (lambda t: t(_images(1, 6, 8), SCHEDULE, perceptual="lpips"), TypeError, r"perceptual must be a callable"),
        (lambda t: drop_scales(3, 2.0), ValueError, r"fraction must be a number in \[0, 1\]"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(TOKENIZER)


def test_the_tiny_config_trains_on_cpu():
    tok = _tokenizer().train()
    schedule = Schedule(((1, 1), (2, 2), (4, 4)))
    images = F.interpolate(_images(4, 4, 4, seed=2), scale_factor=2, mode="nearest")
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(25):
        out = tok(images, schedule, keep=(0, 1, 2) if first is None else None, generator=gen)
        first = out.total.item() if first is None else first
        opt.zero_grad()
        out.total.backward()
        opt.step()
    final = tok.eval()(images, schedule)
    assert final.total.item() < 0.5 * first


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_picks_the_search_distance_of_the_residual_loop(normalize, monkeypatch):
    """``normalize`` reaches the residual loop (cosine search when True, Euclidean when False), and
    self-correction searches the same way; configs written before the field load as cosine."""
    import nxcore.tokenizer.dual.tokenizer as module
    from nxcore.tokenizer.dual import dual_tiny

    seen = {}
    real = module.residual_quantize

    def spy(*args, **kwargs):
        seen["normalize"] = kwargs["normalize"]
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "residual_quantize", spy)
    tokenizer = dual_tiny(normalize=normalize).build().eval()
    tokenizer.encode(torch.rand(1, 3, 8, 8) * 2 - 1, Schedule(((1, 1), (2, 2), (4, 4))))
    assert seen["normalize"] is normalize
    old = tokenizer.config.to_dict()
    del old["normalize"]
    assert type(tokenizer.config).from_dict(old).normalize is True
