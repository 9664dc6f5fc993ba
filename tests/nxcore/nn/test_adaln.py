import math

import pytest
import torch
import torch.nn.functional as F

from nxcore.nn import AdaLNFinalLayer, AdaLNResBlock, fold_affine
from nxkernels.adaln import adaln_modulate


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def layer_norm(x, weight=None, bias=None, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    n = (x - mean) / torch.sqrt(var + eps)
    return n if weight is None else n * weight + bias


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name == "in_ln.weight" else 0.0))
    return module


@pytest.mark.parametrize("seed", range(3))
def test_folded_affine_equals_layer_norm_with_affine_then_modulate(seed):
    gen = torch.Generator().manual_seed(seed)
    x, shift, scale = (torch.randn(5, 16, generator=gen) for _ in range(3))
    gamma, beta = torch.randn(16, generator=gen) * 0.5 + 1, torch.randn(16, generator=gen)
    expected = layer_norm(x, gamma, beta) * (1 + scale) + shift
    new_shift, new_scale = fold_affine(gamma, beta, shift, scale)
    torch.testing.assert_close(adaln_modulate(x, new_shift, new_scale, 1e-6), expected)
    torch.testing.assert_close(F.layer_norm(x, (16,), gamma, beta, 1e-6) * (1 + scale) + shift, expected)


def test_res_block_is_the_formula():
    block = randomize(AdaLNResBlock(16))
    x, y = torch.randn(6, 16), torch.randn(6, 16)
    shift, scale, gate = linear(F.silu(y), block.adaLN_modulation[1]).chunk(3, dim=-1)
    h = layer_norm(x, block.in_ln.weight, block.in_ln.bias) * (1 + scale) + shift
    expected = x + gate * linear(F.silu(linear(h, block.mlp[0])), block.mlp[2])
    torch.testing.assert_close(block(x, y), expected)


def test_bfloat16_block_tracks_fp32():
    block, final = randomize(AdaLNResBlock(16)), randomize(AdaLNFinalLayer(16, 4), seed=1)
    x, y = torch.randn(6, 16), torch.randn(6, 16)
    expected = final(block(x, y), y)
    block, final = block.to(torch.bfloat16), final.to(torch.bfloat16)
    out = final(block(x.bfloat16(), y.bfloat16()), y.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=2e-2)


def test_final_layer_is_the_formula():
    final = randomize(AdaLNFinalLayer(16, 4))
    x, y = torch.randn(6, 16), torch.randn(6, 16)
    shift, scale = linear(F.silu(y), final.adaLN_modulation[1]).chunk(2, dim=-1)
    expected = linear(layer_norm(x) * (1 + scale) + shift, final.linear)
    torch.testing.assert_close(final(x, y), expected)


def test_initialisation_follows_the_official_head():
    torch.manual_seed(0)
    block, final = AdaLNResBlock(32), AdaLNFinalLayer(32, 8)
    x, y = torch.randn(4, 32), torch.randn(4, 32)
    torch.testing.assert_close(block(x, y), x)  # zero adaLN: gate = 0, the block is the identity
    torch.testing.assert_close(final(x, y), torch.zeros(4, 8))  # zero final linear
    bound = math.sqrt(6 / (32 + 32))  # xavier-uniform
    for linear_layer in (block.mlp[0], block.mlp[2]):
        assert linear_layer.weight.abs().max() <= bound and linear_layer.weight.std() > bound / 4
        assert not linear_layer.bias.any()
    for zeroed in (block.adaLN_modulation[1].weight, final.adaLN_modulation[1].bias, final.linear.weight):
        assert not zeroed.any()
    torch.testing.assert_close(block.in_ln.weight.detach(), torch.ones(32))
    assert block.in_ln.eps == 1e-6 and final.eps == 1e-6


def test_state_dict_keys_are_the_official_names():
    assert list(AdaLNResBlock(8).state_dict()) == [
        "in_ln.weight",
        "in_ln.bias",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "adaLN_modulation.1.weight",
        "adaLN_modulation.1.bias",
    ]
    shapes = {k: tuple(v.shape) for k, v in AdaLNFinalLayer(8, 3).state_dict().items()}
    assert shapes == {
        "linear.weight": (3, 8),
        "linear.bias": (3,),
        "adaLN_modulation.1.weight": (16, 8),
        "adaLN_modulation.1.bias": (16,),
    }


def test_nextstep1_head_blocks_have_the_published_size():
    with torch.device("meta"):
        blocks = [AdaLNResBlock(1536) for _ in range(12)] + [AdaLNFinalLayer(1536, 64)]
    # 157,228,096 for the whole head, minus input_proj, time_embed and cond_embed
    assert (
        sum(p.numel() for b in blocks for p in b.parameters()) == 157_228_096 - 99_840 - 2_755_584 - 7_865_856
    )


def test_gradients_reach_every_parameter():
    block, final = randomize(AdaLNResBlock(8)), randomize(AdaLNFinalLayer(8, 3), seed=1)
    x, y = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    final(block(x, y), y).pow(2).sum().backward()
    for name, p in [("x", x), ("y", y), *block.named_parameters(), *final.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: AdaLNResBlock(0), ValueError, "width must be an int >= 1, got 0"),
        (lambda: AdaLNFinalLayer(8, 0), ValueError, "out_channels must be an int >= 1, got 0"),
        (lambda: AdaLNFinalLayer(8, 2, eps=1.5), ValueError, r"eps must be a float in \[0, 1\)"),
        (
            lambda: AdaLNResBlock(8)(torch.randn(3, 6), torch.randn(3, 8)),
            ValueError,
            r"x has shape \(3, 6\) but AdaLNResBlock has width 8",
        ),
        (
            lambda: AdaLNResBlock(8)(torch.randn(3, 8), torch.randn(1, 8)),
            ValueError,
            r"x and y must both be \[tokens, 8\] \(one conditioning row per token\), got x \(3, 8\) and y \(1, 8\)",
        ),
        (
            lambda: AdaLNFinalLayer(8, 2)(torch.randn(2, 3, 8), torch.randn(2, 3, 8)),
            ValueError,
            r"x and y must both be \[tokens, 8\]",
        ),
        (
            lambda: AdaLNFinalLayer(8, 2)(torch.randn(3, 8), torch.ones(3, 8, dtype=torch.long)),
            TypeError,
            "y must have a floating-point dtype",
        ),
    ],
)
def test_bad_inputs(make, error, message):
    with pytest.raises(error, match=message):
        make()
