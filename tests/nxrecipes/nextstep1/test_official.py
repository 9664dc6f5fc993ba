"""Official NextStep-1 checkpoint directories: config.json mapping (both head spellings), safetensors
loading (single file and shards, tied and untied, stray keys), tokenizer id checks and errors.

The checkpoints are written by this file itself in the official Hugging Face layout
(``write_official``): config.json with the official field names, weights under the official key
names (fact sheet §5) in fp32 ``model.safetensors`` or ``model-0000K-of-0000N.safetensors`` shards +
``model.safetensors.index.json``, ``tokenizer.json``, ``added_tokens.json`` and
``tokenizer_config.json``.
"""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nxcore.checkpoint import CheckpointMismatchError
from nxcore.tokenizer.text import BPETokenizer, SpecialTokens
from nxrecipes.nextstep1 import (
    NextStep1,
    OfficialNextStep1,
    config_from_official,
    load_official,
    nextstep1_14b,
    nextstep1_tiny,
)

# --- the official layout, written here -----------------------------------------------------------

def official_config(model: NextStep1, *, spelling: str = "nextstep1", channels: int = 16, patch: int = 2) -> dict:
    """config.json as the official repos spell it (fact sheet §1.1, §5)."""
    c, layer = model.config, model.config.layer
    assert channels * patch**2 == c.latent_dim
    out = {
        "_attn_implementation_autoset": True,
        "architectures": ["LlamaForCausalLM"],
        "auto_map": {"AutoConfig": "models/config.NextStepConfig", "AutoModel": "models/nextstep_model.NextStep"},
        "model_type": "nextstep",
        "attention_bias": layer.qkv_bias,
        "attention_dropout": 0.0,
        "base_image_grid_size": c.gen_pos_grid,
        "boi": c.boi,
        "bos_token_id": 0,
        "eoi": c.eoi,
        "eos_token_id": 0,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": layer.dim,
        "image_placeholder_id": c.image_placeholder_id,
        "initializer_range": c.init_std,
        "intermediate_size": layer.hidden,
        "lm_loss_weight": c.lm_loss_weight,
        "max_position_embeddings": c.max_seq_len,
        "max_window_layers": c.num_layers,
        "mlp_bias": layer.mlp_bias,
        "num_attention_heads": layer.num_heads,
        "num_hidden_layers": c.num_layers,
        "num_key_value_heads": layer.num_kv_heads,
        "o_attention_bias": layer.o_bias,
        "pad_token_id_added": c.pad_id,
        "pretraining_tp": 1,
        "rms_norm_eps": layer.norm_eps,
        "rope_scaling": None,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
        "use_cache": True,
        "use_gen_pos_embed": c.use_gen_pos_embed,
        "vocab_size": c.vocab_size,
    }
    h = c.head
    if spelling == "nextstep1":
        out.update(fm_head_dim=h.width, fm_head_layers=h.depth, fm_head_batch_mul=h.batch_mul,
                   latent_channels=channels, latent_patch_size=patch, latent_size=64,
                   im_loss_weight=c.image_loss_weight)
    else:
        out.update(genloss_width=h.width, genloss_depth=h.depth, genloss_batch_mul=h.batch_mul,
                   genloss_type="transport", genloss_net_arch="mlp", genloss_num_sampling_steps="100",
                   num_channels=channels, patch_size=patch, image_size=64, image_loss_weight=c.image_loss_weight,
                   noise_strength=0.0, create_kwargs={"snr_type": "lognorm"}, image_decoder_arch="Trans_E",
                   image_encoder_name=None, image_feature_layer=-2)
    return out


