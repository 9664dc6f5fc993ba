"""The official NextStep-1 tokenizer layout: key names, config.json reading, checkpoint.pt loading.

The expected keys are written out here from the documented naming scheme (Flux/LDM autoencoder names),
and the checkpoints are written by the tests themselves in the official layout: config.json with the
official field names, checkpoint.pt a torch pickle of the state dict.
"""

import json
from collections import OrderedDict

import pytest
import torch

from nxcore.checkpoint import CheckpointMismatchError
from nxcore.tokenizer.autoencoder import (
    NextStepAutoencoder,
    config_from_official,
    from_official,
    nextstep1_f8ch16,
    patch_layer_norm,
    patchify,
)

TINY = {"in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4,
        "resolution": 256, "scaling_factor": 0.3611, "shift_factor": 0.1159, "encoder_norm": True, "psz": 2,
        "deterministic": True}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def official_keys(ch, ch_mult, num_res_blocks, z_channels, in_channels=3, out_ch=3):
    """(key, shape) of the official autoencoder, in registration order."""
    keys = []

    def conv(name, i, o, k):
        keys.extend([(f"{name}.weight", (o, i, k, k)), (f"{name}.bias", (o,))])

    def norm(name, c):
        keys.extend([(f"{name}.weight", (c,)), (f"{name}.bias", (c,))])

    def resnet(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", i, o, 3)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o, 3)
        if i != o:
            conv(f"{name}.nin_shortcut", i, o, 1)

    def mid(name, c):
        resnet(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{part}", c, c, 1)
        resnet(f"{name}.block_2", c, c)

    widths = [ch * m for m in ch_mult]
    conv("encoder.conv_in", in_channels, ch, 3)
    c = ch
    for i, w in enumerate(widths):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c, w)
            c = w
        if i < len(widths) - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder.mid", c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, 2 * z_channels, 3)

    conv("decoder.conv_in", z_channels, widths[-1], 3)
    mid("decoder.mid", widths[-1])
    for i, w in enumerate(widths):  # up.0 is the highest resolution; its input comes from level 1
        c = widths[i + 1] if i + 1 < len(widths) else widths[-1]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c, w)
            c = w
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", w, w, 3)
    norm("decoder.norm_out", widths[0])
    conv("decoder.conv_out", widths[0], out_ch, 3)
    return keys


class _Payload:
    """Any non-tensor object: pickled by reference, so loading it would import and run code."""


def _official_state(seed=0, **sizes):
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(shape, generator=gen) * 0.2) for k, shape in official_keys(**sizes))


def _write(directory, config, state):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "checkpoint.pt")
    return directory


