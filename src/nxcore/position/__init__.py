"""Positional encoders: rotary (1D RoPE, NextFlow's multiscale 3D RoPE) and additive (learned
scale embedding, sinusoidal scale-length embedding, sinusoidal grid position, VAR's learned absolute
positions)."""

from nxcore.position.embeddings import (
    GridPositionEmbedding,
    LearnedAbsolutePosition,
    LearnedScaleEmbedding,
    ScaleLengthEmbedding,
)
from nxcore.position.protocol import (
    AdditivePositionalEncoder,
    PositionalEncoder,
    RotaryPositionalEncoder,
)
from nxcore.position.rope import RoPE1D, Rotation, rope_inv_freq
from nxcore.position.rope3d import MultiscaleRoPE3D, default_sections, image_coordinates

__all__ = [
    "AdditivePositionalEncoder",
    "GridPositionEmbedding",
    "LearnedAbsolutePosition",
    "LearnedScaleEmbedding",
    "MultiscaleRoPE3D",
    "PositionalEncoder",
    "RoPE1D",
    "RotaryPositionalEncoder",
    "ScaleLengthEmbedding",
    "default_sections",
    "image_coordinates",
    "Rotation",
    "rope_inv_freq",
]
