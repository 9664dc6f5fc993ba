"""Rotary position embedding (RoPE), the reference: plain torch, fp32 math, the oracle for every
fused backend.

Shape legend:
    batch      any leading dimensions (batch, heads, ...), possibly none
    seq        tokens
    head_dim   width of one attention head (even)
    pairs      rotary pairs, head_dim // 2
    axes       coordinates per position: 1 for 1D RoPE, 3 for multiscale 3D RoPE (M-RoPE)

Convention: rotate-half (GPT-NeoX, Llama, Qwen). Pair p couples channels p and p + pairs and turns
them by the angle ``position[axis(p)] * inv_freq[p]``:

    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = cat(-x[..., pairs:], x[..., :pairs])

with ``cos = cat(angles, angles).cos()`` (likewise ``sin``), so both halves of the head see the same
angle. Multi-axis positions split the pairs into contiguous sections, one per axis (Qwen2-VL's
``mrope_section``): with sections (16, 24, 24), pairs 0..15 follow axis 0, 16..39 axis 1 and 40..63
axis 2. Positions are floats, so fractional coordinates need no integer lookup table.

Two forms: ``apply_rope_reference(x, cos, sin)`` rotates by a cos/sin table from ``rope_cos_sin``
(the autograd oracle of the tests); ``rope_forward_reference`` / ``rope_backward_reference`` take
positions like every backend of ``nxkernels.rope.apply_rope`` (``KERNELS``). The backward of a
rotation is the inverse rotation (angle -> -angle): ``dx = dy * cos - rotate_half(dy) * sin``.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

from nxkernels.typecheck import typecheck

__all__ = [
    "KERNELS",
    "apply_rope_reference",
    "resolve_sections",
    "rope_backward_reference",
    "rope_cos_sin",
    "rope_forward_reference",
    "rope_inference_reference",
    "rope_reference_from_positions",
    "rotate_half",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half precisions and fp32, fp64 for fp64: never less precise than the input."""
    return torch.promote_types(dtype, torch.float32)


def _check_float(name: str, value: object, ndim: int | None = None, min_ndim: int | None = None):
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype, got {value.dtype}; convert it with .float()"
        )
    if ndim is not None and value.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}; reshape it first"
        )
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions ([*batch, seq, head_dim]), got shape "
            f"{tuple(value.shape)}"
        )


