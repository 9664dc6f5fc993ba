"""1D rotary position embedding (RoPE), rotate-half convention, theta configurable.

Shape legend (see ``nxcore.typing``): seq = tokens of the layout, axes = 1, head_dim = width of one
attention head, pairs = head_dim // 2. The rotation itself is the ``nxkernels.rope`` op.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from nxcore.layout import SequenceLayout
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.typing import Float, typecheck
from nxkernels.dispatch import eager_inference
from nxkernels.rope import apply_rope, rope_inference_kernel

__all__ = ["RoPE1D", "Rotation", "rope_inv_freq", "rotate"]


def rope_inv_freq(
    head_dim: int, theta: float, *, device: torch.device | str = "cpu"
) -> Float[Tensor, " pairs"]:
    """Frequencies theta^(-2i / head_dim), i = 0 .. head_dim // 2 - 1 (fp32; computed in fp64).
    Memoised per (head_dim, theta, device): every layer asks for the same table at every call; the
    table is shared, so do not modify it in place."""
    if type(theta) is not bool:  # (True == 1: a bool must reach the validation)
        table = _INV_FREQ.get((head_dim, theta, device))  # only validated keys are stored
        if table is not None:
            return table
    _check_head_dim("head_dim", head_dim)
    _check_theta("theta", theta)
    table = _inv_freq(head_dim, float(theta), torch.device(device))
    if len(_INV_FREQ) < 64 and not torch.compiler.is_compiling():
        _INV_FREQ[(head_dim, theta, device)] = table
    return table


_INV_FREQ: dict[tuple, Tensor] = {}  # (head_dim, theta, device as passed) -> table: the per-call fast path


@functools.lru_cache(maxsize=64)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (theta ** -exponents).to(device=device, dtype=torch.float32)


class Rotation:
    """``x -> encoder.apply(x, positions)`` with the encoder's ``theta`` and ``sections``, for many
    eager calls without gradients to the same positions (every layer of a model rotates its queries
    and keys to them): the arguments are checked, the frequencies looked up and the ``nxkernels.rope``
    kernel chosen on the first call (and again for an ``x`` of another dtype, device or shape class),
    not per call. A call that needs gradients, or runs under ``torch.compile``, goes through
    ``encoder.apply``. Made by ``RoPE1D.rotation`` / ``MultiscaleRoPE3D.rotation``."""

    def __init__(self, encoder: RotaryPositionalEncoder, positions: Tensor, theta: float,
                 sections: tuple[int, ...] | None) -> None:
        self.encoder, self.positions, self.theta, self.sections = encoder, positions, theta, sections
        self._key: tuple | None = None
        self._prepared: tuple = ()

    def __call__(self, x: Float[Tensor, "*batch seq head_dim"]) -> Float[Tensor, "*batch seq head_dim"]:
        if not eager_inference(x):
            return self.encoder.apply(x, self.positions)
        key = (x.dtype, x.device, x.shape[-1], x.shape[-2])
        if key != self._key:
            _check_width(self.encoder, x, self.positions)
            inv_freq = rope_inv_freq(x.shape[-1], self.theta, device=x.device)
            kernel, sections = rope_inference_kernel(x, self.positions, inv_freq, self.sections)
            self._prepared, self._key = (kernel, inv_freq, sections), key
        kernel, inv_freq, sections = self._prepared
        return kernel(x, self.positions, inv_freq, sections)


@typecheck
def rotate(
    x: Float[Tensor, "*batch seq head_dim"],
    positions: Float[Tensor, "seq axes"],
    *,
    theta: float,
    sections: tuple[int, ...] | None = None,
) -> Float[Tensor, "*batch seq head_dim"]:
    """Rotate ``x`` to float ``positions``, one section of pairs per axis (used by the encoders)."""
    if not isinstance(x, Tensor) or not isinstance(positions, Tensor):
        raise TypeError(
            f"x and positions must be tensors, got {type(x).__name__} and "
            f"{type(positions).__name__}"
        )
    device = x.device
    if positions.device != device:
        raise ValueError(
            f"positions is on {positions.device} but x is on {device}; compute them with "
            f"encoder.positions(layout, device=x.device)"
        )
    inv_freq = rope_inv_freq(x.shape[-1], theta, device=device)
    return apply_rope(x, positions, inv_freq, sections)


def _check_head_dim(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 2 or value % 2:
        raise ValueError(
            f"{name} must be an even int >= 2 (RoPE rotates channel pairs), got {value!r}"
        )


def _check_theta(name: str, value: object) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (e.g. 10000.0), got {value!r}")


def _head_dim_validator(instance, attribute, value) -> None:
    _check_head_dim(f"{type(instance).__name__}.{attribute.name}", value)


def _theta_validator(instance, attribute, value) -> None:
    _check_theta(f"{type(instance).__name__}.{attribute.name}", value)


@attrs.frozen(kw_only=True)
class RoPE1D(RotaryPositionalEncoder):
    """Plain 1D RoPE over the token index: token n of the layout sits at position n.

    ``theta`` 10000 is the original RoPE; Qwen2.5 uses 1e6.
    """

    head_dim: int = attrs.field(validator=_head_dim_validator)
    theta: float = attrs.field(default=10000.0, validator=_theta_validator)
    num_axes: ClassVar[int] = 1

    @classmethod
    def examples(cls) -> list[RoPE1D]:
        return [cls(head_dim=8), cls(head_dim=2, theta=100.0), cls(head_dim=16, theta=1e6)]

    @typecheck
    def positions(
        self, layout: SequenceLayout, *, device: torch.device | str = "cpu"
    ) -> Float[Tensor, "seq 1"]:
        """``layout.tokens().position`` as float32 [seq, 1]."""
        return layout.tokens(device).position.to(torch.float32)[:, None]

    @typecheck
    def apply(
        self, x: Float[Tensor, "*batch seq head_dim"], positions: Float[Tensor, "seq axes"]
    ) -> Float[Tensor, "*batch seq head_dim"]:
        _check_width(self, x, positions)
        return rotate(x, positions, theta=self.theta)

    def rotation(self, positions: Float[Tensor, "seq axes"]) -> Rotation:
        """``apply(., positions)`` prepared for many eager calls without gradients (``Rotation``)."""
        return Rotation(self, positions, self.theta, None)


def _check_width(encoder: RotaryPositionalEncoder, x: Tensor, positions: Tensor) -> None:
    name = type(encoder).__name__
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-1] != encoder.head_dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"x must be [*batch, seq, head_dim] with head_dim = {encoder.head_dim} "
            f"({name}.head_dim), got {shape}; build the encoder with the attention head width"
        )
    if not isinstance(positions, Tensor) or positions.ndim != 2:
        raise ValueError(f"positions must be [seq, axes], got {positions!r:.80}")
    if positions.shape[1] != encoder.num_axes or positions.shape[0] != x.shape[-2]:
        raise ValueError(
            f"positions has shape {tuple(positions.shape)} but x has seq = {x.shape[-2]} and "
            f"{name} uses {encoder.num_axes} axes, so positions must be "
            f"[{x.shape[-2]}, {encoder.num_axes}]; compute them with {name}.positions(layout)"
        )
