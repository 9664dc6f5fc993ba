"""The ``ImageDecoder`` contract: a discrete tokenizer's multi-scale codes -> images, and the pieces a
diffusion decoder is made of.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   output image pixels: the final grid x ``downsample`` x ``scale_factor``
    gh, gw          the tokenizer's final latent grid (the schedule's last step)
    sem_dim, pix_dim    widths of the semantic and pixel codebook halves
    feature_dim     width of the semantic decoder's features (the teacher width)
    cond_channels   width of the projected visual condition
    text            caption tokens (the text branch);  text_dim: their width

- ``ImageDecoder``: ``decode(tokenizer, codes, schedule, *, captions=None, generator=None)`` turns the
  codes of every schedule step (int64 [batch, h_k, w_k] each, as ``DiscreteImageTokenizer.encode``
  gives them) into float images [batch, channels, height, width] (the tokenizers' [-1, 1] range),
  ``scale_factor`` (1 or 2) times the size of the tokenizer's own decode. ``captions`` (one string per
  image, or None) feed a decoder with a text branch; ``generator`` seeds a stochastic one (the same
  generator state gives the same images). The tokenizer is an argument, as the schedule is: a
  decoder is swapped by passing another one, exactly as a head is. References: ``VQDecoder`` (the
  tokenizer's own pixel decoder; deterministic, captions ignored) and ``DiffusionDecoder``
  (NextFlow §2.3: a flow-matching decoder conditioned on the codes' embeddings and the caption).
- ``ConditionSource``: a tokenizer that can give a diffusion decoder its visual condition:
  ``decoder_condition(codes, schedule) -> DecoderCondition`` (the three maps of NextFlow §2.3) and
  ``decoder_condition_dims`` = (sem_dim, pix_dim, feature_dim). Reference:
  ``nxcore.tokenizer.dual.DualCodebookTokenizer``.
- ``Denoiser``: the swappable network inside ``DiffusionDecoder``: noisy images, flow times, the
  projected condition map and the caption tokens -> velocities of the images' shape. References:
  ``UNetDenoiser`` (the condition concatenated at the input convolution) and ``DiTDenoiser`` (an MLP
  of the condition added to the patch tokens); the caption enters both through cross-attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from nxcore.schedule.protocol import ScaleSchedule
from nxcore.typing import Bool, Float, Int

__all__ = ["ConditionSource", "DecoderCondition", "Denoiser", "ImageDecoder"]


class DecoderCondition(NamedTuple):
    """The visual condition of a diffusion decoder (NextFlow §2.3), every map at the final latent grid:
    ``semantic`` = the quantized semantic map Σ_k up(e_sem[codes_k]) [batch, sem_dim, gh, gw],
    ``pixel`` = the quantized pixel map Σ_k up(e_pix[codes_k]) [batch, pix_dim, gh, gw], and
    ``features`` = the semantic decoder's output on the semantic map [batch, feature_dim, gh, gw]."""

    semantic: Tensor
    pixel: Tensor
    features: Tensor

    @property
    def dims(self) -> tuple[int, int, int]:
        return (self.semantic.shape[1], self.pixel.shape[1], self.features.shape[1])

    def concatenated(self) -> Float[Tensor, "batch dim gh gw"]:
        """The three maps along channels (semantic, pixel, features), float32."""
        return torch.cat([self.semantic.float(), self.pixel.float(), self.features.float()], dim=1)


@runtime_checkable
class ConditionSource(Protocol):
    """A tokenizer that gives a ``DecoderCondition`` for its codes."""

    downsample: int

    @property
    def decoder_condition_dims(self) -> tuple[int, int, int]: ...

    def decoder_condition(
        self, codes: Sequence[Int[Tensor, "batch h w"]], schedule: ScaleSchedule
    ) -> DecoderCondition: ...


@runtime_checkable
class ImageDecoder(Protocol):
    scale_factor: int

    def decode(
        self,
        tokenizer: object,
        codes: Sequence[Int[Tensor, "batch h w"]],
        schedule: ScaleSchedule,
        *,
        captions: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "batch channels height width"]: ...


@runtime_checkable
class Denoiser(Protocol):
    """``denoiser(x, t, cond, text, text_mask) -> v``: x the noisy images, t in [0, 1] one time per image
    (0 noise, 1 data), cond the projected condition at the latent grid (the denoiser resizes it to
    where it injects it), text / text_mask the caption tokens (True = a real token; every row has at
    least one)."""

    channels: int
    cond_channels: int
    text_dim: int

    def __call__(
        self,
        x: Float[Tensor, "batch channels height width"],
        t: Float[Tensor, " batch"],
        cond: Float[Tensor, "batch cond_channels gh gw"],
        text: Float[Tensor, "batch text text_dim"],
        text_mask: Bool[Tensor, "batch text"],
    ) -> Float[Tensor, "batch channels height width"]: ...
