"""Samplers: head outputs -> tokens (``TokenSampler``) or latents (``LatentSampler``), with CFG.

Reference implementations: ``CategoricalSampler`` (temperature, top-k, top-p, CFG schedules) and
``FlowSampler`` (Euler ODE / Euler-Maruyama SDE, time shift, 2-way and 3-way CFG on velocities).
"""

from nxcore.head.protocol import VelocityField
from nxcore.sampler.categorical import CategoricalSampler, top_k_filter, top_p_filter
from nxcore.sampler.field import CallableField
from nxcore.sampler.flow import NEXTSTEP1_LAST_STEP, FlowSampler, time_shift
from nxcore.sampler.guidance import (
    ConstantGuidance,
    GuidanceSchedule,
    LinearDecay,
    VARLinearRamp,
    as_guidance,
    guidance_weight,
    mix_guidance,
    mix_image_guidance,
)
from nxcore.sampler.protocol import LatentSampler, Sampler, TokenSampler

__all__ = [
    "NEXTSTEP1_LAST_STEP",
    "CallableField",
    "CategoricalSampler",
    "ConstantGuidance",
    "FlowSampler",
    "GuidanceSchedule",
    "LatentSampler",
    "LinearDecay",
    "Sampler",
    "TokenSampler",
    "VARLinearRamp",
    "VelocityField",
    "as_guidance",
    "guidance_weight",
    "mix_guidance",
    "mix_image_guidance",
    "time_shift",
    "top_k_filter",
    "top_p_filter",
]
