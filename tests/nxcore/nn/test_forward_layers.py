"""``forward_layers``: the stack of decoder layers and its lean eager-inference loop, which must equal
calling the layers as modules bit for bit and must step aside whenever it cannot promise that
(gradients, hooks, subclasses, blocks)."""

import pytest
import torch
from torch import nn

from nxcore.layout import AttentionBlocks
from nxcore.nn import DecoderLayerConfig, forward_layers
from nxcore.nn import decoder as decoder_module
from nxcore.position import MultiscaleRoPE3D, RoPE1D

DIM = 32


def stack(n=3, seed=0, rope="1d", **changes):
    torch.manual_seed(seed)
    fields = {"dim": DIM, "num_heads": 4, "num_kv_heads": 2, "hidden": 48, "norm_eps": 1e-5} | changes
    config = DecoderLayerConfig(**fields)
    head_dim = config.head_dim or DIM // config.num_heads
    encoder = {"1d": RoPE1D(head_dim=head_dim, theta=1e4), "3d": MultiscaleRoPE3D(head_dim=head_dim),
               None: None}[rope]
    layers = nn.ModuleList(config.build(encoder) for _ in range(n))
    with torch.no_grad():
        for p in layers.parameters():  # every parameter non-trivial (biases and norm gains too)
            p.add_(0.1 * torch.randn_like(p))
    return layers


def positions(seq, start=0, axes=1):
    return torch.arange(start, start + seq, dtype=torch.float32)[:, None].expand(seq, axes).contiguous()


def by_modules(layers, x, pos, *, caches=None, **kw):
    m, h = x, torch.zeros_like(x)
    for i, layer in enumerate(layers):
        m, h = layer(m, pos, residual=h, cache=None if caches is None else caches[i], **kw)
    return m, h


def padded_mask(batch, kv, pad):
    keep = torch.ones(batch, kv, dtype=torch.bool)
    keep[1, :pad] = False  # row 1 left-padded
    mask = keep[:, None, None, :].expand(batch, 1, kv, kv).clone()
    mask |= torch.eye(kv, dtype=torch.bool)[None, None]  # a padded query sees itself
    return mask


def decode(layers, x, pos_fn, prefill, *, mask_fn=None, lean=True):
    """Prefill ``prefill`` tokens, then one token per call; every output (m + h) concatenated."""
    batch, seq, _ = x.shape
    caches = [layer.self_attn.new_cache(batch, seq) for layer in layers]
    outs = []
    for start, end in [(0, prefill), *((t, t + 1) for t in range(prefill, seq))]:
        kw = {"is_causal": True} if mask_fn is None else {"attn_mask": mask_fn(start, end), "is_causal": True}
        if lean:
            m, h = forward_layers(layers, x[:, start:end], pos_fn(start, end), residual=torch.zeros_like(
                x[:, start:end]), caches=caches, **kw)
        else:
            m, h = by_modules(layers, x[:, start:end], pos_fn(start, end), caches=caches, **kw)
        outs.append(m + h)
    return torch.cat(outs, dim=1)


