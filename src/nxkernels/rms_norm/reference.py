"""RMSNorm, the reference: plain torch, fp32 statistics, the oracle for every fused backend.

    h = x + residual            (in x's dtype, when a residual is given; else h = x)
    y = h * rsqrt(mean(h**2, -1) + eps) * weight

The statistics and the scaling run in fp32 (fp64 for fp64 input), weight included; ``y`` has x's
dtype. With a residual the function returns ``(y, h)``: the normed tensor and the new residual
stream, as pre-norm decoder layers use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rms_norm_backward_reference",
    "rms_norm_forward_reference",
    "rms_norm_inference_reference",
    "rms_norm_reference",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def rms_norm_reference(
    x: Tensor, weight: Tensor, eps: float = 1e-6, *, residual: Tensor | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """RMSNorm over the last dimension; ``(y, x + residual)`` when ``residual`` is given."""
    h = x if residual is None else x + residual
    compute = _compute_dtype(h.dtype)
    hf = h.to(compute)
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    y = (hf * rstd * weight.to(compute)).to(h.dtype)
    return y if residual is None else (y, h)


def rms_norm_forward_reference(
    x: Tensor, weight: Tensor, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Backend form on 2-D ``[rows, dim]`` input: ``(y, h or None, rstd [rows])``.

    ``rstd`` is fp32 (fp64 for fp64 input); ``h`` is None without a residual.
    """
    h = x if residual is None else x + residual
    compute = _compute_dtype(h.dtype)
    hf = h.to(compute)
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    y = (hf * rstd * weight.to(compute)).to(h.dtype)
    return y, (None if residual is None else h), rstd.squeeze(-1)


def rms_norm_backward_reference(
    dy: Tensor, h: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of ``y`` w.r.t. ``h`` and ``weight`` (2-D ``[rows, dim]``), analytically.

    With n = h * rstd: dn = dy * w; dh = rstd * (dn - n * mean(dn * n)); dw = sum_rows(dy * n).
    """
    compute = _compute_dtype(h.dtype)
    hf, dyf = h.to(compute), dy.to(compute)
    r = rstd.to(compute).unsqueeze(-1)
    n = hf * r
    dn = dyf * weight.to(compute)
    dh = r * (dn - n * (dn * n).mean(-1, keepdim=True))
    dw = (dyf * n).sum(0)
    return dh.to(h.dtype), dw.to(weight.dtype)


def rms_norm_inference_reference(
    x: Tensor, weight: Tensor, residual: Tensor | None, eps: float
) -> tuple[Tensor, Tensor | None]:
    """Inference form on input of any shape (no statistics kept): ``(y, h or None)``, contiguous and
    equal to the forward's. On CPU tensors ``F.rms_norm`` is ATen's composite of this file's ops in the same
    order (upcast, ``pow(2).mean(-1) + eps``, ``rsqrt``, ``* weight``, cast back): one call instead of
    ten, bit for bit the same (tested); elsewhere it may be a fused kernel that rounds differently,
    so other devices run the forward's ops."""
    h = x if residual is None else x + residual
    if h.device.type == "cpu" and weight.dtype == h.dtype:
        y = F.rms_norm(h, (h.shape[-1],), weight, eps).contiguous()
    else:
        shape = h.shape
        y = rms_norm_forward_reference(h.reshape(-1, shape[-1]), weight, None, eps)[0].view(shape)
    return y, (None if residual is None else h.contiguous())


KERNELS = {
    "forward": rms_norm_forward_reference,
    "backward": rms_norm_backward_reference,
    "inference": rms_norm_inference_reference,
}
