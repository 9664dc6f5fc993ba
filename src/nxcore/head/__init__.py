"""Output heads: hidden states -> loss, and -> what a sampler consumes."""

from nxcore.head.linear import LinearHead, LinearHeadConfig, SplitHead, SplitHeadConfig
from nxcore.head.protocol import (
    IGNORE_INDEX,
    ContinuousHead,
    DiscreteHead,
    JoinableField,
    OutputHead,
    VelocityField,
)

__all__ = [
    "IGNORE_INDEX",
    "ContinuousHead",
    "DiscreteHead",
    "JoinableField",
    "LinearHead",
    "LinearHeadConfig",
    "OutputHead",
    "SplitHead",
    "SplitHeadConfig",
    "VelocityField",
]
