"""NextStep-1 (arXiv 2508.10711): one decoder-only transformer over text ids and continuous image
tokens — next-token prediction for text, a flow-matching head for each 64-dim image token.

- ``config``: ``NextStep1Config``, ``nextstep1_tiny``, ``nextstep1_14b``
- ``head``: ``FlowMatchingHead`` (a ``ContinuousHead``), ``FlowHeadConfig``
- ``model``: ``NextStep1`` (embeddings with image placeholders, decoder with KV caches, text logits,
  head condition, the weighted text + image loss ``NextStep1Loss``)
"""

from nxrecipes.nextstep1.config import NextStep1Config, nextstep1_14b, nextstep1_tiny
from nxrecipes.nextstep1.head import FlowHeadConfig, FlowMatchingHead
from nxrecipes.nextstep1.model import NextStep1, NextStep1Loss

__all__ = [
    "FlowHeadConfig",
    "FlowMatchingHead",
    "NextStep1",
    "NextStep1Config",
    "NextStep1Loss",
    "nextstep1_14b",
    "nextstep1_tiny",
]