def write_official(
    directory: Path,
    model: NextStep1,
    tokenizer: BPETokenizer,
    *,
    spelling: str = "nextstep1",
    channels: int = 16,
    patch: int = 2,
    shard_bytes: int | None = None,
    prefix: str = "",
    extra: dict | None = None,
    drop: tuple[str, ...] = (),
    config_changes: dict | None = None,
    added_changes: dict | None = None,
) -> Path:
    """An official checkpoint directory of ``model``: fp32 weights under the official key names
    (``prefix`` on every key but ``lm_head.weight``, as Hugging Face's LlamaForCausalLM stores them)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items() if k not in drop}
    state.update(extra or {})
    state = {(k if k == "lm_head.weight" else prefix + k): v for k, v in state.items()}
    if shard_bytes is None:
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    else:
        plan: list[list[str]] = [[]]
        size = 0
        for k, v in state.items():
            if plan[-1] and size + v.numel() * 4 > shard_bytes:
                plan.append([])
                size = 0
            plan[-1].append(k)
            size += v.numel() * 4
        weight_map = {}
        for i, keys in enumerate(plan, start=1):
            name = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
            save_file({k: state[k] for k in keys}, directory / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = official_config(model, spelling=spelling, channels=channels, patch=patch)
    for k, v in (config_changes or {}).items():
        if v is DELETE:
            config.pop(k, None)
        else:
            config[k] = v
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(directory / "tokenizer.json")
    added = {t.content: i for i, t in tokenizer.tokenizer.get_added_tokens_decoder().items()}
    added.update(added_changes or {})
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2))
    tok_config = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "[PAD]", "padding_side": "left"}
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return directory


DELETE = object()


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    """A Qwen-like tokenizer: BPE with its own special token, then NextStep-1's specials appended."""
    corpus = ["a red circle above a blue square", "two green triangles left of a yellow star",
              "The picture shows 32*32 purple crosses."] * 4
    base = BPETokenizer.train(corpus, 300, special_tokens=SpecialTokens.of(["<|endoftext|>"]), min_frequency=1)
    return base.with_special_tokens(SpecialTokens.nextstep1())


def source_model(tokenizer: BPETokenizer, **changes) -> NextStep1:
    """A tiny NextStep1 with every weight random (the head's zero-initialised layers too)."""
    ids = tokenizer.special_tokens
    specials = SpecialTokens.nextstep1()
    fields = {"num_layers": 2, "vocab_size": 64 * -(-tokenizer.vocab_size // 64), "pad_id": ids[specials.pad],
              "image_area_id": ids[specials.image_area], "boi": ids[specials.boi], "eoi": ids[specials.eoi],
              "image_placeholder_id": ids[specials.image_placeholder], "rope_theta": 1e6, "max_seq_len": 512}
    torch.manual_seed(0)
    model = nextstep1_tiny(**{**fields, **changes}).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape))
    return model


def outputs(model: NextStep1) -> dict[str, torch.Tensor]:
    """Hidden states, logits, head conditions and velocities on a left-padded batch with an image."""
    c = model.config
    p, boi, eoi, pad, area = c.image_placeholder_id, c.boi, c.eoi, c.pad_id, c.image_area_id
    ids = torch.tensor([[5, 6, 7, area, 11, boi, p, p, p, eoi, 9],
                        [pad, pad, pad, 8, area, boi, p, p, p, eoi, 10]])
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(6, c.latent_dim, generator=gen)
    dtype = model.embed_tokens.weight.dtype
    with torch.no_grad():
        hidden = model(ids, latents.to(dtype), attention_mask=ids != pad)
        rows = hidden[:, 5:8].reshape(6, -1)
        index = torch.arange(3).repeat(2) if c.use_gen_pos_embed else None
        cond = model.condition(rows, index)
        x = torch.randn(6, c.latent_dim, generator=gen).to(dtype)
        t = torch.rand(6, generator=gen).to(dtype)
        velocity = model.image_head.velocity(x, t, cond)
    return {"hidden": hidden, "logits": model.logits(hidden), "cond": cond, "velocity": velocity}


def explicit_head_dim(config):
    """config.json always states head_dim (LlamaConfig writes it), so the loaded config has it set."""
    return config.replace(layer=config.layer.replace(head_dim=config.head_dim))


def assert_same(loaded: NextStep1, source: NextStep1) -> None:
    got, want = loaded.state_dict(), source.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k
    a, b = outputs(loaded), outputs(source)
    for k in b:
        assert torch.equal(a[k], b[k]), k


# --- loading --------------------------------------------------------------------------------------

