"""``NextFlowPipeline``: the user-facing tasks of a trained NextFlow — text-to-image (optionally
thinking first), editing, in-context editing, captioning, interleaved generation — with the text
tokenizer and the image tokenizer that turn strings and pictures into parts and back.

Images go in as PIL images or float tensors [batch, 3, H, W] in [-1, 1] (the tokenizers' range) and
come out as float tensors in [0, 1], ready for ``nxrecipes.data.shapeworld.to_pil`` and ShapeEval.
Every guided request builds its unconditional twin the way CFG dropout trains it: the condition
text removed, context images kept (an edit keeps its source image).

**Decoders** (NextFlow §2.3): every task that draws images takes ``decoder=``: ``"vq"`` (the
default: the image tokenizer's own decode), ``"diffusion"`` (the trained ``DiffusionDecoder`` the
pipeline holds, ``diffusion_decoder``: ``from_run`` loads ``RUN/diffusion_decoder`` when it exists),
or any ``nxcore.decoder.ImageDecoder`` object. Text-to-image (and think-then-draw) give the
diffusion decoder the prompt as its caption; edits and in-context edits give it none. A
``scale_factor=2`` decoder returns images twice the schedule's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image as PILImage
from torch import Tensor

from nxcore.decoder import ImageDecoder, VQDecoder
from nxcore.schedule import derived_schedule, nearest_nextflow_ratio
from nxcore.schedule.protocol import ScaleSchedule
from nxrecipes.nextflow.generate import (
    ImageSampling,
    TextSampling,
    generate_image_codes,
    generate_text,
    image_part,
    interleave,
)
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Example, Text
from nxrecipes.tokenizer.data import to_model

__all__ = ["NextFlowPipeline"]

Images = Sequence[PILImage.Image] | Tensor
DECODERS = ("vq", "diffusion")


class NextFlowPipeline:
    """A trained ``model`` with its ``text_tokenizer`` (BPE), ``image_tokenizer`` (multi-scale VQ),
    the default image ``schedule`` and optionally a trained ``diffusion_decoder`` (module docstring)."""

    def __init__(self, model: NextFlow, text_tokenizer, image_tokenizer, schedule: ScaleSchedule, *,
                 diffusion_decoder: ImageDecoder | None = None) -> None:
        if not isinstance(model, NextFlow):
            raise TypeError(f"model must be a NextFlow, got {type(model).__name__}")
        if not isinstance(schedule, ScaleSchedule):
            raise TypeError(f"schedule must be a ScaleSchedule, got {type(schedule).__name__}")
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer.eval()
        self.schedule = schedule
        if diffusion_decoder is not None and not isinstance(diffusion_decoder, ImageDecoder):
            raise TypeError(
                f"diffusion_decoder must be an nxcore.decoder.ImageDecoder (e.g. a trained "
                f"DiffusionDecoder), got {type(diffusion_decoder).__name__}"
            )
        self.diffusion_decoder = diffusion_decoder
        self.decoder_source = "diffusion_decoder=..." if diffusion_decoder is not None else None
        vocab = model.vocabulary
        self.eos = vocab.special_id("<eos>")
        self.think_end = vocab.special_tokens.get("</think>")

    @classmethod
    def from_run(cls, run_dir, *, decoder_dir=None) -> NextFlowPipeline:
        """The pipeline of a finished ``nx nextflow train`` run directory, with the diffusion decoder of
        ``decoder_dir`` (default ``RUN/diffusion_decoder``, when it holds a trained one)."""
        from pathlib import Path

        from nxrecipes.nextflow.decoder_train import DECODER_DIR, load_decoder
        from nxrecipes.nextflow.train import load_run

        run = load_run(run_dir)
        folder = Path(run_dir) / DECODER_DIR if decoder_dir is None else Path(decoder_dir)
        decoder = None
        if decoder_dir is not None or (folder / "model.safetensors").is_file():
            decoder = load_decoder(folder)
        pipeline = cls(run.model, run.text_tokenizer, run.image_tokenizer, run.schedule,
                       diffusion_decoder=decoder)
        pipeline.decoder_source = str(folder)
        return pipeline

    # --- conversions ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def _images(self, images: Images, name: str = "images") -> Tensor:
        if isinstance(images, Tensor):
            x = images
        elif isinstance(images, Sequence) and images and all(isinstance(i, PILImage.Image) for i in images):
            x = torch.stack([to_model(i) for i in images])
        else:
            raise TypeError(f"{name} must be PIL images or a float tensor [batch, 3, H, W] in [-1, 1]")
        (gh, gw), d = self.schedule.steps[-1], self.image_tokenizer.downsample
        if x.ndim != 4 or tuple(x.shape[-2:]) != (gh * d, gw * d):
            raise ValueError(
                f"{name} are {tuple(x.shape)} but the pipeline's schedule ends on a {gh}x{gw} grid, which "
                f"needs [batch, 3, {gh * d}, {gw * d}] images (downsample {d}); resize them first"
            )
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def encode(self, images: Images, name: str = "images") -> list[Tensor]:
        return self.image_tokenizer.encode(self._images(images, name), self.schedule)

    def image_decoder(self, decoder: str | ImageDecoder = "vq") -> ImageDecoder:
        """The ``ImageDecoder`` that ``decoder`` names: ``"vq"``, ``"diffusion"`` (the pipeline's trained
        one), or an ``ImageDecoder`` itself."""
        if isinstance(decoder, str):
            if decoder == "vq":
                return VQDecoder()
            if decoder == "diffusion":
                if self.diffusion_decoder is None:
                    where = f" ({self.decoder_source} holds none)" if self.decoder_source else ""
                    raise ValueError(
                        f"decoder='diffusion' but this pipeline has no diffusion decoder{where}; train one "
                        "with `nx nextflow train-decoder RUN` (NextFlowPipeline.from_run(RUN) loads it), "
                        "or pass diffusion_decoder=... / decoder=<an ImageDecoder>"
                    )
                return self.diffusion_decoder
            raise ValueError(f"decoder must be one of {DECODERS} or an ImageDecoder, got {decoder!r}")
        if not isinstance(decoder, ImageDecoder):
            raise TypeError(
                f"decoder must be one of {DECODERS} or an nxcore.decoder.ImageDecoder, got "
                f"{type(decoder).__name__}"
            )
        return decoder

    @torch.no_grad()
    def decode(self, codes: Sequence[Tensor], schedule: ScaleSchedule | None = None, *,
               decoder: str | ImageDecoder = "vq", captions: Sequence[str] | None = None,
               seed: int = 0) -> Tensor:
        """Images [batch, 3, H, W] in [0, 1] from codes, by ``decoder`` (``"vq"``, ``"diffusion"`` or an
        ``ImageDecoder``; ``captions`` and ``seed`` feed a diffusion decoder)."""
        chosen = self.image_decoder(decoder)
        generator = torch.Generator(self.device).manual_seed(seed)
        images = chosen.decode(self.image_tokenizer, list(codes), schedule or self.schedule,
                               captions=None if captions is None else list(captions), generator=generator)
        return ((images.float() + 1) / 2).clamp(0, 1)

    def _text(self, text: str) -> Text:
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        return Text(self.text_tokenizer.encode(text), loss=False)

    def _strip(self, ids: Sequence[int]) -> str:
        ids = [i for i in ids if i != self.eos]
        return self.text_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _draw(self, cond: list[Example], uncond: list[Example], sampling: ImageSampling | None, seed: int,
              schedule: ScaleSchedule | None, progress: bool, decoder: str | ImageDecoder = "vq",
              captions: Sequence[str] | None = None) -> Tensor:
        chosen = self.image_decoder(decoder)  # a missing decoder fails before any sampling
        schedule = schedule or self.schedule
        generator = torch.Generator(self.device).manual_seed(seed)
        out = generate_image_codes(self.model, cond, schedule, uncond=uncond, sampling=sampling,
                                   generator=generator, progress=progress)
        return self.decode(out.codes, schedule, decoder=chosen, captions=captions, seed=seed)

    def image_codes(self, prompts: Sequence[str], *, sampling: ImageSampling | None = None, seed: int = 0,
                    schedule: ScaleSchedule | None = None, given: Sequence[Tensor] = ()) -> list[Tensor]:
        """The codes ``text_to_image`` decodes (same prompts, sampling and seed: the same codes), one
        int64 [batch, h_k, w_k] grid per step; decode them with ``decode(codes, decoder=...)``.
        ``given``: the first scales' codes, kept instead of sampled (e.g. ``encode(images)[:k]``: the
        model completes a real image from its k coarsest scales)."""
        _check_strings("prompts", prompts)
        cond = [Example([self._text(p)]) for p in prompts]
        generator = torch.Generator(self.device).manual_seed(seed)
        return generate_image_codes(self.model, cond, schedule or self.schedule,
                                    uncond=[Example()] * len(cond), sampling=sampling,
                                    generator=generator, given=given).codes

    # --- tasks ----------------------------------------------------------------------------------

    def schedule_for_ratio(self, ratio: float) -> ScaleSchedule:
        """A schedule for ``ratio`` (height / width, snapped to the nearest Table 14 ratio) with the
        default schedule's number of steps and about its final token count."""
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.25 <= ratio <= 4.0:
            raise ValueError(
                f"ratio = {ratio!r} is outside 1:4 .. 4:1 (height / width, Table 14); pick a ratio in "
                "[0.25, 4]"
            )
        snapped = nearest_nextflow_ratio(ratio, 1.0)
        gh, gw = self.schedule.steps[-1]
        h = max(1, round(math.sqrt(gh * gw * snapped)))
        w = max(1, round(math.sqrt(gh * gw / snapped)))
        return derived_schedule((h, w), len(self.schedule.steps))

    def text_to_image(self, prompts: Sequence[str], *, sampling: ImageSampling | None = None, seed: int = 0,
                      schedule: ScaleSchedule | None = None, ratio: float | None = None,
                      progress: bool = False, decoder: str | ImageDecoder = "vq") -> Tensor:
        """One image per prompt: [batch, 3, H, W] in [0, 1]; ``ratio`` (height / width) or
        ``schedule`` picks another shape than the default schedule's; ``decoder``: ``"vq"``,
        ``"diffusion"`` (the prompts are its captions) or an ``ImageDecoder``."""
        _check_strings("prompts", prompts)
        if ratio is not None:
            schedule = self.schedule_for_ratio(ratio)
        cond = [Example([self._text(p)]) for p in prompts]
        return self._draw(cond, [Example()] * len(cond), sampling, seed, schedule, progress, decoder,
                          list(prompts))

    def think_then_draw(self, prompts: Sequence[str], *, sampling: ImageSampling | None = None,
                        text: TextSampling | None = None, seed: int = 0,
                        decoder: str | ImageDecoder = "vq") -> tuple[list[str], Tensor]:
        """Think-before-drawing: the model writes a reasoning trace after ``<think>`` until
        ``</think>``, then draws conditioned on prompt and trace. Returns (traces, images)."""
        _check_strings("prompts", prompts)
        self.image_decoder(decoder)
        if self.think_end is None:
            raise ValueError("the vocabulary has no </think> token; this model was not trained to think")
        think = self.text_tokenizer.encode("<think>")
        prefixes = [self.text_tokenizer.encode(p) + think for p in prompts]
        text = text or TextSampling(greedy=True, max_tokens=48)
        generator = torch.Generator(self.device).manual_seed(seed)
        asks = [Example([Text(ids, loss=False)]) for ids in prefixes]
        traces = generate_text(self.model, asks, sampling=text, stop=(self.think_end, self.eos),
                               generator=generator)
        end = [self.think_end]
        cond = [Example([Text(p + t if t[-1:] == end else p + t + end, loss=False)])
                for p, t in zip(prefixes, traces, strict=True)]
        images = self._draw(cond, [Example()] * len(cond), sampling, seed, None, False, decoder,
                            list(prompts))
        return [self._strip([i for i in t if i != self.think_end]) for t in traces], images

    def edit(self, images: Images, instructions: Sequence[str], *, sampling: ImageSampling | None = None,
             seed: int = 0, decoder: str | ImageDecoder = "vq") -> Tensor:
        """Edited images: the source image in context, then the instruction, then the new image
        (``decoder``: as ``text_to_image``, without captions)."""
        _check_strings("instructions", instructions)
        codes = self.encode(images)
        if codes[0].shape[0] != len(instructions):
            raise ValueError(f"got {codes[0].shape[0]} images and {len(instructions)} instructions; one each")
        sources = [image_part(codes, self.schedule, b) for b in range(len(instructions))]
        cond = [Example([s, self._text(i)]) for s, i in zip(sources, instructions, strict=True)]
        return self._draw(cond, [Example([s]) for s in sources], sampling, seed, None, False, decoder)

    def in_context(self, prompt: str, examples: Sequence[tuple[PILImage.Image, PILImage.Image]],
                   query: PILImage.Image, *, sampling: ImageSampling | None = None, seed: int = 0,
                   decoder: str | ImageDecoder = "vq") -> Tensor:
        """In-context editing: (before, after) example pairs show a change; apply it to ``query``."""
        pictures = [img for pair in examples for img in pair] + [query]
        codes = self.encode(pictures, "examples and query")
        context = [image_part(codes, self.schedule, b) for b in range(len(pictures))]
        cond = [Example([self._text(prompt), *context])]
        return self._draw(cond, [Example(context)], sampling, seed, None, False, decoder)

    def caption(self, images: Images, *, sampling: TextSampling | None = None, seed: int = 0) -> list[str]:
        """A caption per image (greedy by default)."""
        codes = self.encode(images)
        prompts = [Example([image_part(codes, self.schedule, b)]) for b in range(codes[0].shape[0])]
        generator = torch.Generator(self.device).manual_seed(seed)
        out = generate_text(self.model, prompts, sampling=sampling or TextSampling(greedy=True),
                            stop=(self.eos,), generator=generator)
        return [self._strip(ids) for ids in out]

    def interleave(self, prompt: str, *, text: TextSampling | None = None, image: ImageSampling | None = None,
                   max_images: int = 4, seed: int = 0) -> list[str | Tensor]:
        """Text and images alternating after ``prompt`` until ``<eos>``: strings and [3, H, W] images."""
        generator = torch.Generator(self.device).manual_seed(seed)
        pieces = interleave(self.model, Example([self._text(prompt)]), self.schedule, text=text, image=image,
                            max_images=max_images, generator=generator)
        return [self._strip(p) if isinstance(p[0], int) else self.decode(p)[0] for p in pieces]


def _check_strings(name: str, values: object) -> None:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty list of strings, got {values!r}")
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{name} must hold strings, got {type(v).__name__}")
