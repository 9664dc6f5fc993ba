"""Every nx protocol and the implementations nx ships (``nx components``)."""

from __future__ import annotations

from nxcore.decoder import Denoiser, ImageDecoder
from nxcore.head import OutputHead
from nxcore.position.protocol import AdditivePositionalEncoder, RotaryPositionalEncoder
from nxcore.reward import RewardModel
from nxcore.sampler.protocol import LatentSampler, TokenSampler
from nxcore.schedule import ScaleSchedule
from nxcore.testing.discovery import implementations
from nxcore.tokenizer.protocol import ContinuousImageTokenizer, DiscreteImageTokenizer, TextTokenizer

PROTOCOLS = (
    TextTokenizer,
    DiscreteImageTokenizer,
    ContinuousImageTokenizer,
    ScaleSchedule,
    RotaryPositionalEncoder,
    AdditivePositionalEncoder,
    OutputHead,
    TokenSampler,
    LatentSampler,
    RewardModel,
    ImageDecoder,
    Denoiser,
)


def format_components() -> str:
    lines = []
    for protocol in PROTOCOLS:
        found = implementations(protocol)
        names = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in found) or "(none yet)"
        lines.append(f"{protocol.__name__:<26} {names}")
    return "\n".join(lines)
