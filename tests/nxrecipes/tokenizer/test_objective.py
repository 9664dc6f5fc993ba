import pytest
import torch

from nxcore.schedule import Schedule
from nxrecipes.tokenizer.evaluate import evaluate
from nxrecipes.tokenizer.objective import (
    AutoencoderObjective,
    DualCodebookObjective,
    MultiScaleVQObjective,
    StagedObjective,
    TokenizerObjective,
    square_schedule,
)

from .conftest import VQ_STEPS, tiny_ae_config, tiny_dual_config, tiny_vq_config


def test_objectives_fit_the_protocol_and_round_trip_json():
    objectives = (AutoencoderObjective(gamma=0.2, kl_weight=1e-6), MultiScaleVQObjective(steps=VQ_STEPS),
                  DualCodebookObjective(steps=VQ_STEPS))
    for objective in objectives:
        assert isinstance(objective, TokenizerObjective)
        assert type(objective).from_json(objective.to_json()) == objective
        assert objective.build() is objective


def test_autoencoder_objective_gives_a_differentiable_loss_and_no_codes(images):
    torch.manual_seed(0)
    model = tiny_ae_config().build()
    out = AutoencoderObjective(kl_weight=1e-3).loss(model, images)
    assert out.total.ndim == 0 and out.total.requires_grad
    assert set(out.parts) == {"l2", "kl"} and out.codes is None
    out.total.backward()
    rec = AutoencoderObjective().reconstruct(model, images)
    assert rec.images.shape == images.shape and rec.codes is None


def test_vq_objective_gives_codes_per_scale_and_named_parts(images):
    torch.manual_seed(0)
    model = tiny_vq_config().build()
    objective = MultiScaleVQObjective(steps=VQ_STEPS, l1_weight=0.5)
    out = objective.loss(model, images)
    assert {"l2", "l1", "vq", "codebook", "commitment"} <= set(out.parts)
    assert [tuple(c.shape[1:]) for c in out.codes] == list(VQ_STEPS)
    expected = out.parts["l2"] + 0.5 * out.parts["l1"] + out.parts["vq"]
    assert torch.allclose(out.total.detach(), expected)
    rec = objective.reconstruct(model, images)
    encoded = model.encode(images, Schedule(VQ_STEPS))
    assert all(torch.equal(a, b) for a, b in zip(rec.codes, encoded, strict=True))


def test_dual_objective_uses_the_tokenizers_own_total(images):
    torch.manual_seed(0)
    model = tiny_dual_config().build()
    objective = DualCodebookObjective(steps=VQ_STEPS)
    out = objective.loss(model, images)
    assert {"reconstruction", "semantic", "codebook", "commitment", "vq"} <= set(out.parts)
    assert out.total.requires_grad and 1 <= len(out.codes) <= len(VQ_STEPS)  # scale dropping
    rec = objective.reconstruct(model, images)
    assert [tuple(c.shape[1:]) for c in rec.codes] == list(VQ_STEPS) and rec.images.shape == images.shape
    with pytest.raises(TypeError, match=r"DualCodebookObjective trains a DualCodebookTokenizer"):
        objective.loss(tiny_vq_config().build(), images)


def test_evaluate_reports_psnr_ssim_and_usage(images):
    torch.manual_seed(0)
    model = tiny_vq_config().build()
    report = evaluate(model, MultiScaleVQObjective(steps=VQ_STEPS), list(images), batch_size=4)
    assert report.images == len(images) and report.psnr > 0 and -1 <= report.ssim <= 1
    per = report.codes["per_scale"]
    assert per["tokens"] == [len(images) * h * w for h, w in VQ_STEPS]
    values = report.log_values()
    assert {"eval/psnr", "eval/ssim", "usage/all", "usage/scale_03", "perplexity/scale_00"} <= set(values)
    assert "scale  tokens  usage" in report.format_table()


