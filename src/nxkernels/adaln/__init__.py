"""AdaLN: ``adaln_modulate(x, shift, scale)`` = LayerNorm(x, no affine) * (1 + scale) + shift, and
``gated_residual(x, gate, h)`` = x + gate * h — the inner loop of NextStep-1's flow head and of
AdaLN blocks.

    y = adaln_modulate(x, shift, scale, eps)   # x [*batch, dim] -> [*batch, dim]
    x = gated_residual(x, gate, h)             # x, h [*batch, dim] -> [*batch, dim]

``shift``/``scale``/``gate`` broadcast over the token dimension: for x [B, T, D] they may be
[B, D] (read as [B, 1, D]), [B, 1, D], [B, T, D] or [D], or any shape that broadcasts to x; their
gradients come back in their own shape and dtype.

Backends, in priority order: ``triton`` (CUDA tensors; CPU tensors only when pinned, under
``TRITON_INTERPRET=1``), ``reference`` (plain torch, fp32 statistics; see ``reference.py``). The
choice follows ``nxkernels.dispatch`` (``backend=``, ``use_backend``, ``NX_KERNELS``). The ops are
the ``torch.library`` custom ops ``nxkernels::adaln_modulate_fwd`` / ``nxkernels::gated_residual_fwd``
(with ``..._bwd`` for their backwards), so they trace under ``torch.compile`` and pass
``torch.library.opcheck``. The custom ops take modulation tensors that broadcast to x by torch's
rules; the [B, D] -> [B, 1, D] reading happens in the public functions. Backends take tensors of
any strides; the ops return contiguous tensors.

Shape legend:
    batch   leading dimensions of ``x`` (e.g. [B, T] or [N])
    dim     feature width (1536 in NextStep-1's flow head)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.adaln.reference import (
    adaln_modulate_reference,
    as_broadcast,
    check_eps,
    check_float,
    check_h,
    gated_residual_reference,
    stats_dtype,
)
from nxkernels.dispatch import Backend, Op, triton_reasons
from nxkernels.typecheck import typecheck

__all__ = [
    "ADALN_MODULATE",
    "GATED_RESIDUAL",
    "adaln_modulate",
    "adaln_modulate_reference",
    "gated_residual",
    "gated_residual_reference",
]

_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_ALL = (*_HALF_AND_FLOAT, torch.float64)


def _dtypes_supported(*args, **kwargs) -> list[str]:
    return [
        f"an input has dtype {t.dtype}; the Triton kernels take fp32, fp16, bf16"
        for t in args
        if isinstance(t, Tensor) and t.dtype not in _HALF_AND_FLOAT
    ][:1]


def _backends(kernels: str) -> tuple[Backend, Backend]:
    return (
        Backend(
            "triton",
            f"nxkernels.adaln.triton:{kernels}",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            # Both sides use fp32 statistics and round once to the output dtype, so outputs differ by
            # about one ulp of that dtype; gradients of broadcast shift/scale/gate sum many rows in
            # fp32 in a different order, hence the larger fp32 tolerance.
            atol={torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3.2e-2},
            rtol={torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 1.6e-2},
            max_last_dim=65536,
            available=triton_reasons,
            check=_dtypes_supported,
            auto_devices=("cuda",),
            description="fused forward + backward, modulation rows shared by their row group",
        ),
        Backend(
            "reference",
            f"nxkernels.adaln.reference:{kernels}",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=_ALL,
            atol=dict.fromkeys(_ALL, 0.0),
            rtol=dict.fromkeys(_ALL, 0.0),
            description="plain torch, fp32 statistics (the oracle)",
        ),
    )


def _shape_class(x, *args, **kwargs) -> tuple:
    return (
        x.shape[-1] if isinstance(x, Tensor) and x.ndim else 0,
        tuple(t.dtype for t in args if isinstance(t, Tensor)),
    )


ADALN_MODULATE = Op("adaln_modulate", backends=_backends("ADALN_MODULATE_KERNELS"), shape_class=_shape_class)
GATED_RESIDUAL = Op("gated_residual", backends=_backends("GATED_RESIDUAL_KERNELS"), shape_class=_shape_class)


# ------------------------------------------------------------------------------------------------
# adaln_modulate: forward saves fp32 mean and rstd [*batch] for the backward


@torch.library.custom_op("nxkernels::adaln_modulate_fwd", mutates_args=())
def _adaln_modulate_fwd(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = ADALN_MODULATE.backend(backend).load()["forward"](x, shift, scale, eps)
    return y.contiguous(), mean.contiguous(), rstd.contiguous()


@_adaln_modulate_fwd.register_fake
def _(x, shift, scale, eps, backend):
    stats = stats_dtype(x, shift, scale)
    return x.new_empty(x.shape), *(x.new_empty(x.shape[:-1], dtype=stats) for _ in range(2))


@torch.library.custom_op("nxkernels::adaln_modulate_bwd", mutates_args=())
def _adaln_modulate_bwd(
    dy: Tensor,
    x: Tensor,
    scale: Tensor,
    mean: Tensor,
    rstd: Tensor,
    shift_shape: list[int],
    shift_dtype: torch.dtype,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    kernels = ADALN_MODULATE.backend(backend).load()
    grads = kernels["backward"](dy, x, scale, mean, rstd, tuple(shift_shape), shift_dtype)
    return tuple(g.contiguous() for g in grads)


@_adaln_modulate_bwd.register_fake
def _(dy, x, scale, mean, rstd, shift_shape, shift_dtype, backend):
    return x.new_empty(x.shape), x.new_empty(shift_shape, dtype=shift_dtype), scale.new_empty(scale.shape)


def _adaln_setup_context(ctx, inputs, output):
    x, shift, scale, eps, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, mean, rstd)
    ctx.shift_meta = (list(shift.shape), shift.dtype)
    ctx.backend = backend


def _adaln_backward(ctx, dy, dmean, drstd):
    x, scale, mean, rstd = ctx.saved_tensors
    shift_shape, shift_dtype = ctx.shift_meta
    dx, dshift, dscale = torch.ops.nxkernels.adaln_modulate_bwd(
        dy, x, scale, mean, rstd, shift_shape, shift_dtype, ctx.backend
    )
    return dx, dshift, dscale, None, None


_adaln_modulate_fwd.register_autograd(_adaln_backward, setup_context=_adaln_setup_context)


# ------------------------------------------------------------------------------------------------
# gated_residual: the gradient of x is dy itself, passed on outside the backward op


@torch.library.custom_op("nxkernels::gated_residual_fwd", mutates_args=())
def _gated_residual_fwd(x: Tensor, gate: Tensor, h: Tensor, backend: str) -> Tensor:
    return GATED_RESIDUAL.backend(backend).load()["forward"](x, gate, h).contiguous()


@_gated_residual_fwd.register_fake
def _(x, gate, h, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("nxkernels::gated_residual_bwd", mutates_args=())
def _gated_residual_bwd(dy: Tensor, gate: Tensor, h: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    dgate, dh = GATED_RESIDUAL.backend(backend).load()["backward"](dy, gate, h)
    return dgate.contiguous(), dh.contiguous()


@_gated_residual_bwd.register_fake
def _(dy, gate, h, backend):
    return gate.new_empty(gate.shape), h.new_empty(h.shape)


def _gated_setup_context(ctx, inputs, output):
    x, gate, h, backend = inputs
    ctx.save_for_backward(gate, h)
    ctx.x_dtype = x.dtype
    ctx.backend = backend


def _gated_backward(ctx, dy):
    gate, h = ctx.saved_tensors
    dgate, dh = torch.ops.nxkernels.gated_residual_bwd(dy, gate, h, ctx.backend)
    return dy.to(ctx.x_dtype), dgate, dh, None


_gated_residual_fwd.register_autograd(_gated_backward, setup_context=_gated_setup_context)


# ------------------------------------------------------------------------------------------------
# public functions


@typecheck
def adaln_modulate(
    x: Float[Tensor, "*batch dim"],
    shift: Float[Tensor, "..."],
    scale: Float[Tensor, "..."],
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch dim"]:
    """LayerNorm(x) (no affine, fp32 statistics) * (1 + scale) + shift, in ``x``'s dtype.

    Differentiable in x, shift and scale. ``backend`` pins a backend (``"triton"``,
    ``"reference"``); a pinned backend that cannot run raises ValueError with its reasons.
    """
    x = check_float("x", x)
    shift = as_broadcast("shift", shift, x)
    scale = as_broadcast("scale", scale, x)
    check_eps(eps)
    chosen = ADALN_MODULATE.select(x, shift, scale, eps, backend=backend)
    y, _, _ = torch.ops.nxkernels.adaln_modulate_fwd(x, shift, scale, float(eps), chosen.name)
    return y


@typecheck
def gated_residual(
    x: Float[Tensor, "*batch dim"],
    gate: Float[Tensor, "..."],
    h: Float[Tensor, "*batch dim"],
    *,
    backend: str | None = None,
) -> Float[Tensor, "*batch dim"]:
    """``x + gate * h`` (fp32 math), in ``x``'s dtype; differentiable in x, gate and h.

    ``backend`` pins a backend (``"triton"``, ``"reference"``).
    """
    x = check_float("x", x)
    gate = as_broadcast("gate", gate, x)
    h = check_h(h, x)
    chosen = GATED_RESIDUAL.select(x, gate, h, backend=backend)
    return torch.ops.nxkernels.gated_residual_fwd(x, gate, h, chosen.name)
