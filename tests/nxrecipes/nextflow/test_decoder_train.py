"""The diffusion decoder in NextFlow: the pipeline's ``decoder=`` switch, the CLI flags, and a tiny
decoder training run that reloads."""

import copy
import math

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.decoder import DiffusionDecoder, DiffusionDecoderConfig, VQDecoder
from nxrecipes.cli import build_parser
from nxrecipes.nextflow.decoder_train import (
    DecoderTrainConfig,
    decoder_training_tiny,
    load_decoder,
    train_decoder,
)
from nxrecipes.nextflow.generate import ImageSampling
from nxrecipes.nextflow.pipeline import NextFlowPipeline

SAMPLING = ImageSampling(cfg=2.0, top_k=4)
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def decoders():
    unet, dit, up = DiffusionDecoder.examples()  # built for dual_tiny's condition (8, 4, 16)
    return {"unet": unet.eval(), "dit": dit.eval(), "2x": up.eval()}


def test_the_pipeline_swaps_decoders_on_the_same_codes(world, decoders):
    pipeline = NextFlowPipeline(world.model(), world.text, world.image, world.schedule,
                                diffusion_decoder=decoders["unet"])
    vq = pipeline.text_to_image(PROMPTS, sampling=SAMPLING, seed=3)
    torch.testing.assert_close(vq, pipeline.text_to_image(PROMPTS, sampling=SAMPLING, seed=3, decoder="vq"))
    codes = pipeline.image_codes(PROMPTS, sampling=SAMPLING, seed=3)
    torch.testing.assert_close(pipeline.decode(codes), vq)
    torch.testing.assert_close(pipeline.decode(codes, decoder=VQDecoder()), vq)
    diffused = pipeline.text_to_image(PROMPTS, sampling=SAMPLING, seed=3, decoder="diffusion")
    assert diffused.shape == vq.shape == (2, 3, 8, 8) and 0 <= diffused.min() and diffused.max() <= 1
    torch.testing.assert_close(diffused, pipeline.decode(codes, decoder="diffusion", captions=PROMPTS, seed=3))
    assert not torch.equal(diffused, vq)
    for other in (decoders["dit"], decoders["2x"]):
        out = pipeline.text_to_image(PROMPTS, sampling=SAMPLING, seed=3, decoder=other)
        assert out.shape == (2, 3, 8 * other.scale_factor, 8 * other.scale_factor)
    edited = pipeline.edit(torch.zeros(1, 3, 8, 8), ["make it red"], sampling=SAMPLING, decoder="diffusion")
    assert edited.shape == (1, 3, 8, 8)


def test_a_missing_or_unknown_decoder_is_named(world):
    pipeline = NextFlowPipeline(world.model(), world.text, world.image, world.schedule)
    with pytest.raises(ValueError, match="no diffusion decoder; train one with `nx nextflow train-decoder RUN`"):
        pipeline.text_to_image(PROMPTS, decoder="diffusion")
    with pytest.raises(ValueError, match=r"decoder must be one of \('vq', 'diffusion'\)"):
        pipeline.text_to_image(PROMPTS, decoder="gan")
    with pytest.raises(TypeError, match="decoder must be one of .* or an nxcore.decoder.ImageDecoder, got int"):
        pipeline.decode(pipeline.encode(torch.zeros(1, 3, 8, 8)), decoder=3)
    with pytest.raises(TypeError, match="diffusion_decoder must be an nxcore.decoder.ImageDecoder"):
        NextFlowPipeline(world.model(), world.text, world.image, world.schedule, diffusion_decoder="x")


def test_cli_flags():
    parser = build_parser()
    args = parser.parse_args(["nextflow", "generate", "RUN", "--prompt", "a red circle", "--decoder", "diffusion",
                              "--decoder-dir", "D"])
    assert (args.decoder, args.decoder_dir) == ("diffusion", "D")
    assert parser.parse_args(["nextflow", "generate", "RUN", "--prompt", "x"]).decoder == "vq"
    assert parser.parse_args(["nextflow", "edit", "RUN", "--image", "a.png", "--instruction", "x",
                              "--decoder", "diffusion"]).decoder == "diffusion"
    with pytest.raises(SystemExit):
        parser.parse_args(["nextflow", "generate", "RUN", "--prompt", "x", "--decoder", "gan"])
    args = parser.parse_args(["nextflow", "train-decoder", "RUN", "--denoiser", "dit", "--upsample", "--init", "D",
                              "--minutes", "1"])
    assert (args.denoiser, args.upsample, args.init, args.minutes) == ("dit", True, "D", 1.0)


def test_a_tiny_decoder_run_trains_and_reloads(world, tmp_path):
    tok = tmp_path / "tokenizer"
    save_pretrained(copy.deepcopy(world.image), tok)
    cfg = decoder_training_tiny(tok, tmp_path / "dec", steps=2, images=8, batch_size=4, warmup_steps=0,
                                cond_channels=8, num_steps=2)
    assert DecoderTrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.decoder.condition_dims == (8, 4, 16) and cfg.data.size == 32
    summary = train_decoder(cfg, progress=False)
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    decoder = load_decoder(tmp_path / "dec")
    assert isinstance(decoder, DiffusionDecoder) and decoder.config == cfg.decoder and not decoder.training
    assert DiffusionDecoderConfig.load(tmp_path / "dec" / "config.json") == cfg.decoder
    up = decoder_training_tiny(tok, tmp_path / "dec2x", upsample=True, init=tmp_path / "dec", steps=1, images=4,
                               batch_size=4, warmup_steps=0, cond_channels=8)
    assert up.decoder.scale_factor == 2 and train_decoder(up, progress=False)["step"] == 1
    with pytest.raises(FileNotFoundError, match="holds no trained diffusion decoder"):
        load_decoder(tmp_path / "nothing")
    with pytest.raises(ValueError, match="denoiser must be one of"):
        decoder_training_tiny(tok, denoiser="gan")
