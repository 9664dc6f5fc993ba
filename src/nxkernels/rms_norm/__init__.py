"""RMSNorm with an optional fused residual add: ``rms_norm`` and its backends.

    y = rms_norm(x, weight, eps)                         # [*batch, dim] -> [*batch, dim]
    y, h = rms_norm(x, weight, eps, residual=residual)   # h = x + residual, y = rms_norm(h)

Backends, in priority order: ``triton`` (CUDA tensors; CPU tensors only when pinned, under
``TRITON_INTERPRET=1``), ``reference`` (plain torch, fp32 statistics; see ``reference.py``). The
choice follows ``nxkernels.dispatch`` (``backend=``, ``use_backend``, ``NX_KERNELS``). The op is
the ``torch.library`` custom op ``nxkernels::rms_norm_fwd`` (with ``nxkernels::rms_norm_bwd`` for
its backward), so it traces under ``torch.compile`` and passes ``torch.library.opcheck``. Eager calls
that need no gradient skip the custom op and run the backend's ``inference`` kernel when it has one
(the reference's: one ``F.rms_norm`` call on CPU, bit for bit its forward), else its forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.dispatch import Backend, Op, eager_inference, triton_reasons
from nxkernels.rms_norm.reference import rms_norm_reference
from nxkernels.typecheck import typecheck

__all__ = ["RMS_NORM", "rms_norm", "rms_norm_inference_kernel", "rms_norm_reference"]

_HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_DIM = 65536


def _triton_check(x, weight, eps=1e-6, *, residual=None) -> list[str]:
    reasons = []
    if weight.dtype not in _HALF_AND_FLOAT:
        reasons.append(f"weight dtype {weight.dtype} is not supported (fp32, fp16, bf16)")
    return reasons


def _shape_class(x, weight, eps=1e-6, *, residual=None) -> tuple:
    return (x.shape[-1] if x.ndim else 0, weight.dtype, residual is not None)


RMS_NORM = Op(
    "rms_norm",
    backends=(
        Backend(
            "triton",
            "nxkernels.rms_norm.triton:KERNELS",
            devices=("cuda", "cpu"),
            dtypes=_HALF_AND_FLOAT,
            atol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-2},
            rtol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2},
            max_last_dim=TRITON_MAX_DIM,
            available=triton_reasons,
            check=_triton_check,
            auto_devices=("cuda",),
            description="fused forward + backward, one program per block of whole rows",
        ),
        Backend(
            "reference",
            "nxkernels.rms_norm.reference:KERNELS",
            devices=("cpu", "cuda", "mps", "xpu"),
            dtypes=(*_HALF_AND_FLOAT, torch.float64),
            atol=dict.fromkeys((*_HALF_AND_FLOAT, torch.float64), 0.0),
            rtol=dict.fromkeys((*_HALF_AND_FLOAT, torch.float64), 0.0),
            description="plain torch, fp32 statistics (the oracle)",
        ),
    ),
    shape_class=_shape_class,
)


def _kernels(backend: str) -> dict:
    return RMS_NORM.backend(backend).load()


def _rms_norm_forward(
    x: Tensor, weight: Tensor, residual: Tensor | None, eps: float, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    r2 = None if residual is None else residual.reshape(-1, shape[-1]).contiguous()
    y, h, rstd = _kernels(backend)["forward"](x2, weight, r2, eps)
    h = x.new_empty(0) if h is None else h.view(shape)
    return y.view(shape), h, rstd.view(shape[:-1])


_rms_norm_fwd = torch.library.custom_op("nxkernels::rms_norm_fwd", mutates_args=())(_rms_norm_forward)


@_rms_norm_fwd.register_fake
def _(x, weight, residual, eps, backend):
    stats = torch.promote_types(x.dtype, torch.float32)
    h = torch.empty_like(x) if residual is not None else x.new_empty(0)
    return torch.empty_like(x), h, x.new_empty(x.shape[:-1], dtype=stats)


@torch.library.custom_op("nxkernels::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(
    dy: Tensor, h: Tensor, weight: Tensor, rstd: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    shape = h.shape
    dh, dw = _kernels(backend)["backward"](
        dy.reshape(-1, shape[-1]).contiguous(),
        h.reshape(-1, shape[-1]).contiguous(),
        weight,
        rstd.reshape(-1),
    )
    return dh.view(shape), dw


@_rms_norm_bwd.register_fake
def _(dy, h, weight, rstd, backend):
    return torch.empty_like(h), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, residual, eps, backend = inputs
    _, h, rstd = output
    ctx.save_for_backward(x if residual is None else h, weight, rstd)
    ctx.backend = backend
    ctx.has_residual = residual is not None


def _backward(ctx, dy, dh_out, drstd):
    h, weight, rstd = ctx.saved_tensors
    dh, dw = torch.ops.nxkernels.rms_norm_bwd(dy, h, weight, rstd, ctx.backend)
    if not ctx.has_residual:
        return dh, dw, None, None, None
    if dh_out is not None:
        dh = dh + dh_out
    return dh, dw, dh, None, None


_rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _validate(x, weight, eps, residual) -> None:
    for name, t in (("x", x), ("weight", weight), ("residual", residual)):
        if t is None and name == "residual":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}; convert it with .float()")
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension ([*batch, dim]), got a scalar")
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but x has shape {tuple(x.shape)}; weight must "
            f"be [{x.shape[-1]}] (x's last dimension)"
        )
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}; move it with .to(x.device)")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if residual is not None:
        if residual.dtype != x.dtype:
            raise TypeError(
                f"residual has dtype {residual.dtype} but x has {x.dtype}; cast it with .to(x.dtype)"
            )
        if residual.device != x.device:
            raise ValueError(
                f"residual is on {residual.device} but x is on {x.device}; move it with .to(x.device)"
            )
        if residual.shape != x.shape and not _broadcasts_to(residual.shape, x.shape):
            raise ValueError(
                f"residual has shape {tuple(residual.shape)}, which does not broadcast to x's shape "
                f"{tuple(x.shape)}"
            )


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


@typecheck
def rms_norm(
    x: Float[Tensor, "*batch dim"],
    weight: Float[Tensor, " dim"],
    eps: float = 1e-6,
    *,
    residual: Float[Tensor, "..."] | None = None,
    backend: str | None = None,
) -> Float[Tensor, "*batch dim"] | tuple[Float[Tensor, "*batch dim"], Float[Tensor, "*batch dim"]]:
    """RMSNorm over the last dimension, fp32 statistics; ``y`` in x's dtype.

    With ``residual`` (broadcastable to ``x``, same dtype) returns ``(y, h)`` where
    ``h = x + residual`` is the new residual stream and ``y = rms_norm(h)``. ``backend`` pins a
    backend (``"triton"``, ``"reference"``); a pinned backend that cannot run raises ValueError.
    """
    _validate(x, weight, eps, residual)
    if residual is not None and residual.shape != x.shape:
        residual = residual.expand(x.shape)
    chosen = RMS_NORM.select(x, weight, eps, residual=residual, backend=backend)
    if eager_inference(x, weight, residual):
        y, h = _inference_kernel(chosen)(x, weight, residual, float(eps))
    else:
        y, h, _ = torch.ops.nxkernels.rms_norm_fwd(x, weight, residual, float(eps), chosen.name)
    return y if residual is None else (y, h)


RmsNormKernel = Callable[[Tensor, Tensor, "Tensor | None", float], "tuple[Tensor, Tensor | None]"]


def rms_norm_inference_kernel(
    x: Tensor, weight: Tensor, eps: float = 1e-6, *, residual: Tensor | None = None,
    backend: str | None = None,
) -> RmsNormKernel:
    """The kernel ``rms_norm`` runs for an eager call without gradients, chosen for these arguments
    (the same choice): ``kernel(x, weight, residual or None, eps) -> (y, h or None)`` on
    ``[*batch, dim]`` input, ``h = x + residual``. No validation and no dispatch per call: for
    callers that checked their arguments and call it many times (``nxcore.nn.forward_layers``)."""
    _validate(x, weight, eps, residual)
    return _inference_kernel(RMS_NORM.select(x, weight, eps, residual=residual, backend=backend))


def _inference_kernel(chosen: Backend) -> RmsNormKernel:
    """The backend's ``inference`` kernel, or its forward without the statistics."""
    inference = chosen.load().get("inference")
    if inference is not None:
        return inference
    kernel = _FORWARDS.get(chosen.name)
    if kernel is None:
        name = chosen.name

        def kernel(x: Tensor, weight: Tensor, residual: Tensor | None, eps: float):
            y, h, _ = _rms_norm_forward(x, weight, residual, eps, name)
            return y, (None if residual is None else h)

        _FORWARDS[name] = kernel
    return kernel


_FORWARDS: dict[str, RmsNormKernel] = {}