CASES = {
    "v1-single-untied-stray": dict(
        spelling="nextstep1", model={}, extra=lambda m: {
            "gen_pos_embed": torch.randn(1, 1024, m.dim),  # GH-v1 saves it even when unused
            "layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16),
        }),
    "v1.1-sharded-tied-prefixed": dict(
        spelling="nextstep1.1", model={"tie_word_embeddings": True}, shard_bytes=150_000, prefix="model.",
        extra=lambda m: {"lm_head.weight": m.embed_tokens.weight.detach().clone()}),
    "v1-sharded-gen-pos-in-file": dict(
        spelling="nextstep1", model={"use_gen_pos_embed": True, "gen_pos_grid": 4, "latent_dim": 16},
        channels=4, shard_bytes=400_000, extra=lambda m: {}),
    "v1.1-gen-pos-computed": dict(
        spelling="nextstep1.1", model={"use_gen_pos_embed": True, "gen_pos_grid": 4}, drop=("gen_pos_embed",),
        extra=lambda m: {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_official_checkpoint_loads_and_reproduces_the_source_model(tmp_path, tokenizer, case):
    spec = CASES[case]
    src = source_model(tokenizer, **spec["model"])
    directory = write_official(
        tmp_path / "ckpt", src, tokenizer, spelling=spec["spelling"], channels=spec.get("channels", 16),
        shard_bytes=spec.get("shard_bytes"), prefix=spec.get("prefix", ""), extra=spec["extra"](src),
        drop=spec.get("drop", ()),
    )
    if spec.get("shard_bytes"):
        assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    out = load_official(directory, dtype=torch.float32)
    assert isinstance(out, OfficialNextStep1)
    assert out.config == explicit_head_dim(src.config)
    assert out.source == json.loads((directory / "config.json").read_text())
    assert not out.model.training
    assert_same(out.model, src)


def test_fp32_files_are_cast_to_bf16_at_load(tmp_path, tokenizer):
    src = source_model(tokenizer)
    out = load_official(write_official(tmp_path, src, tokenizer, shard_bytes=300_000))  # dtype default bf16
    assert {p.dtype for p in out.model.parameters()} == {torch.bfloat16}
    assert_same(out.model, src.to(torch.bfloat16))


@pytest.mark.gpu
def test_loads_onto_cuda(tmp_path, tokenizer):
    src = source_model(tokenizer, tie_word_embeddings=True)
    out = load_official(write_official(tmp_path, src, tokenizer, shard_bytes=300_000), device="cuda")
    got, want = out.model.state_dict(), src.to(torch.bfloat16).state_dict()
    assert {t.device.type for t in got.values()} == {"cuda"}
    assert all(torch.equal(got[k].cpu(), want[k]) for k in want)
    c = out.config
    ids = torch.tensor([[5, c.image_area_id, c.boi, c.image_placeholder_id, c.eoi]], device="cuda")
    with torch.no_grad():
        hidden = out.model(ids, torch.randn(1, c.latent_dim, device="cuda", dtype=torch.bfloat16))
    assert hidden.dtype == torch.bfloat16 and hidden.isfinite().all()


def test_tokenizer_comes_with_nextstep1_roles(tmp_path, tokenizer):
    out = load_official(write_official(tmp_path, source_model(tokenizer), tokenizer), dtype=torch.float32)
    tok = out.text_tokenizer
    assert tok.special_tokens == tokenizer.special_tokens
    assert tok.pad_id == out.config.pad_id and tok.bos_id is None
    assert tok.eos_id == tokenizer.special_id("<|endoftext|>")
    text = SpecialTokens.nextstep1().image_string(2, 3)
    ids = tok.encode("a red circle" + text)
    assert ids == tokenizer.encode("a red circle" + text)
    assert ids[-8:] == [out.config.boi] + [out.config.image_placeholder_id] * 6 + [out.config.eoi]


# --- config.json ----------------------------------------------------------------------------------

LARGE = {  # NextStep-1-Large(-Pretrain) config.json (fact sheet §1.1, §5; unseen fields: Qwen2.5-14B's)
    "architectures": ["LlamaForCausalLM"], "model_type": "nextstep", "attention_bias": True,
    "attention_dropout": 0.0, "base_image_grid_size": 32, "boi": 151667, "bos_token_id": 151643, "eoi": 151668,
    "eos_token_id": 151643, "fm_head_batch_mul": 4, "fm_head_dim": 1536, "fm_head_layers": 12, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 5120, "im_loss_weight": 1.0, "image_placeholder_id": 151669,
    "initializer_range": 0.02, "intermediate_size": 13824, "latent_channels": 16, "latent_patch_size": 2,
    "latent_size": 64, "lm_loss_weight": 0.01, "max_position_embeddings": 131072, "max_window_layers": 48,
    "mlp_bias": False, "num_attention_heads": 40, "num_hidden_layers": 48, "num_key_value_heads": 8,
    "o_attention_bias": False, "pad_token_id_added": 151665, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    "use_cache": True, "use_gen_pos_embed": False, "vocab_size": 152064,
}
HEAD_V1 = ("fm_head_batch_mul", "fm_head_dim", "fm_head_layers", "im_loss_weight", "latent_channels",
           "latent_patch_size", "latent_size")
NEXTSTEP11 = {**{k: v for k, v in LARGE.items() if k not in HEAD_V1}, "base_image_grid_size": 64,
              "genloss_batch_mul": 4, "genloss_depth": 12, "genloss_width": 1536, "genloss_type": "transport",
              "genloss_net_arch": "mlp", "genloss_num_sampling_steps": "100", "image_loss_weight": 1.0,
              "image_size": 64, "num_channels": 16, "patch_size": 2, "noise_strength": 0.0,
              "create_kwargs": {"snr_type": "lognorm"}}


def test_large_config_maps_to_nextstep1_14b():
    assert config_from_official(LARGE) == nextstep1_14b()
    assert config_from_official(NEXTSTEP11) == nextstep1_14b(gen_pos_grid=64)
    with torch.device("meta"):
        model = NextStep1(config_from_official(LARGE))
    assert model.num_parameters() == 14_953_814_080  # fact sheet §1.1: about 14.95 B
    names = set(model.state_dict())
    assert {"embed_tokens.weight", "lm_head.weight", "norm.weight", "layers.47.self_attn.q_proj.bias",
            "image_head.net.res_blocks.11.adaLN_modulation.1.weight"} <= names
    assert "layers.0.self_attn.o_proj.bias" not in names


def test_config_defaults_follow_the_official_llama_config():
    bare = {k: LARGE[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                  "vocab_size", "boi", "eoi", "image_placeholder_id", "pad_token_id_added")}
    with pytest.warns(UserWarning, match="no rope_theta"):
        c = config_from_official({**bare, "attention_bias": True})
    assert c.rope_theta == 10000.0 and c.layer.norm_eps == 1e-6 and c.max_seq_len == 2048
    assert c.layer.qkv_bias and c.layer.o_bias  # o_attention_bias falls back to attention_bias
    assert c.layer.num_kv_heads is None and c.head_dim == 128 and not c.tie_word_embeddings
    assert (c.head.width, c.head.depth, c.head.batch_mul, c.latent_dim) == (1536, 12, 4, 64)
    assert c.image_area_id == 151666  # boi - 1
    assert config_from_official({**LARGE, "rope_scaling": {"rope_type": "default"}}) == nextstep1_14b()
    small = config_from_official({**NEXTSTEP11, "num_channels": 4, "patch_size": 1, "genloss_width": 256})
    assert (small.latent_dim, small.head.latent_dim, small.head.width) == (4, 4, 256)


@pytest.mark.parametrize("changes, match", [
    ({"genloss_type": "diffusion"}, "genloss_type = 'diffusion' is not supported"),
    ({"genloss_net_arch": "transformer"}, "genloss_net_arch = 'transformer' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling = .* is not supported"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"genloss_mlp_ratio": 4.0}, "genloss_mlp_ratio = 4.0 is not supported"),
    ({"create_kwargs": {"snr_type": "uniform"}}, "snr_type = 'uniform' is not supported"),
    ({"genloss_width": 1024, "fm_head_dim": 1536}, "both fm_head_dim = 1536 .* and genloss_width = 1024"),
    ({"model_type": "qwen2"}, "model_type = 'qwen2' is not a NextStep model"),
    ({"vocab_size": None}, r"lacks \['vocab_size'\]"),
])
def test_unsupported_or_incomplete_configs_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        config_from_official({k: v for k, v in {**NEXTSTEP11, **changes}.items() if v is not None})


# --- errors while loading -------------------------------------------------------------------------

def test_missing_keys_are_named_and_counted(tmp_path, tokenizer):
    src = source_model(tokenizer)
    layer1 = tuple(k for k in src.state_dict() if k.startswith("layers.1."))
    directory = write_official(tmp_path, src, tokenizer, drop=("norm.weight", *layer1))
    with pytest.raises(CheckpointMismatchError, match=rf"{len(layer1) + 1} missing official key") as info:
        load_official(directory)
    message = str(info.value)
    assert "layers.1.input_layernorm.weight" in message and "... and" in message
    assert set(info.value.report.missing) == {"norm.weight", *layer1}
    with pytest.raises(ValueError, match="missing"):  # even with strict=False: nothing to fill them with
        load_official(directory, strict=False)


def test_mis_shaped_key_is_reported(tmp_path, tokenizer):
    src = source_model(tokenizer)
    directory = write_official(tmp_path, src, tokenizer, extra={"image_in_projector.weight": torch.zeros(128, 32)})
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped[\s\S]*image_in_projector.weight: module \(128, 64\)"):
        load_official(directory)


def test_unexpected_keys_raise_when_strict_and_warn_otherwise(tmp_path, tokenizer):
    src = source_model(tokenizer)
    directory = write_official(tmp_path, src, tokenizer, shard_bytes=300_000,
                               extra={"vision_tower.proj.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected[\s\S]*vision_tower.proj.weight"):
        load_official(directory)
    with pytest.warns(UserWarning, match="skipped 1 key"):
        out = load_official(directory, strict=False, dtype=torch.float32)
    assert_same(out.model, src)


def test_missing_o_bias_hints_at_o_attention_bias(tmp_path, tokenizer):
    directory = write_official(tmp_path, source_model(tokenizer), tokenizer,
                               config_changes={"o_attention_bias": DELETE})
    with pytest.raises(CheckpointMismatchError, match="o_proj.bias[\\s\\S]*set \"o_attention_bias\": false"):
        load_official(directory)


@pytest.mark.parametrize("config_changes, added_changes, match", [
    ({"boi": 7}, {}, r"boi = 7 but .*tokenizer.json gives '<\|begin_of_image\|>' id \d+"),
    ({"pad_token_id_added": 3}, {}, r"pad_token_id_added = 3 but .* '\[PAD\]' id \d+"),
    ({}, {"<|image_placeholder|>": 5}, r"added_tokens.json maps '<\|image_placeholder\|>' to 5 but .* id \d+"),
    ({}, {"<|end_of_thinking|>": 6}, r"maps '<\|end_of_thinking\|>' to 6"),
    ({"vocab_size": 305}, {}, r"ids up to 308 but config.json.s vocab_size is 305"),
])
def test_disagreeing_special_ids_are_refused(tmp_path, tokenizer, config_changes, added_changes, match):
    directory = write_official(tmp_path, source_model(tokenizer), tokenizer, config_changes=config_changes,
                               added_changes=added_changes)
    with pytest.raises(ValueError, match=match):
        load_official(directory)


def test_unsupported_head_in_a_directory_names_the_file(tmp_path, tokenizer):
    directory = write_official(tmp_path, source_model(tokenizer), tokenizer, spelling="nextstep1.1",
                               config_changes={"genloss_type": "diffusion"})
    with pytest.raises(ValueError, match=r"config.json: genloss_type = 'diffusion' is not supported"):
        load_official(directory)


def test_only_safetensors_is_read(tmp_path, tokenizer):
    src = source_model(tokenizer)
    directory = write_official(tmp_path, src, tokenizer)
    (directory / "model.safetensors").unlink()
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embed_tokens.weight": 1}, f)
    with pytest.raises(FileNotFoundError, match=r"no safetensors weights[\s\S]*pytorch_model.bin.*refused"):
        load_official(directory)


def test_incomplete_shard_download_is_reported(tmp_path, tokenizer):
    directory = write_official(tmp_path, source_model(tokenizer), tokenizer, shard_bytes=300_000)
    sorted(directory.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(FileNotFoundError, match="shard.* missing from"):
        load_official(directory)


def test_prefixed_and_bare_copies_of_one_weight_are_refused(tmp_path, tokenizer):
    src = source_model(tokenizer)
    directory = write_official(tmp_path, src, tokenizer, extra={"model.norm.weight": torch.ones(128)})
    with pytest.raises(ValueError, match="both 'model.norm.weight' and 'norm.weight'|both 'norm.weight' and"):
        load_official(directory)