CASES = {
    "gqa, causal, cache": {},
    "mha, biases everywhere": {"changes": {"num_kv_heads": 4, "o_bias": True, "mlp_bias": True}},
    "no q/k/v bias": {"changes": {"qkv_bias": False}},
    "3d rope": {"rope": "3d"},
    "padding mask": {"mask": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_lean_decoding_equals_the_layers_bit_for_bit(case, monkeypatch):
    spec = CASES[case]
    layers = stack(rope=spec.get("rope", "1d"), **spec.get("changes", {}))
    axes = 3 if spec.get("rope") == "3d" else 1
    x = torch.randn(2, 7, DIM)
    mask = padded_mask(2, 7, 3) if spec.get("mask") else None
    mask_fn = None if mask is None else (lambda s, e: mask[:, :, s:e, :e])
    calls = []
    real = decoder_module._forward_lean
    monkeypatch.setattr(decoder_module, "_forward_lean", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        lean = decode(layers, x, lambda s, e: positions(e - s, s, axes), 4, mask_fn=mask_fn)
        assert len(calls) == 4  # prefill + 3 steps, all lean
        ref = decode(layers, x, lambda s, e: positions(e - s, s, axes), 4, mask_fn=mask_fn, lean=False)
    assert torch.equal(lean, ref)


def test_lean_stack_without_cache_per_row_positions_and_without_rope():
    x = torch.randn(3, 5, DIM)
    with torch.no_grad():
        for layers, pos in (
            (stack(), positions(5)),
            (stack(), torch.stack([positions(5, start) for start in (0, 2, 7)])),  # [batch, seq, axes]
            (stack(rope=None), None),
        ):
            got = forward_layers(layers, x, pos, residual=torch.zeros_like(x), is_causal=True)
            want = by_modules(layers, x, pos, is_causal=True)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b)


def test_bfloat16_stack_takes_the_lean_loop_bit_for_bit():
    layers = stack().to(torch.bfloat16)
    x = torch.randn(2, 5, DIM).bfloat16()
    with torch.no_grad():
        lean = decode(layers, x, lambda s, e: positions(e - s, s), 3)
        ref = decode(layers, x, lambda s, e: positions(e - s, s), 3, lean=False)
    assert lean.dtype == torch.bfloat16 and torch.equal(lean, ref)


def test_the_layers_run_as_modules_when_the_lean_loop_cannot_promise_the_same(monkeypatch):
    calls = []
    real = decoder_module._forward_lean
    monkeypatch.setattr(decoder_module, "_forward_lean", lambda *a: calls.append(1) or real(*a))
    layers = stack(n=2)
    x, pos = torch.randn(2, 4, DIM), positions(4)

    def run(**kw):
        calls.clear()
        return forward_layers(layers, x, pos, residual=torch.zeros_like(x), **kw), bool(calls)

    with torch.no_grad():
        assert run(is_causal=True)[1]
        seen = []
        handle = layers[1].self_attn.k_proj.register_forward_hook(lambda *a: seen.append(1))
        (m, h), lean = run(is_causal=True)
        handle.remove()
        assert not lean and seen == [1]  # the hook ran: the layers were called as modules
        blocks = AttentionBlocks(starts=torch.tensor([0, 2]), ends=torch.tensor([2, 4]),
                                 causal=torch.tensor([True, False]))
        assert not run(blocks=blocks)[1]
    (m, h), lean = run(is_causal=True)  # gradients enabled
    assert not lean and m.requires_grad
    m.sum().backward()
    assert layers[0].self_attn.q_proj.weight.grad is not None

    class Linear(nn.Linear):  # a subclass may do anything in forward
        pass

    with torch.no_grad():
        old = layers[0].mlp.up_proj
        layers[0].mlp.up_proj = Linear(DIM, 48, bias=False)
        layers[0].mlp.up_proj.weight.copy_(old.weight)
        assert not run(is_causal=True)[1]
        layers[0].mlp.up_proj = old
        qk_norm = stack(n=2, qk_norm=True)
        calls.clear()
        forward_layers(qk_norm, x, pos, residual=torch.zeros_like(x), is_causal=True)
        assert not calls


def test_the_lean_loop_reads_the_current_parameters():
    """Nothing is cached between calls: weights written in place or replaced are the ones used."""
    layers = stack(n=2)
    x, pos = torch.randn(2, 3, DIM), positions(3)

    def check():
        got = forward_layers(layers, x, pos, residual=torch.zeros_like(x), is_causal=True)
        want = by_modules(layers, x, pos, is_causal=True)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        return got[0]

    with torch.no_grad():
        before = check()
        layers[0].self_attn.k_proj.weight.mul_(-2.0)
        layers[1].mlp.gate_proj.weight.data = torch.randn(48, DIM)
        layers[1].self_attn.q_proj.bias = nn.Parameter(torch.randn(DIM))
        assert not torch.equal(check(), before)


def test_bad_arguments_fail_as_the_layers_fail():
    layers = stack(n=2)
    x = torch.randn(2, 3, DIM)
    with torch.no_grad():
        with pytest.raises(ValueError, match="positions has 2 positions per row but x has seq = 3"):
            forward_layers(layers, x, positions(2), residual=torch.zeros_like(x))
        with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 1, 3, 5\)"):
            forward_layers(layers, x, positions(3), residual=torch.zeros_like(x),
                           attn_mask=torch.ones(2, 1, 3, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="got 1 caches for 2 layers"):
            forward_layers(layers, x, positions(3), residual=torch.zeros_like(x),
                           caches=[layers[0].self_attn.new_cache(2, 3)])
        with pytest.raises(ValueError, match="RMSNorm has width 32"):
            forward_layers(layers, torch.randn(2, 3, 16), positions(3), residual=torch.zeros(2, 3, 16))
