"""Conformance checks for positional encoders: call them on any implementation, yours included.

    from nxcore.testing.check_position import check_rotary_encoder
    def test_my_rope():
        check_rotary_encoder(MyRoPE(head_dim=64))

Each check raises ``AssertionError`` naming the property that failed. Without ``layout`` a check
uses ``encoder.example_layout()`` when the encoder defines one (encoders that accept only some
layouts, such as ``LearnedAbsolutePosition``), else ``default_layout()``: text, a 3-step discrete
image, text, a continuous image, text.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nxcore.layout import ContinuousImage, DiscreteImage, SequenceLayout, TextSpan
from nxcore.position.protocol import AdditivePositionalEncoder, RotaryPositionalEncoder
from nxcore.schedule import Schedule

__all__ = ["check_additive_encoder", "check_rotary_encoder", "default_layout"]

_SHIFTS = (7.0, -2.25)  # integer and fractional common shifts for the relative-position check


def default_layout() -> SequenceLayout:
    """3 text, an image of steps (1, 1) (2, 2) (2, 3), 2 text, a 2x3 continuous image, 1 text."""
    return SequenceLayout.of(
        TextSpan(3),
        DiscreteImage(Schedule(steps=((1, 1), (2, 2), (2, 3)))),
        TextSpan(2),
        ContinuousImage(2, 3),
        TextSpan(1),
    )


def _layout_for(encoder: object, layout: SequenceLayout | None) -> SequenceLayout:
    if layout is not None:
        return layout
    make = getattr(encoder, "example_layout", None)
    return make() if callable(make) else default_layout()


def _close(a: Tensor, b: Tensor, *, rtol: float, atol: float) -> tuple[bool, float]:
    err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)), err


def check_rotary_encoder(
    encoder: RotaryPositionalEncoder, layout: SequenceLayout | None = None
) -> None:
    """Assert the ``RotaryPositionalEncoder`` contract on ``layout``.

    Positions: [seq, num_axes], floating, finite, deterministic. Rotation: keeps shape and dtype,
    preserves norms, is the identity at position 0, is deterministic, is not the identity at the
    layout's (non-zero) positions, and gives q.k scores that do not change when every position is
    shifted by one constant on every axis (scores depend only on relative positions).
    """
    name = type(encoder).__name__
    assert isinstance(encoder, RotaryPositionalEncoder), (
        f"{name} does not implement RotaryPositionalEncoder (needs head_dim, num_axes, "
        "positions(layout), apply(x, positions))"
    )
    layout = _layout_for(encoder, layout)
    seq, head_dim, axes = layout.length, encoder.head_dim, encoder.num_axes

    pos = encoder.positions(layout)
    assert isinstance(pos, Tensor), f"{name}.positions returned {type(pos).__name__}, not a Tensor"
    assert tuple(pos.shape) == (seq, axes), (
        f"{name}.positions has shape {tuple(pos.shape)}, expected [seq, num_axes] = [{seq}, {axes}]"
    )
    assert pos.is_floating_point(), f"{name}.positions has dtype {pos.dtype}, expected a float"
    assert bool(torch.isfinite(pos).all()), f"{name}.positions contains NaN or inf: {pos}"
    again = encoder.positions(layout)
    assert torch.equal(pos, again), f"{name}.positions is not deterministic for one layout"

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, seq, head_dim, generator=gen, dtype=torch.float32).to(pos.device)
    y = encoder.apply(x, pos)
    assert isinstance(y, Tensor) and tuple(y.shape) == tuple(x.shape), (
        f"{name}.apply changed the shape: {tuple(x.shape)} -> "
        f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
    )
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        out = encoder.apply(x.to(dtype), pos)
        assert out.dtype == dtype, f"{name}.apply turned {dtype} input into {out.dtype}"
    assert torch.equal(y, encoder.apply(x, pos)), f"{name}.apply is not deterministic"

    ok, err = _close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert ok, f"{name}.apply is not a rotation: per-token norms changed (max error {err:.3g})"

    ok, err = _close(encoder.apply(x, torch.zeros_like(pos)), x, rtol=1e-5, atol=1e-6)
    assert ok, f"{name}.apply at position 0 is not the identity (max error {err:.3g})"

    if bool((pos != 0).any()):
        moved = float((y - x).abs().max())
        assert moved > 1e-4, (
            f"{name}.apply leaves x unchanged at the layout's non-zero positions: it encodes "
            "nothing"
        )

    q = torch.randn(seq, head_dim, generator=gen, dtype=torch.float32).to(pos.device)
    k = torch.randn(seq, head_dim, generator=gen, dtype=torch.float32).to(pos.device)
    scores = encoder.apply(q, pos) @ encoder.apply(k, pos).T
    tol = 1e-4 * max(1.0, float(pos.abs().max())) * head_dim**0.5
    for shift in _SHIFTS:
        shifted = pos + shift
        moved = encoder.apply(q, shifted) @ encoder.apply(k, shifted).T
        ok, err = _close(moved, scores, rtol=1e-4, atol=tol)
        assert ok, (
            f"{name}: q.k scores change (max error {err:.3g} > {tol:.3g}) when every position is "
            f"shifted by {shift} on every axis; a rotary encoding must depend only on relative "
            "positions"
        )


def _device_of(encoder: object) -> torch.device | None:
    if not isinstance(encoder, nn.Module):
        return None
    for t in (*encoder.parameters(), *encoder.buffers()):
        return t.device
    return None


def check_additive_encoder(
    encoder: AdditivePositionalEncoder, layout: SequenceLayout | None = None
) -> None:
    """Assert the ``AdditivePositionalEncoder`` contract on ``layout``: output [seq, dim], floating,
    finite, deterministic, on the encoder's device (that of its first parameter or buffer)."""
    name = type(encoder).__name__
    assert isinstance(encoder, AdditivePositionalEncoder), (
        f"{name} does not implement AdditivePositionalEncoder (needs dim and __call__(layout))"
    )
    layout = _layout_for(encoder, layout)
    out = encoder(layout)
    assert isinstance(out, Tensor), f"{name}(layout) returned {type(out).__name__}, not a Tensor"
    expected = (layout.length, encoder.dim)
    assert tuple(out.shape) == expected, (
        f"{name}(layout) has shape {tuple(out.shape)}, expected [seq, dim] = {list(expected)}"
    )
    assert out.is_floating_point(), f"{name}(layout) has dtype {out.dtype}, expected a float"
    device = _device_of(encoder)
    if device is not None:
        assert out.device == device, (
            f"{name}(layout) is on {out.device} but the encoder's parameters are on {device}"
        )
    assert bool(torch.isfinite(out).all()), f"{name}(layout) contains NaN or inf"
    with torch.no_grad():
        assert torch.equal(encoder(layout), encoder(layout)), f"{name}(layout) is not deterministic"