def rotate_half(x: Float[Tensor, "*batch head_dim"]) -> Float[Tensor, "*batch head_dim"]:
    """cat(-x2, x1) where x1, x2 are the first and second halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@typecheck
def apply_rope_reference(
    x: Float[Tensor, "*batch seq head_dim"],
    cos: Float[Tensor, "seq head_dim"],
    sin: Float[Tensor, "seq head_dim"],
) -> Float[Tensor, "*batch seq head_dim"]:
    """Rotate ``x`` (queries or keys): ``x * cos + rotate_half(x) * sin``.

    The math runs in fp32 (fp64 for fp64 input); the result has ``x``'s dtype. ``cos``/``sin`` come
    from ``rope_cos_sin`` and must be on ``x``'s device.
    """
    _check_float("x", x, min_ndim=2)
    _check_float("cos", cos, ndim=2)
    _check_float("sin", sin, ndim=2)
    seq, head_dim = x.shape[-2], x.shape[-1]
    if head_dim % 2:
        raise ValueError(
            f"x has head_dim {head_dim} (last dimension); RoPE rotates pairs, so it must be even"
        )
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (seq, head_dim):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but x [*batch, seq, head_dim] has shape "
                f"{tuple(x.shape)}, so {name} must be [{seq}, {head_dim}]; build it with "
                "rope_cos_sin from one position per token of x"
            )
        if t.device != x.device:
            raise ValueError(
                f"{name} is on {t.device} but x is on {x.device}; move it with .to(x.device)"
            )
    compute = _compute_dtype(x.dtype)
    xf = x.to(compute)
    out = xf * cos.to(compute) + rotate_half(xf) * sin.to(compute)
    return out.to(x.dtype)


@typecheck
def rope_cos_sin(
    positions: Float[Tensor, "seq axes"],
    inv_freq: Float[Tensor, " pairs"],
    sections: tuple[int, ...] | None = None,
) -> tuple[Float[Tensor, "seq head_dim"], Float[Tensor, "seq head_dim"]]:
    """cos and sin [seq, 2 * pairs] for float ``positions`` (fractional values allowed).

    ``sections[a]`` consecutive pairs follow axis a (they must sum to ``pairs``); ``None`` means a
    single axis that drives every pair (plain 1D RoPE). The angles are computed in fp32 (fp64 for
    fp64 positions) and returned in that dtype, on ``positions``' device.
    """
    _check_float("positions", positions, ndim=2)
    _check_float("inv_freq", inv_freq, ndim=1)
    axes, pairs = positions.shape[1], inv_freq.shape[0]
    sections = resolve_sections(sections, axes, pairs, positions_shape=tuple(positions.shape))
    if inv_freq.device != positions.device:
        raise ValueError(
            f"inv_freq is on {inv_freq.device} but positions is on {positions.device}; move it "
            "with .to(positions.device)"
        )
    compute = _compute_dtype(positions.dtype)
    if axes == 1:
        per_pair = positions.to(compute).expand(-1, pairs)  # [seq, pairs]
    else:
        per_pair = positions.to(compute)[:, _axis_of_pair(tuple(sections), positions.device)]
    angles = per_pair * inv_freq.to(compute)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


@functools.lru_cache(maxsize=64)
def _axis_of_pair(sections: tuple[int, ...], device: torch.device) -> Tensor:
    """The axis index of every pair, [pairs] (memoised: the same sections come at every call)."""
    return torch.repeat_interleave(torch.arange(len(sections), device=device),
                                   torch.tensor(sections, device=device))


def resolve_sections(
    sections: tuple[int, ...] | None, axes: int, pairs: int, *, positions_shape: tuple | None = None
) -> tuple[int, ...]:
    """``sections`` checked against ``axes`` and ``pairs``; ``None`` (one axis) becomes ``(pairs,)``."""
    shape = f" (shape {positions_shape})" if positions_shape is not None else ""
    if pairs < 1:
        raise ValueError(
            "inv_freq is empty; it needs one frequency per rotary pair (head_dim // 2)"
        )
    if sections is None:
        if axes != 1:
            raise ValueError(
                f"positions has {axes} axes but sections is None (one axis); pass sections, one "
                f"count of pairs per axis summing to {pairs}"
            )
        return (pairs,)
    if not isinstance(sections, tuple | list):
        raise TypeError(
            f"sections must be a tuple of ints (pairs per axis), got {type(sections).__name__}"
        )
    sections = tuple(sections)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sections):
        raise ValueError(f"sections must be ints >= 0 (pairs per axis), got {sections!r}")
    if len(sections) != axes:
        raise ValueError(
            f"sections {sections} has {len(sections)} entries but positions has {axes} axes"
            f"{shape}; give one section per axis"
        )
    if sum(sections) != pairs:
        raise ValueError(
            f"sections {sections} sum to {sum(sections)} but inv_freq has {pairs} pairs; the "
            f"sections must sum to head_dim // 2 = {pairs}"
        )
    return sections


def rope_reference_from_positions(
    x: Float[Tensor, "*batch seq head_dim"],
    positions: Float[Tensor, "seq axes"],
    inv_freq: Float[Tensor, " pairs"],
    sections: tuple[int, ...] | None = None,
) -> Float[Tensor, "*batch seq head_dim"]:
    """``apply_rope_reference(x, *rope_cos_sin(positions, inv_freq, sections))``: the oracle for
    backends that take positions instead of a cos/sin table (e.g. the Triton kernel)."""
    return apply_rope_reference(x, *rope_cos_sin(positions, inv_freq, sections))


def rope_forward_reference(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | list[int]
) -> Tensor:
    """Backend form: rotate ``x`` to ``positions``; a new contiguous tensor in x's dtype. Bit for
    bit ``apply_rope_reference(x, *rope_cos_sin(...))`` (``_rotate``)."""
    return _rotate(x, positions, inv_freq, tuple(sections), inverse=False)


def rope_backward_reference(
    dy: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | list[int]
) -> Tensor:
    """Backend form of the backward: the inverse rotation of ``dy`` (angle -> -angle)."""
    return _rotate(dy, positions, inv_freq, tuple(sections), inverse=True)


_TABLES: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
_MAX_TABLES = 8


def _rotation_table(
    positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...], compute: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` with its first half negated ([seq, head_dim], ``compute`` dtype), memoised
    per (positions, inv_freq) tensor and version: every layer of a model rotates to the same
    positions. The memo holds the tensors it was built from (so their ids stay theirs) and at most
    ``_MAX_TABLES`` entries; inference tensors (no version counter) are not memoised."""
    memo = not (positions.is_inference() or inv_freq.is_inference())
    if memo:
        key = (id(positions), positions._version, id(inv_freq), inv_freq._version, sections, compute)
        hit = _TABLES.get(key)
        if hit is not None:
            return hit[2], hit[3]
    cos, sin = rope_cos_sin(positions, inv_freq, sections)
    cos, sin = cos.to(compute), sin.to(compute)
    first, second = sin.chunk(2, dim=-1)
    signed = torch.cat((-first, second), dim=-1)
    if memo:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = (positions, inv_freq, cos, signed)
    return cos, signed


def _rotate(x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...], *, inverse: bool
            ) -> Tensor:
    """``apply_rope_reference(x, cos, ±sin)`` bit for bit (tested): the cos / sin table is memoised
    (``_rotation_table``: every layer, forward and backward, rotates to the same positions) and
    ``rotate_half(x) * sin`` is computed as ``roll(x) * signed`` with the sign moved into the table
    (``-x2 * s == x2 * -s`` exactly; the inverse subtracts it, ``a - b == a + (-b)``)."""
    dtype = x.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else _compute_dtype(dtype)
    cos, signed = _rotation_table(positions, inv_freq, sections, compute)
    xf = x.to(compute)
    turned = xf.roll(x.shape[-1] // 2, -1) * signed
    out = xf * cos - turned if inverse else xf * cos + turned
    return out.to(dtype).contiguous()


def rope_inference_reference(
    x: Tensor, positions: Tensor, inv_freq: Tensor, sections: tuple[int, ...]
) -> Tensor:
    """Inference form of ``rope_forward_reference`` (the same function; not for autograd)."""
    return _rotate(x, positions, inv_freq, tuple(sections), inverse=False)


KERNELS = {
    "forward": rope_forward_reference,
    "backward": rope_backward_reference,
    "inference": rope_inference_reference,
}
