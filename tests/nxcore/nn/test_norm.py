import pytest
import torch

from nxcore.nn import RMSNorm


def rms_formula(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 5, 7)])
def test_rms_norm_is_the_formula(shape):
    torch.manual_seed(0)
    norm = RMSNorm(7, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(shape)
    torch.testing.assert_close(norm(x), rms_formula(x, norm.weight, 1e-5))


def test_fused_residual_returns_the_normed_sum_and_the_new_stream():
    torch.manual_seed(0)
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, residual = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    y, stream = norm(x, residual)
    torch.testing.assert_close(stream, x + residual)
    torch.testing.assert_close(y, rms_formula(x + residual, norm.weight, 1e-6))


def test_gradients_reach_weight_and_inputs():
    torch.manual_seed(0)
    norm = RMSNorm(4)
    x = torch.randn(3, 4, requires_grad=True)
    residual = torch.randn(3, 4, requires_grad=True)
    y, stream = norm(x, residual)
    (y * torch.randn_like(y)).sum().add(stream.sum()).backward()
    for t in (norm.weight, x, residual):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_parameter_name_and_init():
    norm = RMSNorm(5)
    assert list(norm.state_dict()) == ["weight"]
    torch.testing.assert_close(norm.weight.detach(), torch.ones(5))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: RMSNorm(0), ValueError, "dim must be an int >= 1, got 0"),
        (lambda: RMSNorm(4.0), TypeError, "dim must be an int, got 4.0"),
        (lambda: RMSNorm(4, eps=-1.0), ValueError, r"eps must be a float in \[0, 1\), e.g. 1e-6, got -1.0"),
    ],
)
def test_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("x", "residual", "error", "message"),
    [
        (torch.randn(2, 5), None, ValueError, r"x has shape \(2, 5\) but RMSNorm has width 4"),
        (torch.ones(2, 4, dtype=torch.long), None, TypeError, "x must have a floating-point dtype"),
        (
            torch.randn(2, 4),
            torch.randn(1, 4),
            ValueError,
            r"residual has shape \(1, 4\) but x has shape \(2, 4\)",
        ),
        (
            torch.randn(2, 4),
            torch.randn(2, 3),
            ValueError,
            r"residual has shape \(2, 3\) but RMSNorm has width 4",
        ),
    ],
)
def test_bad_inputs(x, residual, error, message):
    with pytest.raises(error, match=message):
        RMSNorm(4)(x, residual)
