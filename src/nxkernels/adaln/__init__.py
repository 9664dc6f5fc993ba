"""AdaLN: ``adaln_modulate(x, shift, scale)`` = LayerNorm(x, no affine) * (1 + scale) + shift, and
``gated_residual(x, gate, h)`` = x + gate * h — the inner loop of NextStep-1's flow head and of
AdaLN blocks. ``shift``/``scale``/``gate`` broadcast over the token dimension ([B, D] or [B, T, D]
against x [B, T, D]).

The public functions are the pure-PyTorch reference for now (``nxkernels.adaln.reference``); the
dispatcher puts the Triton backend (``adaln_modulate_triton``, ``gated_residual_triton``: fused
forward and backward) behind these same signatures. The ``*_triton`` functions import triton only
when first called. ``ATOL``/``RTOL`` are the per-dtype tolerances of the Triton backend against the
reference, read by the parity tests.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.adaln.reference import adaln_modulate_reference, gated_residual_reference
from nxkernels.dispatch import Backend, Op, triton_reasons
from nxkernels.typecheck import typecheck

__all__ = [
    "ADALN_MODULATE",
    "ATOL",
    "GATED_RESIDUAL",
    "RTOL",
    "adaln_modulate",
    "adaln_modulate_reference",
    "adaln_modulate_triton",
    "gated_residual",
    "gated_residual_reference",
    "gated_residual_triton",
]

# Both sides use fp32 statistics and round once to the output dtype, so outputs differ by about
# one ulp of that dtype; gradients of broadcast shift/scale/gate sum many rows in fp32 in a
# different order, hence the larger fp32 atol.
ATOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_ALL = (*_HALF_AND_FLOAT, torch.float64)


def _dtypes_supported(*args, **kwargs) -> list[str]:
    return [f"an input has dtype {t.dtype}; the Triton kernels take fp32, fp16, bf16"
            for t in args if isinstance(t, Tensor) and t.dtype not in _HALF_AND_FLOAT][:1]


def _backends(name: str) -> tuple[Backend, Backend]:
    return (
        Backend("triton", f"nxkernels.adaln.triton:{name}_triton", devices=("cuda", "cpu"),
                dtypes=_HALF_AND_FLOAT, atol=ATOL, rtol=RTOL, max_last_dim=65536,
                available=triton_reasons, check=_dtypes_supported, auto_devices=("cuda",),
                description="fused forward + backward"),
        Backend("reference", f"nxkernels.adaln.reference:{name}_reference",
                devices=("cpu", "cuda", "mps", "xpu"), dtypes=_ALL, atol=dict.fromkeys(_ALL, 0.0),
                rtol=dict.fromkeys(_ALL, 0.0), description="plain torch, fp32 statistics (the oracle)"),
    )


def _shape_class(x, *args, **kwargs) -> tuple:
    return (x.shape[-1] if isinstance(x, Tensor) and x.ndim else 0,
            tuple(t.dtype for t in args if isinstance(t, Tensor)))


# Backends in priority order (nxkernels.dispatch): Triton on CUDA (on CPU only when pinned, under
# TRITON_INTERPRET=1), then the reference.
ADALN_MODULATE = Op("adaln_modulate", backends=_backends("adaln_modulate"), shape_class=_shape_class)
GATED_RESIDUAL = Op("gated_residual", backends=_backends("gated_residual"), shape_class=_shape_class)


@typecheck
def adaln_modulate(
    x: Float[Tensor, "*batch dim"], shift: Float[Tensor, "..."], scale: Float[Tensor, "..."],
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch dim"]:
    """LayerNorm(x) (no affine, fp32 statistics) * (1 + scale) + shift, in ``x``'s dtype.

    ``backend`` pins a backend (``"triton"``, ``"reference"``); see ``nxkernels.dispatch``.
    """
    chosen = ADALN_MODULATE.select(x, shift, scale, eps, backend=backend)
    return chosen.load()(x, shift, scale, eps)


@typecheck
def gated_residual(
    x: Float[Tensor, "*batch dim"],
    gate: Float[Tensor, "..."],
    h: Float[Tensor, "*batch dim"],
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch dim"]:
    """``x + gate * h`` (fp32 math), in ``x``'s dtype; ``backend`` pins a backend."""
    return GATED_RESIDUAL.select(x, gate, h, backend=backend).load()(x, gate, h)


def adaln_modulate_triton(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """Fused Triton forward and backward of ``adaln_modulate`` (``AdaLNModulateTriton``)."""
    from nxkernels.adaln.triton import adaln_modulate_triton as _impl

    return _impl(x, shift, scale, eps)


def gated_residual_triton(x: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """Triton forward and backward of ``gated_residual`` (``GatedResidualTriton``)."""
    from nxkernels.adaln.triton import gated_residual_triton as _impl

    return _impl(x, gate, h)
