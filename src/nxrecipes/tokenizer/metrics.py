"""Reconstruction and codebook metrics of image tokenizers: PSNR, SSIM, code usage and perplexity.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels
    h, w            the code grid of one scale
    codes           codebook rows (``codebook_size``)
    scale           steps of a scale schedule (coarse to fine)

Images are float in [-1, 1] (the tokenizer convention); PSNR and SSIM map them to [0, 1] first, so
the peak signal is 1.

- ``psnr``: ``10·log10(1 / MSE)`` per image over all channels and pixels; an exact match gives
  ``MAX_PSNR`` (the MSE is floored at ``10 ** (-MAX_PSNR / 10)``), never inf.
- ``ssim``: the SSIM of Wang et al. (2004) with an 11x11 Gaussian window (σ = 1.5), K1 = 0.01,
  K2 = 0.03, population (co)variances, computed on every full window ("valid" filtering, no padding)
  of every channel and averaged per image. SSIM(x, x) = 1; SSIM is symmetric; for constant images
  a and b it is the luminance term ``(2ab + C1) / (a² + b² + C1)`` alone.
- ``CodeUsage``: histograms of the codes of each scale, accumulated over batches; ``usage`` is the
  fraction of the codebook hit at least once, ``perplexity`` the exponential of the entropy of the
  code frequencies (``codebook_size`` for a uniform histogram, 1 for a collapsed one), per scale and
  for all scales pooled. ``ceiling`` says how much usage a scale could show at all: a 1x1 scale
  over 256 images hits at most 256 codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.typing import Float, Int, typecheck

__all__ = ["MAX_PSNR", "SSIM_K1", "SSIM_K2", "CodeUsage", "gaussian_window", "psnr", "ssim"]

MAX_PSNR = 100.0
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: object, y: object) -> tuple[Tensor, Tensor]:
    check_tensor("x", x, ndim=4, kind="float")
    check_tensor("y", y, ndim=4, kind="float")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have one shape [batch, channels, height, width], got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; compare each image with its own reconstruction"
        )
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move one with .to()")
    return (x.float() + 1) / 2, (y.float() + 1) / 2


@typecheck
def psnr(
    x: Float[Tensor, "batch channels height width"], y: Float[Tensor, "batch channels height width"]
) -> Float[Tensor, " batch"]:
    """Peak signal-to-noise ratio in dB of each image pair (images in [-1, 1], peak 1 after mapping
    to [0, 1]); at most ``MAX_PSNR``."""
    a, b = _check_pair(x, y)
    mse = (a - b).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(10 ** (-MAX_PSNR / 10)))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Float[Tensor, "size size"]:
    """The normalised 2-D Gaussian window (float64 weights, summing to 1)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be an odd int >= 1 (e.g. 11), got {size!r}")
    number = isinstance(sigma, int | float) and not isinstance(sigma, bool)
    if not (number and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 (e.g. 1.5), got {sigma!r}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


@typecheck
def ssim(
    x: Float[Tensor, "batch channels height width"],
    y: Float[Tensor, "batch channels height width"],
    *,
    window: int = 11,
    sigma: float = 1.5,
) -> Float[Tensor, " batch"]:
    """Mean structural similarity of each image pair (images in [-1, 1]); module docstring."""
    a, b = _check_pair(x, y)
    kernel = gaussian_window(window, sigma)
    height, width = a.shape[-2:]
    if height < window or width < window:
        raise ValueError(
            f"images are {height}x{width} but the SSIM window is {window}x{window}; pass images of at "
            f"least {window}x{window} pixels or a smaller odd window"
        )
    c = a.shape[1]
    weight = kernel.to(device=a.device, dtype=torch.float64).expand(c, 1, window, window)
    a, b = a.double(), b.double()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, weight, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    return (luminance * contrast_structure).flatten(1).mean(1).float()


class CodeUsage:
    """Code histograms per scale over many batches: ``update(codes)``, then ``usage``,
    ``perplexity``, ``summary()``.

    ``codebook_size``: the number of codes (one index space; a dual codebook shares it).
    ``num_scales``: fixed by the first ``update`` unless given.
    """

    def __init__(self, codebook_size: int, num_scales: int | None = None) -> None:
        if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(
                f"codebook_size must be an int >= 1 (the number of codes), got {codebook_size!r}"
            )
        if num_scales is not None and (isinstance(num_scales, bool) or not isinstance(num_scales, int)
                                       or num_scales < 1):
            raise ValueError(f"num_scales must be an int >= 1 or None, got {num_scales!r}")
        self.codebook_size = codebook_size
        self.counts: Tensor | None = (
            None if num_scales is None else torch.zeros(num_scales, codebook_size, dtype=torch.float64)
        )

    @property
    def num_scales(self) -> int:
        return 0 if self.counts is None else self.counts.shape[0]

    def update(self, codes: Sequence[Int[Tensor, "batch h w"]]) -> None:
        """Add one batch: one int code grid per scale, values in [0, codebook_size)."""
        if isinstance(codes, Tensor) or not isinstance(codes, Sequence) or not codes:
            raise TypeError(
                f"codes must be a non-empty list of int code grids, one per scale, got {type(codes).__name__}"
            )
        if self.counts is None:
            self.counts = torch.zeros(len(codes), self.codebook_size, dtype=torch.float64)
        if len(codes) != self.num_scales:
            raise ValueError(
                f"codes has {len(codes)} scales but this CodeUsage counts {self.num_scales}; pass the "
                "codes of one schedule (or a new CodeUsage)"
            )
        for k, grid in enumerate(codes):
            flat = check_tensor(f"codes[{k}]", grid, kind="int").reshape(-1).long().cpu()
            if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size):
                raise ValueError(
                    f"codes[{k}] holds values in [{int(flat.min())}, {int(flat.max())}], outside [0, "
                    f"{self.codebook_size}) (codebook_size); pass this tokenizer's codes"
                )
            self.counts[k] += torch.bincount(flat, minlength=self.codebook_size).double()

    def _need_counts(self) -> Tensor:
        if self.counts is None:
            raise ValueError("CodeUsage has seen no codes yet; call update(codes) first")
        return self.counts

    @property
    def usage(self) -> Tensor:
        """Fraction of the codebook used, per scale: float64 [scale]."""
        return (self._need_counts() > 0).double().mean(1)

    @property
    def perplexity(self) -> Tensor:
        """exp(entropy) of the code frequencies, per scale: float64 [scale]."""
        return _perplexity(self._need_counts())

    @property
    def tokens(self) -> Tensor:
        """Codes counted per scale: float64 [scale]."""
        return self._need_counts().sum(1)

    @property
    def ceiling(self) -> Tensor:
        """The highest usage each scale could reach with the tokens seen: min(1, tokens / codes)."""
        return (self.tokens / self.codebook_size).clamp(max=1.0)

    @property
    def overall_usage(self) -> float:
        """Fraction of the codebook used by any scale."""
        return float((self._need_counts().sum(0) > 0).double().mean())

    @property
    def overall_perplexity(self) -> float:
        """exp(entropy) of the histogram of all scales pooled."""
        return float(_perplexity(self._need_counts().sum(0, keepdim=True))[0])

    def summary(self) -> dict:
        """JSON-ready: codebook size, overall usage/perplexity, and per-scale lists."""
        return {
            "codebook_size": self.codebook_size,
            "usage": self.overall_usage,
            "perplexity": self.overall_perplexity,
            "per_scale": {
                "usage": self.usage.tolist(),
                "perplexity": self.perplexity.tolist(),
                "tokens": [int(t) for t in self.tokens.tolist()],
                "ceiling": self.ceiling.tolist(),
            },
        }


def _perplexity(counts: Tensor) -> Tensor:
    probs = counts / counts.sum(1, keepdim=True).clamp_min(1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(1)
    return entropy.exp()
