"""VAR's official VQVAE layout: key names at a tiny config, loading a ``.pth`` written in that layout
(every φ-sharing variant, the code-hit buffer), config inference from shapes, clear mismatch errors.

The tiny checkpoints are written here in the official layout; the official code itself is not
needed (its numerical parity was checked beside it, see the tokenizer's issue note).
"""

import pytest
import torch

from nxcore.checkpoint import CheckpointMismatchError
from nxcore.schedule import Schedule
from nxcore.tokenizer.multiscale import (
    MultiScaleVQTokenizer,
    config_from_official_state,
    from_official,
    multiscale_vq_tiny,
    official_key,
    to_official_state,
)

SCHEDULE = Schedule(((1, 1), (2, 2), (3, 4)))


def _tokenizer(**changes) -> MultiScaleVQTokenizer:
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(multiscale_vq_tiny(**changes)).eval()
    with torch.no_grad():  # O(1) changes so that loading the wrong tensor shows
        for p in tok.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return tok


def _images(seed=0):
    return torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _resnet(prefix, shortcut=False):
    names = [f"{prefix}.{m}.{p}" for m in ("norm1", "conv1", "norm2", "conv2") for p in ("weight", "bias")]
    return names + ([f"{prefix}.nin_shortcut.weight", f"{prefix}.nin_shortcut.bias"] if shortcut else [])


def _attn(prefix):
    return [f"{prefix}.{m}.{p}" for m in ("norm", "qkv", "proj_out") for p in ("weight", "bias")]


def _conv(prefix):
    return [f"{prefix}.weight", f"{prefix}.bias"]


# VAR's module tree (models/basic_vae.py, quant.py, vqvae.py) for ch 8, ch_mult (1, 2), one ResNet
# block per level, attention on, two φ convs: written out by hand from the official code.
TINY_OFFICIAL_KEYS = [
    *_conv("encoder.conv_in"),
    *_resnet("encoder.down.0.block.0"), *_conv("encoder.down.0.downsample.conv"),
    *_resnet("encoder.down.1.block.0", shortcut=True), *_attn("encoder.down.1.attn.0"),
    *_resnet("encoder.mid.block_1"), *_attn("encoder.mid.attn_1"), *_resnet("encoder.mid.block_2"),
    *_conv("encoder.norm_out"), *_conv("encoder.conv_out"),
    *_conv("decoder.conv_in"),
    *_resnet("decoder.mid.block_1"), *_attn("decoder.mid.attn_1"), *_resnet("decoder.mid.block_2"),
    *_resnet("decoder.up.0.block.0", shortcut=True), *_resnet("decoder.up.0.block.1"),
    *_resnet("decoder.up.1.block.0"), *_resnet("decoder.up.1.block.1"),
    *_attn("decoder.up.1.attn.0"), *_attn("decoder.up.1.attn.1"), *_conv("decoder.up.1.upsample.conv"),
    *_conv("decoder.norm_out"), *_conv("decoder.conv_out"),
    *_conv("quant_conv"), *_conv("post_quant_conv"),
    "quantize.embedding.weight",
    *_conv("quantize.quant_resi.qresi_ls.0"), *_conv("quantize.quant_resi.qresi_ls.1"),
]


