import math

import pytest
import torch

from nxrecipes.tokenizer.metrics import MAX_PSNR, SSIM_K1, CodeUsage, gaussian_window, psnr, ssim


def _images(seed=0, shape=(3, 3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    # smooth structure plus texture, in [-1, 1]
    base = torch.rand(shape, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1).clamp(-1, 1)


def test_psnr_of_a_constant_offset_is_known():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.2  # 0.1 in [0, 1] units: MSE 0.01, PSNR 20 dB
    assert torch.allclose(psnr(x, y), torch.full((2,), 20.0), atol=1e-4)


def test_psnr_of_identical_images_is_the_cap_not_inf():
    x = _images()
    assert torch.equal(psnr(x, x), torch.full((3,), MAX_PSNR))


def test_psnr_is_per_image():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[1] += 0.02  # only the second image differs: 0.01 in [0, 1] -> 40 dB
    out = psnr(x, y)
    assert out[0] == MAX_PSNR and abs(float(out[1]) - 40.0) < 1e-3


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    assert abs(float(w.sum()) - 1.0) < 1e-12
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    assert w.argmax() == 5 * 11 + 5


def test_ssim_of_an_image_with_itself_is_one():
    x = _images()
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)


def test_ssim_is_symmetric():
    x, y = _images(0), _images(1)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-7)


def test_ssim_decreases_as_noise_grows():
    x = _images()
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    scores = [float(ssim(x, (x + s * noise).clamp(-1, 1)).mean()) for s in (0.0, 0.02, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.5


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.3, 0.7  # in [0, 1]
    x = torch.full((1, 3, 16, 16), 2 * a - 1)
    y = torch.full((1, 3, 16, 16), 2 * b - 1)
    c1 = SSIM_K1**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances and covariance are 0: the rest is 1
    assert float(ssim(x, y)[0]) == pytest.approx(expected, rel=1e-6)


def test_ssim_ignores_a_shift_less_than_a_scale():
    x = _images()
    shifted = ssim(x, (x + 0.05).clamp(-1, 1)).mean()
    flattened = ssim(x, x * 0.3).mean()  # structure kept, contrast and luminance lost
    assert shifted > flattened


def test_code_usage_counts_per_scale_and_pooled():
    usage = CodeUsage(4)
    usage.update([torch.tensor([[[0]]]), torch.tensor([[[0, 1], [1, 0]]])])
    usage.update([torch.tensor([[[2]]]), torch.tensor([[[0, 1], [1, 0]]])])
    assert usage.usage.tolist() == [0.5, 0.5]
    assert usage.perplexity.tolist() == pytest.approx([2.0, 2.0])
    assert usage.tokens.tolist() == [2, 8]
    assert usage.ceiling.tolist() == [0.5, 1.0]
    assert usage.overall_usage == 0.75  # codes 0, 1, 2
    p = torch.tensor([5, 4, 1]) / 10  # pooled counts of codes 0, 1, 2
    assert usage.overall_perplexity == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    summary = usage.summary()
    assert summary["codebook_size"] == 4 and summary["per_scale"]["tokens"] == [2, 8]


def test_perplexity_of_uniform_and_collapsed_histograms():
    uniform = CodeUsage(8)
    uniform.update([torch.arange(8).reshape(1, 2, 4)])
    collapsed = CodeUsage(8)
    collapsed.update([torch.zeros(1, 2, 4, dtype=torch.long)])
    assert float(uniform.perplexity[0]) == pytest.approx(8.0)
    assert float(collapsed.perplexity[0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 4)), ValueError, r"one shape.*\(1, 3, 8, 4\)"),
        (lambda: ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError,
         r"images are 8x8 but the SSIM window is 11x11"),
        (lambda: gaussian_window(4), ValueError, r"window size must be an odd int >= 1.*got 4"),
        (lambda: CodeUsage(0), ValueError, r"codebook_size must be an int >= 1.*got 0"),
        (lambda: CodeUsage(4).update([torch.tensor([[[4]]])]), ValueError, r"codes\[0\] holds values in \[4, 4\]"),
        (lambda: CodeUsage(4).update(torch.zeros(1, 1, 1, dtype=torch.long)), TypeError, r"non-empty list"),
        (lambda: CodeUsage(4).usage, ValueError, r"seen no codes yet"),
    ],
)
def test_bad_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_code_usage_rejects_a_different_number_of_scales():
    usage = CodeUsage(4)
    usage.update([torch.zeros(1, 1, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"codes has 2 scales but this CodeUsage counts 1"):
        usage.update([torch.zeros(1, 1, 1, dtype=torch.long)] * 2)
