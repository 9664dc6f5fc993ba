"""``CallableField``: any function ``(x, t) -> v`` as a ``VelocityField``.

Useful for tests, toy problems and analytic fields, e.g. the exact velocity toward one point::

    x1 = torch.randn(4, 16)
    field = CallableField(lambda x, t: (x1 - x) / (1 - t)[:, None], x1.shape)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.head.protocol import VelocityField
from nxcore.typing import Float, typecheck

__all__ = ["CallableField"]


class CallableField(VelocityField):
    """Wraps ``fn(x [tokens, latent_dim] float32, t [tokens]) -> v [tokens, latent_dim]``.

    ``shape`` is ``(tokens, latent_dim)``; ``device`` is where samplers put the noise. The output of
    ``fn`` is checked for shape and a floating dtype on every call.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        shape: tuple[int, int] | torch.Size,
        device: torch.device | str = "cpu",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable (x, t) -> v, got {type(fn).__name__}")
        dims = tuple(shape)
        if len(dims) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                     for d in dims):
            raise ValueError(
                f"shape must be (tokens, latent_dim) with two ints >= 1, got {shape!r}"
            )
        self.fn = fn
        self.shape: tuple[int, int] = dims  # type: ignore[assignment]
        self.device = torch.device(device)

    @classmethod
    def examples(cls) -> list[CallableField]:
        target = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
        return [
            cls(lambda x, t: -x, (2, 5)),
            cls(lambda x, t: (target - x) / (1 - t).clamp_min(1e-4)[:, None], (3, 4)),
        ]

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"CallableField({name}, shape={self.shape}, device={str(self.device)!r})"

    @typecheck
    def __call__(
        self, x: Float[Tensor, "tokens latent_dim"], t: Float[Tensor, " tokens"]
    ) -> Float[Tensor, "tokens latent_dim"]:
        if tuple(x.shape) != self.shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but this field has shape {self.shape}; pass "
                "latents of the field's shape"
            )
        if tuple(t.shape) != (self.shape[0],):
            raise ValueError(
                f"t has shape {tuple(t.shape)}; pass one time per token, shape ({self.shape[0]},)"
            )
        v = check_tensor("fn(x, t)", self.fn(x, t), kind="float")
        if tuple(v.shape) != self.shape:
            raise ValueError(
                f"fn(x, t) returned shape {tuple(v.shape)} for x of shape {self.shape}; the "
                "velocity must have the shape of x"
            )
        return v
