"""``VQDecoder``: the tokenizer's own pixel decoder behind the ``ImageDecoder`` contract.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels: the final grid x ``downsample``

``VQDecoder().decode(tokenizer, codes, schedule)`` is exactly ``tokenizer.decode(codes, schedule)``:
deterministic, one forward pass, captions and generator ignored. NextFlow's default decoder (§2.3:
"satisfactory reconstruction fidelity with high inference efficiency").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nxcore.decoder.protocol import ImageDecoder
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.protocol import DiscreteImageTokenizer
from nxcore.typing import Float, Int

__all__ = ["VQDecoder"]


class VQDecoder(ImageDecoder):
    """The tokenizer's decode (module docstring)."""

    scale_factor = 1

    @classmethod
    def examples(cls) -> list[VQDecoder]:
        return [cls()]

    def __repr__(self) -> str:
        return "VQDecoder()"

    def decode(
        self,
        tokenizer: object,
        codes: Sequence[Int[Tensor, "batch h w"]],
        schedule: ScaleSchedule,
        *,
        captions: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "batch channels height width"]:
        if not isinstance(tokenizer, DiscreteImageTokenizer):
            raise TypeError(
                f"tokenizer must be a DiscreteImageTokenizer (encode/decode over multi-scale codes), got "
                f"{type(tokenizer).__name__}"
            )
        with torch.no_grad():
            return tokenizer.decode(list(codes), schedule)
