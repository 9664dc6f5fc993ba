"""``NextFlowPipeline``: the user-facing tasks of a trained NextFlow — text-to-image (optionally
thinking first), editing, in-context editing, captioning, interleaved generation — with the text
tokenizer and the image tokenizer that turn strings and pictures into parts and back.

Images go in as PIL images or float tensors [batch, 3, H, W] in [-1, 1] (the tokenizers' range) and
come out as float tensors in [0, 1], ready for ``nxrecipes.data.shapeworld.to_pil`` and ShapeEval.
Every guided request builds its unconditional twin the way CFG dropout trains it: the condition
text removed, context images kept (an edit keeps its source image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image as PILImage
from torch import Tensor

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


class NextFlowPipeline:
    """A trained ``model`` with its ``text_tokenizer`` (BPE), ``image_tokenizer`` (multi-scale VQ)
    and the default image ``schedule``."""

    def __init__(self, model: NextFlow, text_tokenizer, image_tokenizer, schedule: ScaleSchedule) -> None:
        if not isinstance(model, NextFlow):
            raise TypeError(f"model must be a NextFlow, got {type(model).__name__}")
        if not isinstance(schedule, ScaleSchedule):
            raise TypeError(f"schedule must be a ScaleSchedule, got {type(schedule).__name__}")
        self.model = model.eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer.eval()
        self.schedule = schedule
        vocab = model.vocabulary
        self.eos = vocab.special_id("<eos>")
        self.think_end = vocab.special_tokens.get("</think>")

    @classmethod
    def from_run(cls, run_dir) -> NextFlowPipeline:
        """The pipeline of a finished ``nx nextflow train`` run directory."""
        from nxrecipes.nextflow.train import load_run

        run = load_run(run_dir)
        return cls(run.model, run.text_tokenizer, run.image_tokenizer, run.schedule)

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

    @torch.no_grad()
    def decode(self, codes: Sequence[Tensor], schedule: ScaleSchedule | None = None) -> Tensor:
        """Images [batch, 3, H, W] in [0, 1] from codes."""
        images = self.image_tokenizer.decode(list(codes), schedule or self.schedule)
        return ((images.float() + 1) / 2).clamp(0, 1)

    def _text(self, text: str) -> Text:
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        return Text(self.text_tokenizer.encode(text), loss=False)

    def _strip(self, ids: Sequence[int]) -> str:
        ids = [i for i in ids if i != self.eos]
        return self.text_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _draw(self, cond: list[Example], uncond: list[Example], sampling: ImageSampling | None, seed: int,
              schedule: ScaleSchedule | None, progress: bool) -> Tensor:
        schedule = schedule or self.schedule
        generator = torch.Generator(self.device).manual_seed(seed)
        out = generate_image_codes(self.model, cond, schedule, uncond=uncond, sampling=sampling,
                                   generator=generator, progress=progress)
        return self.decode(out.codes, schedule)

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
                      progress: bool = False) -> Tensor:
        """One image per prompt: [batch, 3, H, W] in [0, 1]; ``ratio`` (height / width) or
        ``schedule`` picks another shape than the default schedule's."""
        _check_strings("prompts", prompts)
        if ratio is not None:
            schedule = self.schedule_for_ratio(ratio)
        cond = [Example([self._text(p)]) for p in prompts]
        return self._draw(cond, [Example()] * len(cond), sampling, seed, schedule, progress)

    def think_then_draw(self, prompts: Sequence[str], *, sampling: ImageSampling | None = None,
                        text: TextSampling | None = None, seed: int = 0) -> tuple[list[str], Tensor]:
        """Think-before-drawing: the model writes a reasoning trace after ``<think>`` until
        ``</think>``, then draws conditioned on prompt and trace. Returns (traces, images)."""
        _check_strings("prompts", prompts)
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
        images = self._draw(cond, [Example()] * len(cond), sampling, seed, None, False)
        return [self._strip([i for i in t if i != self.think_end]) for t in traces], images

    def edit(self, images: Images, instructions: Sequence[str], *, sampling: ImageSampling | None = None,
             seed: int = 0) -> Tensor:
        """Edited images: the source image in context, then the instruction, then the new image."""
        _check_strings("instructions", instructions)
        codes = self.encode(images)
        if codes[0].shape[0] != len(instructions):
            raise ValueError(f"got {codes[0].shape[0]} images and {len(instructions)} instructions; one each")
        sources = [image_part(codes, self.schedule, b) for b in range(len(instructions))]
        cond = [Example([s, self._text(i)]) for s, i in zip(sources, instructions, strict=True)]
        return self._draw(cond, [Example([s]) for s in sources], sampling, seed, None, False)

    def in_context(self, prompt: str, examples: Sequence[tuple[PILImage.Image, PILImage.Image]],
                   query: PILImage.Image, *, sampling: ImageSampling | None = None, seed: int = 0) -> Tensor:
        """In-context editing: (before, after) example pairs show a change; apply it to ``query``."""
        pictures = [img for pair in examples for img in pair] + [query]
        codes = self.encode(pictures, "examples and query")
        context = [image_part(codes, self.schedule, b) for b in range(len(pictures))]
        cond = [Example([self._text(prompt), *context])]
        return self._draw(cond, [Example(context)], sampling, seed, None, False)

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
