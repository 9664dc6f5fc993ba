"""The FLOPs model: the paper's coefficients (Eqs. 9-11), the real-architecture count against
FlopCounterMode on real generation, and ``nx flops``."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxcore.schedule import Schedule, nextflow_schedule
from nxcore.tokenizer import Vocabulary
from nxrecipes.cli import main
from nxrecipes.eval.flops import (
    DecoderShape,
    counted_flops,
    cross_check,
    dit_flops,
    nextflow_flops,
    paper_coefficients,
    paper_mmdit_flops,
    paper_nextflow_flops,
    total,
    uniform_schedule,
)
from nxrecipes.nextflow import nextflow_7b, nextflow_tiny, separate_heads

VOCAB = Vocabulary(text_size=300, codebook_size=64, pad_to_multiple_of=8,
                   text_specials=(("<pad>", 0), ("<boi>", 1), ("<eoi>", 2)))
SCHEDULE = Schedule(((1, 1), (2, 2), (3, 3), (4, 4)))


def test_paper_coefficients_of_eqs_9_and_10():
    coef = paper_coefficients(nextflow_schedule(level=1024), prompt_tokens=100)
    assert coef["nextflow"] == (122_208, 256_215_912)
    assert coef["mmdit"] == (884_736, 1_207_959_552)


def test_eq_11_ratio_and_the_component_ratios_of_the_text():
    schedule = nextflow_schedule(level=1024)
    nf = paper_nextflow_flops(schedule, hidden=2048)
    dit = paper_mmdit_flops(4096, hidden=2048, steps=18)
    assert nf / 1e12 == pytest.approx(1.04, abs=0.005) and dit / 1e12 == pytest.approx(6.18, abs=0.005)
    assert dit / nf == pytest.approx(5.96, abs=0.005)
    coef = paper_coefficients(schedule)
    assert coef["mmdit"][0] / coef["nextflow"][0] == pytest.approx(7.2, abs=0.05)  # "FFN and projections"
    assert coef["mmdit"][1] / coef["nextflow"][1] == pytest.approx(4.7, abs=0.05)  # "attention"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 40), st.integers(1, 4), st.integers(1, 5))
def test_real_count_reduces_to_the_paper_for_its_layer(third, heads, prompt, steps, layers):
    """MHA with head_dim * heads = h and a SwiGLU of width 2h/3 is the paper's 12 s h^2 layer (an empty
    prompt differs: the model still runs one filler token)."""
    h = 6 * third * heads
    shape = DecoderShape(hidden=h, layers=layers, heads=heads, kv_heads=heads, head_dim=h // heads,
                         mlp=2 * h // 3, logits=0)
    schedule = Schedule(tuple((k, k + 1) for k in range(1, steps + 1)))
    assert total(nextflow_flops(shape, schedule, [prompt])).total == paper_nextflow_flops(
        schedule, hidden=h, layers=layers, prompt_tokens=prompt)
    tokens = schedule.grid[0] * schedule.grid[1]
    assert dit_flops(shape, tokens, steps=steps).total == paper_mmdit_flops(tokens, hidden=h, steps=steps,
                                                                           layers=layers)


@pytest.mark.parametrize(
    "changes,prompts,cfg",
    [({}, 12, True), ({}, [7, 7, 3], True), ({}, [5], False), ({"head": "separate"}, [4, 9], True),
     ({"num_layers": 1, "layer_heads": (4, 4)}, [6], True)],
)
def test_count_equals_flop_counter_on_real_generation(changes, prompts, cfg):
    changes = dict(changes)
    separate = changes.pop("head", None) == "separate"
    heads = changes.pop("layer_heads", None)
    config = nextflow_tiny(VOCAB, 8, num_layers=changes.pop("num_layers", 2))
    if heads is not None:
        config = nextflow_tiny(VOCAB, 8, num_layers=1,
                               layer=type(config.layer)(dim=128, num_heads=heads[0], num_kv_heads=heads[1],
                                                        hidden=200))
    if separate:
        config = separate_heads(config)
    result = cross_check(config, SCHEDULE, prompt_tokens=prompts, cfg=cfg)
    assert result["counted"] == result["analytic"] > 0
    assert result["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 0  # the added formula


def test_counted_flops_adds_the_cpu_sdpa_formula():
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 7, 8)
    _, by_op = counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True))
    assert sum(by_op.values()) == 4 * 4 * 5 * 7 * 8


def test_cfg_doubles_every_term_but_the_shared_input_projection():
    shape = DecoderShape.of(nextflow_7b())
    one = total(nextflow_flops(shape, nextflow_schedule(level=256), [100]))
    two = total(nextflow_flops(shape, nextflow_schedule(level=256), [100, 100]))
    assert (two.projections, two.mlp, two.head) == (2 * one.projections, 2 * one.mlp, 2 * one.head)
    assert one.inputs < two.inputs < 2 * one.inputs  # the scales' projection runs once per layout


def test_7b_shape_and_head_over_the_codes_only():
    shape = DecoderShape.of(nextflow_7b())
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.mlp) == (
        3584, 28, 28, 4, 128, 18944)
    assert shape.logits == 16384


def test_uniform_schedule_grows_linearly():
    assert uniform_schedule(64, 4).steps == ((16, 16), (32, 32), (48, 48), (64, 64))
    assert uniform_schedule(2, 4).steps == ((1, 1), (1, 1), (2, 2), (2, 2))


@pytest.mark.parametrize(
    "call,message",
    [(lambda: paper_mmdit_flops(0, hidden=8), "tokens must be an int >= 1, got 0"),
     (lambda: paper_nextflow_flops(SCHEDULE, hidden=8, prompt_tokens=-1), "prompt_tokens must be an int >= 0"),
     (lambda: uniform_schedule(64, 2.5), "num_steps must be an int"),
     (lambda: nextflow_flops(DecoderShape.of(nextflow_7b()), SCHEDULE, []), "prompt_tokens is empty"),
     (lambda: DecoderShape.of("7b"), "NextFlowConfig")],
)
def test_bad_inputs(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_nx_flops_prints_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert main(["flops", "--per-scale", "256", "--check", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5.962" in printed and ": equal" in printed
    report = json.loads(out.read_text())
    assert len(report["per_scale"]) == 1 + 12
    assert [row["level"] for row in report["real"]] == [256, 512, 1024]
    assert sum(row["share"] for row in report["per_scale"]) == pytest.approx(1.0)


def test_nx_flops_rejects_a_missing_run(tmp_path, capsys):
    assert main(["flops", "--run", str(tmp_path)]) == 2
    assert "model_config.json" in capsys.readouterr().err
