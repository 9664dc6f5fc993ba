"""NextFlow (paper arXiv 2511.xxxx, in ``../shared/papers``): one decoder-only transformer over text
ids and multi-scale image codes — next-token prediction for text, next-scale prediction for images.

- ``config``: ``NextFlowConfig``, ``nextflow_tiny``, ``nextflow_7b``, ``separate_heads``
- ``sequence``: ``Example`` (``Text`` / ``Image`` parts) and ``collate`` into a padded ``Batch``
- ``model``: ``NextFlow`` (embeddings, decoder, head, weighted loss)
"""

from nxrecipes.nextflow.config import NextFlowConfig, nextflow_7b, nextflow_tiny, separate_heads
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Batch, Example, Image, ImageGroup, Text, collate

__all__ = [
    "Batch",
    "Example",
    "Image",
    "ImageGroup",
    "NextFlow",
    "NextFlowConfig",
    "Text",
    "collate",
    "nextflow_7b",
    "nextflow_tiny",
    "separate_heads",
]
