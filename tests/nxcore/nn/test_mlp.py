import pytest
import torch

from nxcore.nn import SwiGLUMLP


def linear(x, layer):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_mlp_is_the_formula(bias):
    torch.manual_seed(0)
    mlp = SwiGLUMLP(6, 10, bias=bias)
    x = torch.randn(2, 3, 6)
    gate, up = linear(x, mlp.gate_proj), linear(x, mlp.up_proj)
    expected = linear(gate * torch.sigmoid(gate) * up, mlp.down_proj)
    torch.testing.assert_close(mlp(x), expected)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    mlp = SwiGLUMLP(4, 8, bias=True)
    mlp(torch.randn(5, 4)).pow(2).sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_names_follow_qwen2():
    assert list(SwiGLUMLP(4, 8).state_dict()) == ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
    shapes = {k: tuple(v.shape) for k, v in SwiGLUMLP(4, 8, bias=True).state_dict().items()}
    assert shapes == {
        "gate_proj.weight": (8, 4),
        "gate_proj.bias": (8,),
        "up_proj.weight": (8, 4),
        "up_proj.bias": (8,),
        "down_proj.weight": (4, 8),
        "down_proj.bias": (4,),
    }


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: SwiGLUMLP(4, 0), ValueError, "hidden must be an int >= 1, got 0"),
        (lambda: SwiGLUMLP(4, 8, bias=1), TypeError, "bias must be True or False, got 1"),
        (
            lambda: SwiGLUMLP(4, 8)(torch.randn(3, 5)),
            ValueError,
            r"x has shape \(3, 5\) but SwiGLUMLP has width 4",
        ),
    ],
)
def test_bad_inputs(make, error, message):
    with pytest.raises(error, match=message):
        make()