def _sizes(config):
    return {k: config[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch")}


# --- key names ----------------------------------------------------------------------------------

def _shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_key_names_and_shapes_equal_the_official_list_at_a_tiny_config():
    model = NextStepAutoencoder(config_from_official(TINY))
    assert _shapes(model) == official_keys(**_sizes(TINY))


def test_key_names_equal_the_official_list_at_full_size():
    with torch.device("meta"):
        model = NextStepAutoencoder(nextstep1_f8ch16())
    expected = official_keys(128, [1, 2, 4, 4], 2, 16)
    assert _shapes(model) == expected
    assert sum(torch.Size(s).numel() for _, s in expected) == sum(p.numel() for p in model.parameters())
    assert "decoder.up.3.upsample.conv.weight" in model.state_dict()
    assert "decoder.up.0.upsample.conv.weight" not in model.state_dict()
    assert not any("quant_conv" in k for k in model.state_dict())


# --- loading ------------------------------------------------------------------------------------

def test_official_layout_loads_and_encodes_with_its_conventions(tmp_path):
    state = _official_state(**_sizes(TINY))
    model = from_official(_write(tmp_path / "tok", TINY, state))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)
    c = model.config
    assert (c.encoder_norm, c.norm_patch_size, c.patch_size, c.scaling_factor, c.shift_factor) == (
        True, 2, 2, 0.3611, 0.1159)
    assert (model.latent_dim, model.downsample) == (16, 4)
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = model.encoder(images)[:, :4]
        expected = patchify((patch_layer_norm(mean, 2) - 0.1159) * 0.3611, 2)
        torch.testing.assert_close(model.encode(images), expected)
        assert model.decode(expected).shape == images.shape


def test_a_state_dict_nested_under_state_dict_is_accepted(tmp_path):
    state = _official_state(**_sizes(TINY))
    model = from_official(_write(tmp_path / "tok", TINY, {"state_dict": state}), dtype=torch.float64)
    assert model.encoder.conv_in.weight.dtype == torch.float64
    torch.testing.assert_close(model.encoder.conv_in.weight, state["encoder.conv_in.weight"].double())


def test_missing_unexpected_and_misshaped_keys_raise_the_mismatch_error(tmp_path):
    state = _official_state(**_sizes(TINY))
    del state["decoder.conv_out.bias"]
    state["encoder.quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    state["encoder.conv_in.bias"] = torch.zeros(31)
    with pytest.raises(CheckpointMismatchError, match="1 missing, 1 unexpected, 1 mis-shaped") as info:
        from_official(_write(tmp_path / "tok", TINY, state))
    report = info.value.report
    assert report.missing == ("decoder.conv_out.bias",)
    assert report.unexpected == ("encoder.quant_conv.weight",)
    assert report.mismatched[0].key == "encoder.conv_in.bias"


def test_a_checkpoint_with_code_objects_is_refused(tmp_path):
    state = dict(_official_state(**_sizes(TINY)))
    state["extra"] = _Payload()
    with pytest.raises(ValueError, match="refused because unpickling them could run code"):
        from_official(_write(tmp_path / "tok", TINY, state))


def test_missing_files_and_bad_json_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        from_official(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks checkpoint.pt"):
        from_official(tmp_path / "half")
    directory = _write(tmp_path / "bad", TINY, _official_state(**_sizes(TINY)))
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        from_official(directory)
    (directory / "config.json").write_text(json.dumps({**TINY, "ch": 48}))
    with pytest.raises(ValueError, match=r"config.json: .*channel width 48 .* not divisible by norm_groups = 32"):
        from_official(directory)


# --- config.json conventions --------------------------------------------------------------------

def test_gh_v1_reads_psz_null_with_encoder_norm_as_per_pixel_norm():
    config = config_from_official({**TINY, "psz": None})
    assert config.encoder_norm and config.norm_patch_size == 1


def test_gh_v2_reads_psz_null_as_no_norm():
    config = config_from_official({**TINY, "psz": None}, convention="gh-v2")
    assert not config.encoder_norm


def test_absent_keys_take_each_conventions_defaults():
    v1 = config_from_official({})
    assert (v1.ch, v1.ch_mult, v1.num_res_blocks, v1.z_channels) == (128, (1, 2, 4, 4), 2, 16)
    assert (v1.scaling_factor, v1.shift_factor, v1.encoder_norm) == (0.3611, 0.1159, False)
    v2 = config_from_official({}, convention="gh-v2")
    assert (v2.scaling_factor, v2.shift_factor, v2.encoder_norm, v2.norm_patch_size) == (1.0, 0.0, True, 1)


def test_unknown_official_keys_warn_and_bad_values_raise():
    with pytest.warns(UserWarning, match=r"\['latent_channels'\] are not autoencoder parameters"):
        config_from_official({**TINY, "latent_channels": 16})
    with pytest.raises(ValueError, match=r"convention must be one of \['gh-v1', 'gh-v2'\], got 'v3'"):
        config_from_official(TINY, convention="v3")
    with pytest.raises(ValueError, match=r"psz = 0 is not allowed"):
        config_from_official({**TINY, "psz": 0})
    with pytest.raises(TypeError, match="data must be the parsed config.json"):
        config_from_official("config.json")
