import math

import pytest
import torch

from nxcore.nn import Attention, KVCache, causal_mask
from nxcore.nn.attention import _attend
from nxcore.position import RoPE1D

THETA = 10000.0


def linear(x, layer):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def rms_formula(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_formula(x, positions, theta):
    """Rotate-half RoPE (Hugging Face Qwen2): x cos + rotate_half(x) sin, angles pos * theta^(-2i/d)."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions[:, :1].double() * inv_freq
    cos = torch.cat([angles.cos(), angles.cos()], -1).float()
    sin = torch.cat([angles.sin(), angles.sin()], -1).float()
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def reference_attention(attn, x, positions=None, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V with kv heads repeated per group; mask is bool, True = attend."""
    b, n, _ = x.shape
    h, hkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = linear(x, attn.q_proj).view(b, n, h, d).transpose(1, 2)
    k = linear(x, attn.k_proj).view(b, n, hkv, d).transpose(1, 2)
    v = linear(x, attn.v_proj).view(b, n, hkv, d).transpose(1, 2)
    if attn.q_norm is not None:
        q = rms_formula(q, attn.q_norm.weight, attn.q_norm.eps)
        k = rms_formula(k, attn.k_norm.weight, attn.k_norm.eps)
    if positions is not None:
        q, k = rope_formula(q, positions, THETA), rope_formula(k, positions, THETA)
    k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v
    return linear(out.transpose(1, 2).reshape(b, n, h * d), attn.o_proj)


def random_mask(*shape, seed=0):
    """Random bool mask whose diagonal is True (every query sees at least itself)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen) < 0.5) | torch.eye(shape[-1], dtype=torch.bool)


def make(ratio=2, qk_norm=False, rope=True, bias=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    attn = Attention(
        32,
        4,
        4 // ratio,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=qk_norm,
        rope=RoPE1D(head_dim=8, theta=THETA) if rope else None,
        **kwargs,
    )
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    return attn


def positions(n, start=0):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None]


@pytest.mark.parametrize("ratio", [1, 2, 4])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("masking", ["none", "causal", "mask", "mask+causal", "batch-mask"])
def test_attention_is_the_formula(ratio, qk_norm, masking):
    attn = make(ratio, qk_norm)
    x, pos, n = torch.randn(2, 6, 32), positions(6), 6
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    explicit = random_mask(n, n)
    kwargs, mask = {
        "none": ({}, None),
        "causal": ({"is_causal": True}, tril),
        "mask": ({"attn_mask": explicit}, explicit),
        "mask+causal": ({"attn_mask": explicit, "is_causal": True}, explicit & tril),
        "batch-mask": ({"attn_mask": random_mask(2, 1, n, n)}, random_mask(2, 1, n, n)),
    }[masking]
    torch.testing.assert_close(attn(x, pos, **kwargs), reference_attention(attn, x, pos, mask))


def test_without_rope_and_with_explicit_head_dim():
    torch.manual_seed(0)
    attn = Attention(24, 4, 2, head_dim=10)
    assert attn.q_proj.weight.shape == (40, 24) and attn.o_proj.weight.shape == (24, 40)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(attn(x), reference_attention(attn, x))


def test_qk_norm_changes_the_output():
    x, pos = torch.randn(2, 5, 32), positions(5)
    plain, normed = make(qk_norm=False), make(qk_norm=True)
    assert not torch.allclose(plain(x, pos), normed(x, pos))
    assert list(plain.state_dict()) == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
        "o_proj.weight",
        "o_proj.bias",
    ]
    assert [k for k in normed.state_dict() if "norm" in k] == ["q_norm.weight", "k_norm.weight"]
    assert normed.q_norm.weight.shape == (8,)


def test_qwen2_bias_convention():
    attn = Attention(32, 4, 2, qkv_bias=True)
    assert list(attn.state_dict()) == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
        "o_proj.weight",
    ]
    assert attn.k_proj.weight.shape == (16, 32)


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_token_by_token_decoding_equals_the_causal_forward(ratio):
    attn = make(ratio, qk_norm=True)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = attn(x, positions(9), is_causal=True)
        cache = attn.new_cache(2, 12)
        steps = [attn(x[:, :4], positions(4), is_causal=True, cache=cache)]
        for t in range(4, 9):
            steps.append(attn(x[:, t : t + 1], positions(1, t), is_causal=True, cache=cache))
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def block_causal(sizes):
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return block[:, None] >= block[None, :]


def test_block_by_block_decoding_equals_the_block_causal_forward():
    attn = make(2)
    sizes = [3, 1, 4, 2]
    n = sum(sizes)
    x = torch.randn(2, n, 32)
    with torch.no_grad():
        full = attn(x, positions(n), attn_mask=block_causal(sizes))
        cache = attn.new_cache(2, n)
        steps, start = [], 0
        for size in sizes:  # a block sees itself and everything before: the whole cache
            steps.append(attn(x[:, start : start + size], positions(size, start), cache=cache))
            start += size
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_causal_blocks_after_a_prefill_align_bottom_right():
    attn = make(4)
    x = torch.randn(1, 8, 32)
    with torch.no_grad():
        full = attn(x, positions(8), is_causal=True)
        cache = attn.new_cache(1, 8)
        first = attn(x[:, :5], positions(5), is_causal=True, cache=cache)
        block = attn(x[:, 5:], positions(3, 5), is_causal=True, cache=cache)
        cache.crop(5)
        masked = attn(x[:, 5:], positions(3, 5), attn_mask=causal_mask(3, 8), cache=cache)
    torch.testing.assert_close(torch.cat([first, block], dim=1), full)
    torch.testing.assert_close(masked, block)


def test_cropping_reuses_a_shared_prefix():
    attn = make(2)
    prompt, a, b = torch.randn(2, 5, 32), torch.randn(2, 2, 32), torch.randn(2, 3, 32)
    with torch.no_grad():
        cache = attn.new_cache(2, 10)
        attn(prompt, positions(5), is_causal=True, cache=cache)
        attn(a, positions(2, 5), is_causal=True, cache=cache)
        cache.crop(5)
        reused = attn(b, positions(3, 5), is_causal=True, cache=cache)
        fresh = attn(torch.cat([prompt, b], dim=1), positions(8), is_causal=True)[:, 5:]
    torch.testing.assert_close(reused, fresh)


def test_a_rejected_mask_leaves_the_cache_untouched():
    attn, cache = make(2), KVCache(2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"attn_mask has shape \(3, 2\) but must broadcast"):
        attn(torch.randn(2, 3, 32), positions(3), attn_mask=torch.ones(3, 2, dtype=torch.bool), cache=cache)
    assert cache.length == 0
    with torch.no_grad():
        attn(torch.randn(2, 3, 32), positions(3), is_causal=True, cache=cache)
    assert cache.length == 3
    with pytest.raises(ValueError, match=r"\[3, 6\]"):
        attn(
            torch.randn(2, 3, 32), positions(3, 3), attn_mask=torch.ones(3, 3, dtype=torch.bool), cache=cache
        )
    assert cache.length == 3


def test_new_cache_defaults_to_the_parameters():
    attn = make(2).to(torch.float64)
    cache = attn.new_cache(3, 7)
    assert (cache.batch, cache.num_kv_heads, cache.max_len, cache.head_dim, cache.dtype) == (
        3,
        2,
        7,
        8,
        torch.float64,
    )


def test_gradients_reach_every_parameter():
    attn = make(2, qk_norm=True)
    x = torch.randn(2, 5, 32, requires_grad=True)
    attn(x, positions(5), is_causal=True).pow(2).sum().backward()
    for name, p in [("x", x), *attn.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attend_aligns_causality_bottom_right_when_lengths_differ():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    want = _attend(q, k, v, mask=causal_mask(3, 5), is_causal=False)
    torch.testing.assert_close(_attend(q, k, v, mask=None, is_causal=True), want)
    with pytest.raises(
        ValueError, match=r"is_causal=True needs as many queries as keys, got 3 queries and 5 keys"
    ):
        _attend(q, k, v, mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True)


def test_causal_mask_is_bottom_right():
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 4), expected)
    with pytest.raises(ValueError, match="a causal mask needs seq <= kv"):
        causal_mask(3, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"num_heads": 6, "num_kv_heads": 4},
            ValueError,
            r"num_heads \(6\) must be divisible by num_kv_heads \(4\)",
        ),
        (
            {"num_heads": 5},
            ValueError,
            r"dim \(32\) is not divisible by num_heads \(5\); pass head_dim explicitly",
        ),
        (
            {"rope": RoPE1D(head_dim=4)},
            ValueError,
            r"rope.head_dim \(4\) must equal the attention head_dim \(8\)",
        ),
        ({"rope": "rope"}, TypeError, "rope must be a RotaryPositionalEncoder"),
        ({"qk_norm": 1}, TypeError, "qk_norm must be True or False, got 1"),
        ({"num_kv_heads": 0}, ValueError, "num_kv_heads must be an int >= 1, got 0"),
        ({"norm_eps": 2.0}, ValueError, r"norm_eps must be a float in \[0, 1\)"),
    ],
)
def test_bad_construction(kwargs, error, message):
    args = {"dim": 32, "num_heads": 4} | kwargs
    with pytest.raises(error, match=message):
        Attention(**args)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda a, x: a(x),
            ValueError,
            r"positions is None but this Attention rotates q and k with RoPE1D; pass the \[seq, 1\] positions",
        ),
        (
            lambda a, x: a(x, positions(4)),
            ValueError,
            "positions has 4 positions per row but x has seq = 5 tokens",
        ),
        (
            lambda a, x: a(x, positions(5).expand(3, -1, -1)),
            ValueError,
            r"positions has 3 rows but x has batch = 2; pass \[seq, axes\] positions shared by every row",
        ),
        (lambda a, x: a(x, positions(5).long()), TypeError, "positions must have a floating-point dtype"),
        (
            lambda a, x: a(x[..., :16], positions(5)),
            ValueError,
            r"x has shape \(2, 5, 16\) but Attention has width 32",
        ),
        (lambda a, x: a(x[0], positions(5)), ValueError, "x must have 3 dimensions"),
        (
            lambda a, x: a(x, positions(5), attn_mask=torch.ones(5, 5)),
            TypeError,
            "attn_mask must have dtype torch.bool",
        ),
        (
            lambda a, x: a(x, positions(5), attn_mask=torch.ones(5, 4, dtype=torch.bool)),
            ValueError,
            r"attn_mask has shape \(5, 4\) but must broadcast to \[batch, heads, seq, kv\] = \[2, 4, 5, 5\]",
        ),
        (
            lambda a, x: a(x, positions(5), attn_mask=torch.ones(2, 5, 5, dtype=torch.bool)),
            ValueError,
            "attn_mask must have 2 or 4 dimensions",
        ),
        (
            lambda a, x: a(x, positions(5), cache=KVCache(1, 2, 8, 8)),
            ValueError,
            r"k has shape \(2, 2, 5, 8\) but this cache holds \[batch=1",
        ),
        (lambda a, x: a(x, positions(5), cache=KVCache(2, 2, 4, 8)), ValueError, "KVCache overflow"),
        (
            lambda a, x: a(x, positions(5), cache="cache"),
            TypeError,
            "cache must be a KVCache or None, got str",
        ),
        (lambda a, x: a(x, positions(5), is_causal=1), TypeError, "is_causal must be True or False"),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call(make(2), torch.randn(2, 5, 32))


def test_positions_without_rope_are_refused():
    with pytest.raises(
        ValueError, match=r"positions were given but this Attention has no rotary encoder \(rope=None\)"
    ):
        make(2, rope=False)(torch.randn(1, 3, 32), positions(3))


@pytest.mark.parametrize("ratio", [1, 2])
def test_per_row_positions_equal_one_call_per_row(ratio):
    attn = make(ratio, qk_norm=True)
    x = torch.randn(3, 5, 32)
    rows = torch.stack([positions(5) + shift for shift in (0.0, 2.5, 7.0)])
    got = attn(x, rows, is_causal=True)
    for b in range(3):
        torch.testing.assert_close(got[b : b + 1], attn(x[b : b + 1], rows[b], is_causal=True))
    torch.testing.assert_close(attn(x, rows[:1], is_causal=True), attn(x, rows[0], is_causal=True))


def interleaved_layout():
    from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
    from nxcore.schedule import derived_schedule

    return SequenceLayout.of(TextSpan(3), DiscreteImage(derived_schedule((3, 2), 3)), TextSpan(2))


@pytest.mark.parametrize("ratio", [1, 4])
def test_layout_blocks_equal_the_layout_mask(ratio):
    from nxkernels.scale_attention import ScaleBlocks

    layout = interleaved_layout()
    attn = make(ratio, qk_norm=True)
    n = layout.length
    x = torch.randn(2, n, 32, requires_grad=True)
    want = attn(x, positions(n), attn_mask=layout.attention_mask())
    got = attn(x, positions(n), blocks=ScaleBlocks.of(layout.attention_blocks()))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])
    # An AttentionBlocks is accepted as is (converted on the call).
    torch.testing.assert_close(attn(x, positions(n), blocks=layout.attention_blocks()), want)


def test_blocks_refuse_a_mask_and_a_wrong_length():
    layout = interleaved_layout()
    attn = make(2)
    n = layout.length
    x = torch.randn(1, n, 32)
    with pytest.raises(ValueError, match="pass it alone"):
        attn(x, positions(n), blocks=layout.attention_blocks(), is_causal=True)
    with pytest.raises(ValueError, match=f"blocks cover {n} tokens but x has seq = {n - 1}"):
        attn(x[:, 1:], positions(n - 1), blocks=layout.attention_blocks())
    with pytest.raises(TypeError, match="blocks must be a ScaleBlocks"):
        attn(x, positions(n), blocks=[1, 2])
