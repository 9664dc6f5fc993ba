"""The Tokenizer family: text to ids, images to discrete multi-scale codes or continuous latents.

Images are float [batch, 3, height, width] in [-1, 1] (the VQ/VAE convention), height and width
multiples of ``downsample``.

- ``TextTokenizer``: ``encode(str) -> list[int]``, ``decode(ids) -> str``; ids are in
  [0, vocab_size). ``special_tokens`` maps each special string (``<boi>``, ``<eoi>``, pad, ...) to
  its id. Reference: BPE through HF ``tokenizers``.
- ``DiscreteImageTokenizer``: multi-scale residual VQ. ``encode(images, schedule)`` returns one
  int64 code grid [batch, h_k, w_k] per schedule step, values in [0, codebook_size);
  ``decode(codes, schedule)`` inverts it to images; ``embed_codes(codes, step)`` gives the codebook
  features [batch, code_dim, h, w] of one step; ``next_scale_inputs(codes, schedule)`` gives the
  transformer inputs of steps 2..K, one [batch, code_dim, h_{k+1}, w_{k+1}] map per step k < K
  (residual or accumulated features, as the tokenizer is configured). References: VAR-compatible
  multi-scale VQ and the dual-codebook (TokenFlow-style) VQ of NextFlow.
- ``ContinuousImageTokenizer``: ``encode(images) -> latents [batch, h, w, latent_dim]`` (patch
  latents in raster order), ``decode(latents) -> images``. Reference: NextStep-1's f8ch16
  autoencoder with 2x2 patchify (latent_dim 64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from nxcore.schedule.protocol import ScaleSchedule
from nxcore.typing import Float, Int


@runtime_checkable
class TextTokenizer(Protocol):
    vocab_size: int

    @property
    def special_tokens(self) -> Mapping[str, int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@runtime_checkable
class DiscreteImageTokenizer(Protocol):
    codebook_size: int
    code_dim: int
    downsample: int

    def encode(
        self, images: Float[Tensor, "batch 3 height width"], schedule: ScaleSchedule
    ) -> list[Int[Tensor, "batch h w"]]: ...

    def decode(
        self, codes: Sequence[Int[Tensor, "batch h w"]], schedule: ScaleSchedule
    ) -> Float[Tensor, "batch 3 height width"]: ...

    def embed_codes(
        self, codes: Int[Tensor, "batch h w"], step: int
    ) -> Float[Tensor, "batch code_dim h w"]: ...

    def next_scale_inputs(
        self, codes: Sequence[Int[Tensor, "batch h w"]], schedule: ScaleSchedule
    ) -> list[Float[Tensor, "batch code_dim h w"]]: ...


@runtime_checkable
class ContinuousImageTokenizer(Protocol):
    latent_dim: int
    downsample: int

    def encode(
        self, images: Float[Tensor, "batch 3 height width"]
    ) -> Float[Tensor, "batch h w latent_dim"]: ...

    def decode(
        self, latents: Float[Tensor, "batch h w latent_dim"]
    ) -> Float[Tensor, "batch 3 height width"]: ...


Tokenizer = TextTokenizer | DiscreteImageTokenizer | ContinuousImageTokenizer
