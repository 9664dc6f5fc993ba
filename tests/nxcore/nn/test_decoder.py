import pytest
import torch

from nxcore.nn import Attention, DecoderLayer, DecoderLayerConfig, RMSNorm, SwiGLUMLP
from nxcore.position import RoPE1D


def rms_formula(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def small_config(**changes):
    fields = {"dim": 32, "num_heads": 4, "num_kv_heads": 2, "hidden": 48, "norm_eps": 1e-5} | changes
    return DecoderLayerConfig(**fields)


def make_layer(seed=0, **changes):
    torch.manual_seed(seed)
    layer = small_config(**changes).build(RoPE1D(head_dim=8, theta=1e6))
    with torch.no_grad():
        layer.input_layernorm.weight.uniform_(0.5, 1.5)
        layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return layer


def positions(n, start=0):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_layer_is_its_two_residual_steps(qk_norm):
    layer = make_layer(qk_norm=qk_norm)
    x, pos = torch.randn(2, 6, 32), positions(6)
    h = x + layer.self_attn(rms_formula(x, layer.input_layernorm.weight, 1e-5), pos, is_causal=True)
    expected = h + layer.mlp(rms_formula(h, layer.post_attention_layernorm.weight, 1e-5))
    torch.testing.assert_close(layer(x, pos, is_causal=True), expected)


def test_carried_residual_stream_equals_plain_stacking():
    layers = [make_layer(seed) for seed in range(3)]
    final = RMSNorm(32)
    x, pos = torch.randn(2, 5, 32), positions(5)
    plain = x
    for layer in layers:
        plain = layer(plain, pos, is_causal=True)
    m, h = layers[0](x, pos, residual=torch.zeros_like(x), is_causal=True)
    for layer in layers[1:]:
        m, h = layer(m, pos, residual=h, is_causal=True)
    torch.testing.assert_close(m + h, plain)
    y, _ = final(m, residual=h)
    torch.testing.assert_close(y, final(plain))


def test_cached_decoding_through_a_layer_equals_the_full_forward():
    layer = make_layer()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        full = layer(x, positions(7), is_causal=True)
        cache = layer.self_attn.new_cache(2, 7)
        steps = [layer(x[:, :4], positions(4), is_causal=True, cache=cache)]
        steps += [layer(x[:, t : t + 1], positions(1, t), is_causal=True, cache=cache) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_bfloat16_layer_with_a_bfloat16_cache_tracks_fp32():
    layer = make_layer()
    x = torch.randn(2, 6, 32)
    expected = layer(x, positions(6), is_causal=True)
    half = layer.to(torch.bfloat16)
    with torch.no_grad():
        cache = half.self_attn.new_cache(2, 6)
        assert cache.dtype == torch.bfloat16
        first = half(x[:, :5].bfloat16(), positions(5), is_causal=True, cache=cache)
        last = half(x[:, 5:].bfloat16(), positions(1, 5), is_causal=True, cache=cache)
    out = torch.cat([first, last], dim=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=2e-2)


def test_gradients_reach_every_parameter():
    layer = make_layer(qk_norm=True, o_bias=True, mlp_bias=True)
    x = torch.randn(2, 4, 32, requires_grad=True)
    layer(x, positions(4), is_causal=True).pow(2).sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_keys_are_the_qwen2_names():
    assert list(small_config().build().state_dict()) == [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.weight",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]


def test_qwen25_14b_layer_has_the_published_size():
    config = DecoderLayerConfig(dim=5120, num_heads=40, num_kv_heads=8, hidden=13824, norm_eps=1e-5)
    with torch.device("meta"):
        layer = config.build(RoPE1D(head_dim=128, theta=1e6))
    assert sum(p.numel() for p in layer.parameters()) == 275_268_608
    assert layer.self_attn.k_proj.weight.shape == (1024, 5120)
    assert layer.input_layernorm.eps == 1e-5


def test_config_round_trips_through_json():
    config = small_config(qk_norm=True, head_dim=16)
    assert DecoderLayerConfig.from_json(config.to_json()) == config
    layer = config.build()
    assert (
        layer.self_attn.head_dim == 16 and layer.self_attn.q_norm is not None and layer.self_attn.rope is None
    )


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"num_kv_heads": 3},
            ValueError,
            r"DecoderLayerConfig.num_heads \(4\) must be divisible by DecoderLayerConfig.num_kv_heads \(3\)",
        ),
        (
            {"num_heads": 5, "num_kv_heads": None},
            ValueError,
            r"DecoderLayerConfig.dim \(32\) is not divisible by DecoderLayerConfig.num_heads \(5\); set head_dim",
        ),
        ({"hidden": 0}, ValueError, "DecoderLayerConfig.hidden = 0 is not allowed; expected an int >= 1"),
        ({"head_dim": 8.0}, TypeError, "DecoderLayerConfig.head_dim = 8.0 is not allowed; expected an int"),
        (
            {"qkv_bias": "yes"},
            TypeError,
            "DecoderLayerConfig.qkv_bias = 'yes' is not allowed; expected True or False",
        ),
        (
            {"norm_eps": 0.0},
            ValueError,
            "DecoderLayerConfig.norm_eps = 0.0 is not allowed; expected a finite number > 0",
        ),
    ],
)
def test_bad_configs(changes, error, message):
    with pytest.raises(error, match=message):
        small_config(**changes)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: DecoderLayer(SwiGLUMLP(8, 16), SwiGLUMLP(8, 16)),
            TypeError,
            "self_attn must be an nxcore.nn.Attention, got SwiGLUMLP",
        ),
        (lambda: DecoderLayer(Attention(8, 2), lambda x: x), TypeError, "mlp must be an nn.Module"),
        (
            lambda: DecoderLayer(Attention(8, 2), SwiGLUMLP(16, 16)),
            ValueError,
            r"mlp.dim \(16\) must equal self_attn.dim \(8\)",
        ),
        (
            lambda: DecoderLayer(Attention(8, 2), SwiGLUMLP(8, 16), eps=-1e-6),
            ValueError,
            r"eps must be a float in \[0, 1\)",
        ),
        (
            lambda: make_layer()(torch.randn(2, 3, 32), positions(3), residual=torch.randn(2, 3, 16)),
            ValueError,
            r"residual has shape \(2, 3, 16\) but RMSNorm has width 32",
        ),
    ],
)
def test_bad_inputs(make, error, message):
    with pytest.raises(error, match=message):
        make()
