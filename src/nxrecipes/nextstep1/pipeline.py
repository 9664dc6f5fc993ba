"""``NextStep1Pipeline``: text-to-image and instruction editing with a NextStep-1 model, its text
tokenizer and its continuous image tokenizer (official ``NextStepPipeline.generate_image``).

Shape legend: images = outputs (captions x num_images_per_caption, caption-major), height, width =
pixels, h, w = the token grid (pixels / the image tokenizer's ``downsample``), latent_dim = 64.

Images go in as PIL images or float tensors [batch, 3, height, width] in [-1, 1] and come out as
float tensors [images, 3, height, width] in [0, 1] (``nxrecipes.data.shapeworld.to_pil`` makes PIL
images). Generated token latents are reshaped with the explicit (h, w) grid (non-square sizes work)
and decoded by the image tokenizer, which undoes its scale and shift.

Edits encode the source with the image tokenizer's posterior mean (upstream samples the posterior,
which equals the mean for a ``deterministic`` tokenizer) and place it where the instruction's
``<image>`` tag is; an instruction without the tag gets it in front (upstream's example layout).

Seeds: ``seed`` seeds a ``torch.Generator`` on the model's device, the only randomness used, so a
request is reproducible. Upstream seeds the global RNGs instead (and, editing, draws a posterior
sample first, which shifts its stream); for text-to-image the draws should match upstream's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image as PILImage
from torch import Tensor

from nxcore.tokenizer.text import BPETokenizer
from nxrecipes.nextstep1.generate import ImageSampling, generate_latents
from nxrecipes.nextstep1.model import NextStep1
from nxrecipes.nextstep1.prompt import IMAGE_TAG, build_prompts, model_special_ids, token_grid
from nxrecipes.tokenizer.data import to_model

__all__ = ["NextStep1Pipeline"]

Images = Sequence[PILImage.Image] | Tensor


class NextStep1Pipeline:
    """A ``model`` with its ``text_tokenizer`` (a ``BPETokenizer`` with NextStep-1's special roles)
    and ``image_tokenizer`` (``encode`` images -> [B, h, w, latent_dim], ``decode`` back, and
    ``downsample`` pixels per token side; e.g. ``NextStepAutoencoder``)."""

    def __init__(self, model: NextStep1, text_tokenizer: BPETokenizer, image_tokenizer) -> None:
        if not isinstance(model, NextStep1):
            raise TypeError(f"model must be a NextStep1, got {type(model).__name__}")
        ids = model_special_ids(text_tokenizer)
        c = model.config
        for field, value in ids.items():
            if getattr(c, field) != value:
                raise ValueError(
                    f"the text tokenizer's {field} is {value} but the model's config has "
                    f"{getattr(c, field)}; load the tokenizer that was trained (or shipped) with this model"
                )
        for name in ("encode", "decode", "downsample", "latent_dim"):
            if not hasattr(image_tokenizer, name):
                raise TypeError(
                    f"image_tokenizer {type(image_tokenizer).__name__} has no {name}; pass a continuous "
                    "image tokenizer such as nxcore.tokenizer.autoencoder.NextStepAutoencoder"
                )
        if image_tokenizer.latent_dim != c.latent_dim:
            raise ValueError(
                f"the image tokenizer makes tokens of width {image_tokenizer.latent_dim} but the model reads "
                f"latent_dim = {c.latent_dim}; pair the model with the tokenizer it was trained on"
            )
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer.eval()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> NextStep1Pipeline:
        """The pipeline of a finished ``nx nextstep1 train`` run directory."""
        from nxrecipes.nextstep1.train import load_run

        run = load_run(run_dir)
        return cls(run.model, run.text_tokenizer, run.image_tokenizer)

    @classmethod
    def from_official(
        cls,
        model_dir: str | os.PathLike,
        vae_dir: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
    ) -> NextStep1Pipeline:
        """An official checkpoint directory (e.g. NextStep-1-Large) and the official f8ch16 tokenizer
        directory, both in ``dtype`` (bf16 as upstream) on ``device`` (default: CUDA when there is one)."""
        from nxcore.tokenizer.autoencoder import from_official as autoencoder_from_official
        from nxrecipes.nextstep1.official import load_official

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_official(model_dir, dtype=dtype, device=device)
        vae = autoencoder_from_official(vae_dir, device=device, dtype=dtype)
        return cls(loaded.model, loaded.text_tokenizer, vae)

    # --- conversions ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def downsample(self) -> int:
        """Pixels per token side (16 for the official f8ch16 tokenizer: 8 x 2x2 patches)."""
        return int(self.image_tokenizer.downsample)

    def grid(self, hw: Sequence[int]) -> tuple[int, int]:
        """The (h, w) token grid of an (H, W) pixel size (both multiples of ``downsample``)."""
        return token_grid(hw, self.downsample)

    def _tokenizer_dtype(self) -> torch.dtype:
        param = next(self.image_tokenizer.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def _images(self, images: Images, name: str = "images") -> Tensor:
        if isinstance(images, Tensor):
            x = images
        elif isinstance(images, Sequence) and images and all(isinstance(i, PILImage.Image) for i in images):
            sizes = {i.size for i in images}
            if len(sizes) > 1:
                raise ValueError(f"{name} have different sizes {sorted(sizes)}; resize them to one size")
            x = torch.stack([to_model(i) for i in images])
        else:
            raise TypeError(f"{name} must be PIL images or a float tensor [batch, 3, H, W] in [-1, 1]")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} are {tuple(x.shape)}; pass [batch, 3, H, W] images in [-1, 1]")
        token_grid(tuple(x.shape[-2:]), self.downsample, name=f"{name} (H, W)")
        return x.to(self.device, self._tokenizer_dtype())

    @torch.no_grad()
    def encode(self, images: Images, name: str = "images") -> Tensor:
        """Token latents [batch, h, w, latent_dim] of the posterior mean."""
        return self.image_tokenizer.encode(self._images(images, name))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [batch, 3, h * downsample, w * downsample] in [0, 1] from token latents
        [batch, h, w, latent_dim]."""
        images = self.image_tokenizer.decode(latents.to(self.device, self._tokenizer_dtype()))
        return ((images.float() + 1) / 2).clamp(0, 1)

    def _draw(self, captions: Sequence[str], hw: Sequence[int], sources: Tensor | None,
              num_images_per_caption: int, positive_prompt: str | None, negative_prompt: str | None,
              sampling: ImageSampling | None, seed: int, progress: bool) -> Tensor:
        sampling = sampling or ImageSampling()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        prompts = build_prompts(
            self.text_tokenizer, captions, self.grid(hw), sources=sources,
            num_images_per_caption=num_images_per_caption, positive_prompt=positive_prompt,
            negative_prompt=negative_prompt, cfg=sampling.cfg, cfg_img=sampling.cfg_img,
        )
        generator = torch.Generator(self.device).manual_seed(seed)
        out = generate_latents(self.model, prompts, sampling=sampling, generator=generator, progress=progress)
        return self.decode(out.latents)

    # --- tasks ----------------------------------------------------------------------------------

    def text_to_image(
        self,
        captions: Sequence[str],
        *,
        hw: Sequence[int] = (256, 256),
        num_images_per_caption: int = 1,
        positive_prompt: str | None = None,
        negative_prompt: str | None = None,
        sampling: ImageSampling | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """Images [captions * num_images_per_caption, 3, H, W] in [0, 1] for ``hw`` = (H, W) pixels
        (upstream default 256 x 256; NextStep-1-Large is best at 512 x 512)."""
        _check_strings("captions", captions)
        return self._draw(captions, hw, None, num_images_per_caption, positive_prompt, negative_prompt,
                          sampling, seed, progress)

    def edit(
        self,
        images: Images,
        instructions: Sequence[str],
        *,
        hw: Sequence[int] | None = None,
        num_images_per_caption: int = 1,
        positive_prompt: str | None = None,
        negative_prompt: str | None = None,
        sampling: ImageSampling | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """Edited images [instructions * num_images_per_caption, 3, H, W] in [0, 1], one source image
        per instruction; ``hw`` defaults to the sources' size. ``sampling.cfg_img`` != 1 adds image
        guidance (3-way CFG; upstream example: ``ImageSampling.official_edit()``)."""
        _check_strings("instructions", instructions)
        sources = self.encode(images)
        if sources.shape[0] != len(instructions):
            raise ValueError(
                f"got {sources.shape[0]} images and {len(instructions)} instructions; pass one image per "
                "instruction"
            )
        if hw is None:
            hw = (sources.shape[1] * self.downsample, sources.shape[2] * self.downsample)
        captions = [i if IMAGE_TAG in i else IMAGE_TAG + i for i in instructions]
        return self._draw(captions, hw, sources, num_images_per_caption, positive_prompt, negative_prompt,
                          sampling, seed, progress)


def _check_strings(name: str, values: object) -> None:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty list of strings, got {values!r:.80}")
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{name} must hold strings, got {type(v).__name__}")