def test_square_schedule_is_var_like_and_ends_on_the_grid():
    assert square_schedule(16) == tuple((s, s) for s in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert square_schedule(8)[-1] == (8, 8) and square_schedule(1) == ((1, 1),)
    assert square_schedule(21)[-2:] == ((20, 20), (21, 21))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: AutoencoderObjective().loss(tiny_vq_config().build(), torch.zeros(1, 3, 32, 32)), TypeError,
         r"AutoencoderObjective trains a NextStepAutoencoder, got MultiScaleVQTokenizer"),
        (lambda: AutoencoderObjective().loss(tiny_ae_config().build(), torch.zeros(3, 32, 32)), TypeError,
         r"images must be a float tensor \[batch, channels, height, width\].*\(3, 32, 32\)"),
        (lambda: AutoencoderObjective(gamma=-1.0), ValueError, r"AutoencoderObjective.gamma = -1.0"),
        (lambda: MultiScaleVQObjective(steps=((2, 2), (1, 1))), ValueError, r"steps must never shrink"),
        (lambda: square_schedule(0), ValueError, r"grid must be an int >= 1.*got 0"),
        (lambda: evaluate(tiny_ae_config().build(), "ae", [torch.zeros(3, 32, 32)]), TypeError,
         r"objective must be a TokenizerObjective.*got str"),
        (lambda: evaluate(tiny_ae_config().build(), AutoencoderObjective(), []), ValueError, r"dataset is empty"),
    ],
)
def test_bad_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dual_stages_split_the_updates_in_order_and_round_trip_json():
    objective = DualCodebookObjective(steps=VQ_STEPS, stages=[["pixel", 0.25], ["joint", 0.5], ["decoder", 0.25]])
    assert objective.stages == (("pixel", 0.25), ("joint", 0.5), ("decoder", 0.25))
    assert isinstance(objective, StagedObjective)
    assert [objective.stage_index(s, 8) for s in range(8)] == [0, 0, 1, 1, 1, 1, 2, 2]
    assert objective.stage_index(100, 8) == 2  # past the plan: the last stage
    assert DualCodebookObjective.from_json(objective.to_json()) == objective
    assert DualCodebookObjective(steps=VQ_STEPS).stage_index(3, 8) is None  # no stages: as built
    model = tiny_dual_config().build()
    assert objective.enter_stage(model, 0) == "pixel" and model.stage == "pixel"
    assert not any(p.requires_grad for p in model.semantic_encoder.parameters())
    with pytest.raises(TypeError, match=r"trains a DualCodebookTokenizer"):
        objective.enter_stage(tiny_vq_config().build(), 0)
    with pytest.raises(ValueError, match=r"index must be a stage index in \[0, 3\)"):
        objective.enter_stage(model, 3)


@pytest.mark.parametrize(
    ("stages", "error", "match"),
    [
        ((("pixel", 0.5), ("joint", 0.4)), ValueError, r"fractions sum to 0\.9, not 1"),
        ((("pixels", 1.0),), ValueError, r"names stage 'pixels'; the stages are \['semantic', 'pixel'"),
        ((("pixel", 0.0), ("joint", 1.0)), ValueError, r"stages\[0\] = \('pixel', 0\.0\) is not allowed"),
        ((("pixel",),), ValueError, r"stages\[0\] = \('pixel',\) is not allowed"),
        ("pixel", TypeError, r"stages must be a tuple of \(stage, fraction\) pairs"),
    ],
)
def test_bad_dual_stages_are_named(stages, error, match):
    with pytest.raises(error, match=match):
        DualCodebookObjective(steps=VQ_STEPS, stages=stages)


def test_dual_truncate_trains_on_prefixes_that_decode_to_the_image_so_far(images):
    g = torch.Generator().manual_seed(0)
    always = DualCodebookObjective(steps=VQ_STEPS, truncate=1.0)
    assert {always.keep_steps(g) for _ in range(200)} == {tuple(range(j)) for j in range(1, len(VQ_STEPS))}
    assert DualCodebookObjective(steps=VQ_STEPS).keep_steps(g) is None
    half = DualCodebookObjective(steps=VQ_STEPS, truncate=0.5)
    assert 0.4 < sum(half.keep_steps(g) is None for _ in range(400)) / 400 < 0.6
    assert DualCodebookObjective.from_json(half.to_json()) == half

    torch.manual_seed(0)
    from nxcore.tokenizer.dual import dual_tiny

    model = dual_tiny(ch_mult=(1, 2, 2), codebook_size=16, scale_drop=0.0).build()
    out = always.loss(model, images)
    kept = len(out.codes)
    assert 1 <= kept < len(VQ_STEPS)
    assert [tuple(c.shape[1:]) for c in out.codes] == list(VQ_STEPS[:kept])
    model.eval()
    torch.testing.assert_close(out.reconstruction.clamp(-1, 1), model.decode(out.codes, Schedule(VQ_STEPS)),
                               rtol=1e-4, atol=1e-4)  # decode clamps
    with pytest.raises(ValueError, match="truncate"):
        DualCodebookObjective(steps=VQ_STEPS, truncate=1.5)


def test_dual_training_tiny_routes_truncate_to_the_objective(tmp_path):
    from nxrecipes.tokenizer.train import dual_codebook_training_tiny

    cfg = dual_codebook_training_tiny(tmp_path, steps=1, size=32, truncate=0.25, lr=1e-3)
    assert cfg.objective.truncate == 0.25 and cfg.train.lr == 1e-3
