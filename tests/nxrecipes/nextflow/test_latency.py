"""The latency harness on CPU at the tiny config: every forward timed and costed, floors and MFU
consistent with the FLOPs model and the ceilings."""

import pytest
import torch

from nxrecipes.eval.flops import DecoderShape, nextflow_flops
from nxrecipes.nextflow.latency import (
    Ceilings,
    LatencySettings,
    generation_latency,
    measure_ceilings,
    random_nextflow,
    random_tokenizer,
)

CEILINGS = Ceilings(flops_per_s=1e11, bytes_per_s=1e10)


@pytest.fixture(scope="module")
def parts(world):
    from nxcore.tokenizer.dual import dual_tiny

    return random_nextflow(world.config()), random_tokenizer(dual_tiny())


@pytest.mark.parametrize("cfg,batch", [(3.0, 1), (1.0, 2)])
def test_report_costs_every_forward_with_the_flops_model(world, parts, cfg, batch):
    model, tokenizer = parts
    settings = LatencySettings(batch=batch, prompt_tokens=6, cfg=cfg, repeats=2, warmup=0)
    report = generation_latency(model, tokenizer, world.schedule, settings, ceilings=CEILINGS)
    rows = batch * (2 if cfg != 1.0 else 1)
    assert report["settings"]["rows"] == rows
    lengths = [6] * batch + ([0] * batch if cfg != 1.0 else [])
    expected = nextflow_flops(DecoderShape.of(model), world.schedule, lengths)
    assert [f["forward"] for f in report["forwards"]] == [s.name for s in expected]
    for row, step in zip(report["forwards"], expected, strict=True):
        assert row["gflop"] == step.flops.total / 1e9
        assert row["mfu"] == pytest.approx(step.flops.total / (row["ms"] / 1e3) / CEILINGS.flops_per_s)
        assert row["floor_ms"] >= 1e3 * step.flops.total / CEILINGS.flops_per_s * (1 - 1e-12)
    assert report["decode"]["gflop"] > 0  # the tokenizer's convolutions, counted
    floors = report["floors"]
    assert floors["roofline_s"] >= max(floors["compute_s"], floors["weights_s"]) * (1 - 1e-9)
    assert report["ratio_to_floor"] == pytest.approx(report["seconds"]["per_call"] / floors["roofline_s"])
    assert len(report["seconds"]["runs"]) == 2
    assert report["seconds"]["per_image"] == pytest.approx(report["seconds"]["per_call"] / batch)


def test_weight_bytes_count_the_layers_and_the_code_rows_of_the_head(world, parts):
    model, tokenizer = parts
    report = generation_latency(model, tokenizer, world.schedule, LatencySettings(repeats=1, warmup=0,
                                                                                  prompt_tokens=3),
                                ceilings=CEILINGS)
    layers = sum(p.numel() for p in model.layers.parameters()) + model.dim  # + the final norm
    expected = 4 * (layers + model.dim**2 + model.vocabulary.codebook_size * model.dim)
    assert report["weight_bytes"] == expected


def test_random_models_are_built_in_the_asked_dtype(world):
    from nxcore.tokenizer.dual import dual_tiny

    model = random_nextflow(world.config(), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored
    assert random_tokenizer(dual_tiny(), dtype=torch.float64).decoder.conv_in.weight.dtype == torch.float64


def test_measured_ceilings_are_positive():
    c = measure_ceilings("cpu", matrix=64, copy_bytes=1 << 20, repeats=1)
    assert c.flops_per_s > 0 and c.bytes_per_s > 0 and "measured" in c.source


def test_bad_inputs(world, parts):
    model, tokenizer = parts
    with pytest.raises(TypeError, match="model must be a NextFlow"):
        generation_latency(tokenizer, tokenizer, world.schedule)
    with pytest.raises(ValueError, match="batch"):
        LatencySettings(batch=0)
