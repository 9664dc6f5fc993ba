"""The text branch of the diffusion decoder: a small byte-level caption encoder.

Shapes:
    batch       captions
    text        tokens: one learned "null" token, then the caption's UTF-8 bytes (at most ``max_len``)
    dim         the encoder width (the denoiser's ``text_dim``)

NextFlow's decoders keep the text encoder of a pre-trained text-to-image backbone and feed the
caption through it (§3.3: the discrete tokens go only through the visual branch, never concatenated
with the text). Here the branch is trained with the decoder: the caption's bytes (+1; 0 pads), a
learned position per byte, ``depth`` pre-LayerNorm transformer layers and a final LayerNorm. Bytes
need no text tokenizer, so a decoder works with any run's captions. Every row starts with the
learned null token, so a missing caption (None or "", what caption dropout trains) still gives one
token to attend to.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn

from nxcore.config import Config, config, integer

__all__ = ["CaptionEncoder", "CaptionEncoderConfig", "caption_bytes"]


@config
class CaptionEncoderConfig(Config):
    """``dim`` wide, ``depth`` layers of ``heads`` heads, captions cut to ``max_len`` bytes."""

    dim: int = attrs.field(default=64, validator=integer(at_least=1))
    depth: int = attrs.field(default=1, validator=integer(at_least=0))
    heads: int = attrs.field(default=2, validator=integer(at_least=1))
    max_len: int = attrs.field(default=96, validator=integer(at_least=1))

    def __attrs_post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(
                f"CaptionEncoderConfig.dim = {self.dim} is not divisible by heads = {self.heads}; pick a "
                "width that is a multiple of heads"
            )

    def build(self) -> CaptionEncoder:
        return CaptionEncoder(self)


def caption_bytes(captions: Sequence[str | None] | None, batch: int, max_len: int) -> Tensor:
    """int64 [batch, max_len]: each caption's UTF-8 bytes + 1, zero-padded (None: no captions)."""
    if captions is None:
        return torch.zeros(batch, max_len, dtype=torch.long)
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of strings (one per image) or None, got {captions!r}")
    if len(captions) != batch:
        raise ValueError(f"got {len(captions)} captions for {batch} images; pass one caption per image "
                         "(None or '' for none)")
    out = torch.zeros(batch, max_len, dtype=torch.long)
    for i, caption in enumerate(captions):
        if caption is None:
            continue
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}] must be a str or None, got {type(caption).__name__}")
        data = list(caption.encode("utf-8"))[:max_len]
        if data:
            out[i, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
    return out


class CaptionEncoder(nn.Module):
    """Captions -> (tokens [batch, 1 + n, dim], mask [batch, 1 + n]), n the batch's longest caption in
    bytes (at most ``max_len``; module docstring)."""

    def __init__(self, config: CaptionEncoderConfig | None = None) -> None:
        super().__init__()
        config = config or CaptionEncoderConfig()
        self.config = config
        self.dim = config.dim
        self.embed = nn.Embedding(257, config.dim, padding_idx=0)
        self.null = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.position = nn.Parameter(torch.randn(1, config.max_len + 1, config.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, 4 * config.dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = (nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
                       if config.depth else None)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, captions: Sequence[str | None] | None, batch: int) -> tuple[Tensor, Tensor]:
        device = self.embed.weight.device
        ids = caption_bytes(captions, batch, self.config.max_len).to(device)
        ids = ids[:, : max(1, int((ids != 0).sum(1).max()))]  # the longest caption of the batch
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), ids != 0], dim=1)
        x = torch.cat([self.null.expand(batch, -1, -1), self.embed(ids)], dim=1)
        x = x + self.position[:, : ids.shape[1] + 1]
        if self.layers is not None:
            x = self.layers(x, src_key_padding_mask=~mask)
        return self.norm(x), mask
