"""NextStep1Config: the 14B sizes of the fact sheet (§1.8), the JSON round trip, builders that keep
the head matched to the decoder, and clear errors for inconsistent fields."""

import pytest
import torch

from nxcore.nn import DecoderLayerConfig
from nxrecipes.nextstep1 import FlowHeadConfig, NextStep1Config, nextstep1_14b, nextstep1_tiny


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_14b_has_the_sizes_of_nextstep1_large():
    cfg = nextstep1_14b()
    assert (cfg.num_layers, cfg.dim, cfg.head_dim, cfg.vocab_size, cfg.rope_theta) == (48, 5120, 128, 152064, 1e6)
    assert (cfg.pad_id, cfg.image_area_id, cfg.boi, cfg.eoi, cfg.image_placeholder_id) == (
        151665, 151666, 151667, 151668, 151669)
    with torch.device("meta"):
        model = cfg.build()
    assert all(_count(layer) == 275_268_608 for layer in model.layers)
    assert _count(model.image_in_projector) + _count(model.image_out_projector) == 26_552_320
    assert _count(model.image_head) == 157_228_096
    assert _count(model.embed_tokens) == _count(model.lm_head) == 152064 * 5120
    assert _count(model.norm) == 5120
    total = model.num_parameters()
    assert total == 48 * 275_268_608 + 2 * 152064 * 5120 + 5120 + 26_552_320 + 157_228_096
    assert round(total / 1e9, 2) == 14.95


def test_config_round_trips_through_json_with_typed_sub_configs():
    cfg = nextstep1_tiny(lm_loss_weight=0.1, use_gen_pos_embed=True, gen_pos_grid=4)
    text = cfg.to_json()
    assert '"type": "nxrecipes.nextstep1.head:FlowHeadConfig"' in text
    assert '"type": "nxcore.nn.decoder:DecoderLayerConfig"' in text
    back = NextStep1Config.from_json(text)
    assert back == cfg and isinstance(back.head, FlowHeadConfig)


def test_builders_size_the_head_to_the_decoder():
    layer = DecoderLayerConfig(dim=64, num_heads=2, hidden=96)
    cfg = nextstep1_tiny(layer=layer, latent_dim=16)
    assert (cfg.head.cond_dim, cfg.head.latent_dim, cfg.head.width, cfg.head.depth) == (64, 16, 128, 3)
    assert nextstep1_14b().head == FlowHeadConfig(cond_dim=5120, latent_dim=64, width=1536, depth=12, batch_mul=4)
    assert nextstep1_tiny().lm_loss_weight == 0.01 and nextstep1_tiny().image_loss_weight == 1.0


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"head": FlowHeadConfig(cond_dim=256, width=32, depth=1)}, ValueError,
         r"head.cond_dim = 256 but the decoder width is 128; build the head with cond_dim=128"),
        ({"head": FlowHeadConfig(cond_dim=128, latent_dim=16, width=32, depth=1)}, ValueError,
         r"head.latent_dim = 16 but latent_dim = 64"),
        ({"boi": 5000}, ValueError, r"NextStep1Config.boi = 5000 is outside the vocabulary \[0, 1032\)"),
        ({"eoi": 1026}, ValueError, r"special ids must be distinct"),
        ({"layer": {"dim": 128}}, TypeError, r"layer must be a DecoderLayerConfig, got dict"),
        ({"lm_loss_weight": -1.0}, ValueError, r"NextStep1Config.lm_loss_weight = -1.0"),
        ({"num_layers": 0}, ValueError, r"NextStep1Config.num_layers = 0"),
        ({"tie_word_embeddings": 1}, TypeError, r"tie_word_embeddings = 1 is not allowed; expected True or False"),
        ({"use_gen_pos_embed": True, "layer": DecoderLayerConfig(dim=66, num_heads=3, hidden=8)}, ValueError,
         r"use_gen_pos_embed needs a decoder width divisible by 4"),
    ],
)
def test_inconsistent_fields_are_rejected_by_name(changes, error, message):
    with pytest.raises(error, match=message):
        nextstep1_tiny(**changes)
