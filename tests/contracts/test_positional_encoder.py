"""Every PositionalEncoder implementation passes its check; each check rejects a broken encoder."""

import attrs
import pytest
import torch
from torch import nn

from nxcore.layout import SequenceLayout, TextSpan
from nxcore.position import (
    AdditivePositionalEncoder,
    LearnedScaleEmbedding,
    RoPE1D,
    RotaryPositionalEncoder,
)
from nxcore.testing.check_position import (
    check_additive_encoder,
    check_rotary_encoder,
    default_layout,
)
from nxcore.testing.discovery import conformance_cases
from nxkernels.rope import apply_rope


@pytest.mark.parametrize("encoder", conformance_cases(RotaryPositionalEncoder))
def test_rotary_encoder_contract(encoder):
    check_rotary_encoder(encoder)


@pytest.mark.parametrize("encoder", conformance_cases(AdditivePositionalEncoder))
def test_additive_encoder_contract(encoder):
    check_additive_encoder(encoder)


def test_every_reference_is_discovered():
    from nxcore.testing.discovery import implementations

    names = {cls.__name__ for cls in implementations(RotaryPositionalEncoder)}
    assert {"RoPE1D", "MultiscaleRoPE3D"} <= names
    names = {cls.__name__ for cls in implementations(AdditivePositionalEncoder)}
    assert {"LearnedScaleEmbedding", "ScaleLengthEmbedding", "GridPositionEmbedding",
            "LearnedAbsolutePosition"} <= names


# --- broken rotary encoders (not subclasses: discovery must not find them) -----------------

@attrs.frozen
class Broken:
    """1D RoPE with one defect switched on at a time."""

    defect: str
    head_dim: int = 8
    num_axes: int = 1

    def positions(self, layout):
        pos = torch.arange(layout.length, dtype=torch.float32)[:, None]
        if self.defect == "int_positions":
            return pos.long()
        if self.defect == "wrong_axes":
            return pos.expand(-1, 2)
        if self.defect == "nan_positions":
            return pos / 0.0 * 0.0
        if self.defect == "random_positions":
            return pos + torch.rand(()) * 5  # a common shift: relative, but not reproducible
        return pos

    def apply(self, x, positions):
        inv_freq = 10000.0 ** -(torch.arange(0, self.head_dim, 2) / self.head_dim)
        if self.defect == "absolute":  # norm-preserving, identity at 0, but angle ~ position^2
            positions = positions**2
        if self.defect == "identity":
            return x
        out = apply_rope(x, positions, inv_freq)
        if self.defect == "upcast":
            return out.float()
        if self.defect == "scaled":
            return out * 1.5
        if self.defect == "shape":
            return out[..., :-1, :]
        return out


def test_the_unbroken_variant_passes():
    check_rotary_encoder(Broken("none"))


@pytest.mark.parametrize(("defect", "message"), [
    ("absolute", r"scores change .* relative positions"),
    ("upcast", r"turned torch.bfloat16 input into torch.float32"),
    ("scaled", r"not a rotation: per-token norms changed"),
    ("identity", r"leaves x unchanged .* encodes nothing"),
    ("shape", r"changed the shape"),
    ("int_positions", r"positions has dtype torch.int64, expected a float"),
    ("wrong_axes", r"positions has shape \(\d+, 2\), expected \[seq, num_axes\]"),
    ("nan_positions", r"positions contains NaN or inf"),
    ("random_positions", r"positions is not deterministic"),
])
def test_rotary_check_rejects(defect, message):
    with pytest.raises(AssertionError, match=message):
        check_rotary_encoder(Broken(defect))


def test_rotary_check_rejects_a_non_encoder():
    with pytest.raises(AssertionError, match=r"does not implement RotaryPositionalEncoder"):
        check_rotary_encoder(LearnedScaleEmbedding(4, 4))


def test_rotation_not_identity_at_zero_is_rejected():
    class Offset:  # a plain class: discovery does not find it
        head_dim, num_axes = 8, 1

        def positions(self, layout):
            return RoPE1D(head_dim=8).positions(layout)

        def apply(self, x, positions):
            return RoPE1D(head_dim=8).apply(x, positions + 1.0)

    with pytest.raises(AssertionError, match=r"at position 0 is not the identity"):
        check_rotary_encoder(Offset())


# --- broken additive encoders --------------------------------------------------------------

class BrokenAdditive(nn.Module):
    def __init__(self, defect: str, dim: int = 4) -> None:
        super().__init__()
        self.defect, self.dim = defect, dim
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, layout):
        out = self.weight.expand(layout.length, self.dim) + 0.0
        if self.defect == "shape":
            return out[:, :-1]
        if self.defect == "nan":
            return out * float("nan")
        if self.defect == "device":
            return out.to("meta")
        if self.defect == "int":
            return out.long()
        if self.defect == "random":
            return out + torch.rand(())
        return out


def test_the_unbroken_additive_passes():
    check_additive_encoder(BrokenAdditive("none"))


@pytest.mark.parametrize(("defect", "message"), [
    ("shape", r"has shape \(\d+, 3\), expected \[seq, dim\] = \[\d+, 4\]"),
    ("nan", r"contains NaN or inf"),
    ("device", r"is on meta but the encoder's parameters are on cpu"),
    ("int", r"has dtype torch.int64, expected a float"),
    ("random", r"is not deterministic"),
])
def test_additive_check_rejects(defect, message):
    with pytest.raises(AssertionError, match=message):
        check_additive_encoder(BrokenAdditive(defect))


def test_additive_check_rejects_a_non_encoder():
    with pytest.raises(AssertionError, match=r"does not implement AdditivePositionalEncoder"):
        check_additive_encoder(RoPE1D(head_dim=4))


def test_default_layout_mixes_every_segment_kind():
    kinds = {type(seg).__name__ for seg in default_layout().segments}
    assert kinds == {"TextSpan", "DiscreteImage", "ContinuousImage"}
    check_rotary_encoder(RoPE1D(head_dim=4), SequenceLayout.of(TextSpan(1)))