def test_state_dict_has_vars_key_names_and_shapes_at_a_tiny_config():
    state = _tokenizer().state_dict()
    assert sorted(state) == sorted(TINY_OFFICIAL_KEYS)
    shapes = {
        "encoder.down.1.attn.0.qkv.weight": (48, 16, 1, 1),
        "encoder.down.1.block.0.nin_shortcut.weight": (16, 8, 1, 1),
        "encoder.conv_out.weight": (4, 16, 3, 3),
        "decoder.conv_in.weight": (16, 4, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (8, 16, 1, 1),
        "quant_conv.weight": (4, 4, 3, 3),
        "quantize.embedding.weight": (32, 4),
        "quantize.quant_resi.qresi_ls.1.weight": (4, 4, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


def _phi_layout(state, layout):
    """Rename our φ keys into VAR's other sharing layouts (share_quant_resi = 1 or 0)."""
    out = {}
    for k, v in state.items():
        if layout == "shared":
            k = k.replace("quantize.quant_resi.qresi_ls.0.", "quantize.quant_resi.qresi.")
        elif layout == "per-step":
            k = k.replace("quantize.quant_resi.qresi_ls.", "quantize.quant_resi.")
        out[k] = v
    return out


@pytest.mark.parametrize(
    ("layout", "phi_count"), [("partially-shared", 4), ("shared", 1), ("per-step", 3), ("none", 0)]
)
def test_a_pth_in_the_official_layout_loads_and_encodes_identically(tmp_path, layout, phi_count):
    source = _tokenizer(phi_count=phi_count)
    state = _phi_layout(to_official_state(source, num_steps=3), layout)
    assert state["quantize.ema_vocab_hit_SV"].shape == (3, 32)
    if layout == "shared":
        assert "quantize.quant_resi.qresi.weight" in state
    path = tmp_path / "vae_tiny.pth"
    torch.save(state, path)
    loaded = from_official(path, norm_groups=4).eval()  # GroupNorm groups cannot be read from shapes
    assert loaded.config == source.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(),
                                                 strict=True))
    images = _images()
    codes = source.encode(images, SCHEDULE)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(images, SCHEDULE), codes, strict=True))
    torch.testing.assert_close(loaded.decode(codes, SCHEDULE), source.decode(codes, SCHEDULE), atol=0, rtol=0)


def test_config_is_read_from_the_shapes():
    changes = dict(ch=12, ch_mult=(1, 2, 3), num_res_blocks=2, level_attention=False, mid_attention=False,
                   quant_conv_kernel=1, codebook_size=20, code_dim=6, phi_count=2)
    tok = _tokenizer(**changes)
    config = config_from_official_state(to_official_state(tok), norm_groups=4)
    assert config == tok.config
    residual = config_from_official_state(tok.state_dict(), norm_groups=4, inputs="residual")
    assert residual.quantizer.inputs == "residual" and residual.ch_mult == (1, 2, 3)


def test_official_key_mapping():
    assert official_key("quantize.ema_vocab_hit_SV") is None
    assert official_key("quantize.quant_resi.qresi.weight") == "quantize.quant_resi.qresi_ls.0.weight"
    assert official_key("quantize.quant_resi.7.bias") == "quantize.quant_resi.qresi_ls.7.bias"
    assert official_key("quantize.quant_resi.qresi_ls.2.bias") == "quantize.quant_resi.qresi_ls.2.bias"
    assert official_key("encoder.down.4.attn.1.qkv.weight") == "encoder.down.4.attn.1.qkv.weight"


def test_a_checkpoint_that_does_not_fit_lists_every_problem():
    state = to_official_state(_tokenizer())
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*decoder\.conv_out\.bias.*unexpected.*decoder\.extra"):
        from_official(state, norm_groups=4)
    wrong = multiscale_vq_tiny(codebook_size=16)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)mis-shaped.*quantize\.embedding\.weight.*\(16, 4\)"):
        from_official(to_official_state(_tokenizer()), config=wrong)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: config_from_official_state({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}), ValueError,
         r"no 'encoder\.down\.0\.block\.0\.conv1\.weight'.*not VAR's VQVAE layout"),
        (lambda: config_from_official_state([1, 2]), TypeError, r"state must be a state dict"),
        (lambda: from_official(42), TypeError, r"source must be a path to vae_ch160v4096z32\.pth"),
        (lambda: from_official({}, config=multiscale_vq_tiny(), inputs="residual"), TypeError,
         r"pass either config or field changes \['inputs'\]"),
        (lambda: to_official_state(_tokenizer(), num_steps=0), ValueError, r"num_steps must be an int >= 1"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_executes_code_from_the_file(tmp_path):
    marker = tmp_path / "executed"
    state = to_official_state(_tokenizer())
    path = tmp_path / "vae_evil.pth"
    torch.save({**state, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"refused because unpickling them could run code"):
        from_official(path)
    assert not marker.exists()
