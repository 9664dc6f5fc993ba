"""Test helpers for your own suites: conformance checks for every nx protocol, discovery of
implementations, and (in ``nxcore.testing.strategies``, which needs hypothesis) strategies that
draw valid schedules, layouts, token grids and named-shape tensors.

    from nxcore.testing import check_output_head

    def test_my_head():
        check_output_head(MyHead(dim=32, vocab_size=100))   # AssertionError names the violation

Each ``check_*`` is a plain function: call it on an instance inside any test.
"""

from nxcore.testing.check_head import check_output_head
from nxcore.testing.check_position import check_additive_encoder, check_rotary_encoder
from nxcore.testing.check_reward import check_reward_model
from nxcore.testing.check_sampler import check_latent_sampler, check_token_sampler
from nxcore.testing.check_schedule import check_scale_schedule
from nxcore.testing.check_tokenizer import (
    check_continuous_image_tokenizer,
    check_discrete_image_tokenizer,
    check_text_tokenizer,
)
from nxcore.testing.discovery import conformance_cases, examples_of, implementations

__all__ = [
    "check_additive_encoder",
    "check_continuous_image_tokenizer",
    "check_discrete_image_tokenizer",
    "check_latent_sampler",
    "check_output_head",
    "check_reward_model",
    "check_rotary_encoder",
    "check_scale_schedule",
    "check_text_tokenizer",
    "check_token_sampler",
    "conformance_cases",
    "examples_of",
    "implementations",
]
