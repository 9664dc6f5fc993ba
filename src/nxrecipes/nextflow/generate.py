"""KV-cached generation for NextFlow: prefill the prompt once, then one forward per image scale
(every token of a scale at once, no mask beyond the prompt padding) or per text token.

Shape legend: batch = rows decoded together (with CFG: the conditional rows, then as many
unconditional rows), kv = cache slots filled, h, w = the grid of one step, codes = codebook size.

``Session`` holds the rows' KV caches and layouts. Prompts are ``Example``s (text and context
images, e.g. an edit's source; an empty ``Example()`` is the unconditional text-to-image prompt: the
image starts the sequence) collated right-padded; padding slots are masked out of every later
attention, and each row's RoPE positions follow its own layout, so rows of different prompt
lengths decode together and give the logits they would give alone.

``generate_image_codes`` samples an image scale by scale: step 0 reads the ``<boi>`` embedding,
step k the next-scale inputs of step k-1's sampled codes; logits are restricted to the visual codes;
classifier-free guidance mixes each conditional row with its unconditional row (``uncond``
prompts: the same request with the condition dropped, as in training) with a per-scale weight;
temperature, top-k and top-p may differ per scale (``ImageSampling``). ``generate_text`` samples
text until a stop id. ``interleave`` alternates both in one session: text until the model writes
``<boi>``, then an image, then ``<eoi>`` and text again, until ``<eos>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor
from tqdm.auto import tqdm

from nxcore.config import finite_number, integer
from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.sampler import CategoricalSampler
from nxcore.schedule.protocol import ScaleSchedule
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Example, Image, Text, collate

__all__ = [
    "ImageGeneration",
    "ImageSampling",
    "Session",
    "TextSampling",
    "generate_image_codes",
    "generate_text",
    "interleave",
]

PerScale = float | tuple[float, ...]


def _per_scale(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class ImageSampling:
    """Per-scale sampling of image codes. Each field is one value for every scale or a tuple with
    one value per scale of the schedule; ``cfg`` may also be a callable ``(step, num_steps) -> w``
    (e.g. ``nxcore.sampler.VARLinearRamp``). ``cfg`` w: ``uncond + w (cond - uncond)`` on the logits
    (1 = off)."""

    cfg: PerScale | Callable[[int, int], float] = attrs.field(default=1.0, converter=_per_scale)
    temperature: PerScale = attrs.field(default=1.0, converter=_per_scale)
    top_k: int | tuple[int, ...] = attrs.field(default=0, converter=_per_scale)
    top_p: PerScale = attrs.field(default=1.0, converter=_per_scale)

    def check(self, num_steps: int) -> None:
        """Raise unless every per-scale tuple has ``num_steps`` entries."""
        for name in ("cfg", "temperature", "top_k", "top_p"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != num_steps:
                raise ValueError(
                    f"ImageSampling.{name} has {len(value)} values but the schedule has {num_steps} "
                    f"scales; give one value per scale or a single value"
                )
        for k in range(num_steps):
            self.sampler(k, num_steps)

    def guided(self, num_steps: int) -> bool:
        return any(self._weight(k, num_steps) != 1.0 for k in range(num_steps))

    def _at(self, name: str, step: int) -> object:
        value = getattr(self, name)
        return value[step] if isinstance(value, tuple) else value

    def _weight(self, step: int, num_steps: int) -> float:
        return float(self.cfg(step, num_steps)) if callable(self.cfg) else float(self._at("cfg", step))

    def sampler(self, step: int, num_steps: int) -> CategoricalSampler:
        """The ``CategoricalSampler`` of scale ``step`` (validates the values)."""
        return CategoricalSampler(temperature=self._at("temperature", step), top_k=self._at("top_k", step),
                                  top_p=self._at("top_p", step), guidance=self._weight(step, num_steps))

    def policy(self, step: int, num_steps: int) -> CategoricalSampler:
        """The policy of scale ``step`` for RL: guidance and temperature, no top-k / top-p. Its
        log-probabilities are smooth in the logits, where a truncated distribution gives a sampled
        token -inf as soon as an update pushes it out of the kept set."""
        return CategoricalSampler(temperature=self._at("temperature", step),
                                  guidance=self._weight(step, num_steps))


@attrs.frozen(kw_only=True)
class TextSampling:
    """Text sampling: ``greedy`` (argmax) or temperature / top-k / top-p; at most ``max_tokens``."""

    temperature: float = attrs.field(default=1.0, validator=finite_number(above=0))
    top_k: int = attrs.field(default=0, validator=integer(at_least=0))
    top_p: float = attrs.field(default=1.0, validator=finite_number(above=0, at_most=1))
    greedy: bool = False
    max_tokens: int = attrs.field(default=64, validator=integer(at_least=1))

    def sample(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.greedy:
            return logits.argmax(dim=-1)
        sampler = CategoricalSampler(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return sampler.sample(logits, generator=generator)


class Session:
    """Rows decoded together over one set of KV caches (module docstring)."""

    def __init__(self, model: NextFlow, prompts: Sequence[Example], *, extra: int) -> None:
        if not isinstance(model, NextFlow):
            raise TypeError(f"model must be a NextFlow, got {type(model).__name__}")
        if not prompts:
            raise ValueError("prompts is empty; pass at least one Example")
        self.model = model
        empty = [not example.parts for example in prompts]
        filler = Example([Text([model.vocabulary.special_tokens.get("<pad>", 0)], loss=False)])
        batch = collate([filler if e else p for p, e in zip(prompts, empty, strict=True)], model.vocabulary)
        device = model.embed_tokens.weight.device
        batch = batch.to(device)
        rows, seq = batch.ids.shape
        lengths = [0 if e else n for n, e in zip(batch.lengths, empty, strict=True)]
        limit = model.config.max_seq_len
        longest = max(lengths)
        if longest + extra > limit:
            raise ValueError(
                f"the prompt is too long: {longest} tokens + {extra} to generate exceed the model's "
                f"max_seq_len = {limit}; shorten the prompt or generate fewer tokens"
            )
        self.segments = [
            [] if e else list(layout.segments) for layout, e in zip(batch.layouts, empty, strict=True)
        ]
        self.max_len = seq + extra
        self.valid = torch.zeros(rows, self.max_len, dtype=torch.bool, device=device)
        for b, n in enumerate(lengths):
            self.valid[b, :n] = True
        self.caches = [layer.self_attn.new_cache(rows, self.max_len) for layer in model.layers]
        x = model.embed(batch.ids, batch.layouts, batch.images)
        mask = model.attention(batch.layouts, seq, dense=True)["attn_mask"]
        hidden = model.run_layers(x, model.positions(batch.layouts, seq), caches=self.caches, attn_mask=mask)
        hidden = model.refine(hidden, batch.layouts)
        index = torch.tensor([max(n - 1, 0) for n in lengths], device=device)
        self.last = hidden[torch.arange(rows, device=device), index][:, None]  # [batch, 1, dim]
        self.length = seq
        self._whole: dict[tuple, tuple[Tensor, Tensor]] = {}

    @property
    def rows(self) -> int:
        return len(self.segments)

    def _append(self, x: Tensor, positions: Tensor) -> Tensor:
        n = x.shape[1]
        kv = self.length + n
        if kv > self.max_len:
            raise ValueError(f"the session holds {self.max_len} slots; {kv} needed (raise extra=)")
        self.valid[:, self.length : kv] = True
        mask = self.valid[:, None, None, :kv].expand(-1, 1, n, -1)
        hidden = self.model.run_layers(x, positions, caches=self.caches, attn_mask=mask)
        self.length = kv
        return hidden

    def _slice(self, segment, offset: int, count: int) -> tuple[Tensor, Tensor]:
        """RoPE positions [batch, count, 3] and additive embeddings [batch, count, dim] of tokens
        ``offset .. offset + count`` of ``segment`` appended to every row. An image's are computed
        once for the whole image at its first step (``_whole``), and sliced at every step."""
        positions, extra = [], []
        whole = isinstance(segment, DiscreteImage)
        done: dict[tuple, tuple[Tensor, Tensor]] = {}  # rows of one layout (a group of samples) share it
        for segs in self.segments:
            key = (tuple(segs), segment)
            if whole and key not in self._whole:
                self._whole[key] = self._positions_and_additive(segs, segment, 0, _length(segment))
            if key not in done:
                done[key] = (tuple(t[offset : offset + count] for t in self._whole[key]) if whole
                             else self._positions_and_additive(segs, segment, offset, count))
            positions.append(done[key][0])
            extra.append(done[key][1])
        return torch.stack(positions), torch.stack(extra)

    def _positions_and_additive(self, segs, segment, offset: int, count: int) -> tuple[Tensor, Tensor]:
        model = self.model
        layout = SequenceLayout((*segs, segment))
        start = layout.length - _length(segment) + offset
        positions = model.rope.positions(layout, device=model.embed_tokens.weight.device)
        return positions[start : start + count], model.additive(layout, start, start + count)

    def image_step(self, step: int, schedule: ScaleSchedule, codes: Sequence[Tensor]) -> Tensor:
        """Hidden states [batch, h·w, dim] of scale ``step``, given the codes of the scales before
        (int64 [batch, h_k, w_k] each)."""
        steps = tuple(schedule.steps)
        model = self.model
        offset = sum(h * w for h, w in steps[:step])
        h, w = steps[step]
        if step == 0:
            boi = model.embed_tokens.weight[model.vocabulary.special_id("<boi>")]
            x = boi.expand(self.rows, h * w, -1)
        else:
            x = model.step_input(codes[:step], schedule).flatten(2).transpose(1, 2)
        positions, extra = self._slice(DiscreteImage(schedule), offset, h * w)
        hidden = model.refine_step(self._append(x.to(extra.dtype) + extra, positions), h, w)
        if step == len(steps) - 1:
            for segs in self.segments:
                segs.append(DiscreteImage(schedule))
            self._whole.clear()
        return hidden

    def text_step(self, ids: Tensor) -> Tensor:
        """Append one token per row (int64 [batch]); returns their hidden states [batch, 1, dim]."""
        model = self.model
        positions, extra = self._slice(TextSpan(1), 0, 1)
        x = model.embed_tokens(ids.to(self.valid.device))[:, None] + extra
        hidden = self._append(x, positions)
        for segs in self.segments:
            if segs and isinstance(segs[-1], TextSpan):
                segs[-1] = TextSpan(segs[-1].length + 1)
            else:
                segs.append(TextSpan(1))
        self.last = hidden
        return hidden


def _length(segment) -> int:
    return SequenceLayout((segment,)).length


@attrs.frozen(eq=False)
class ImageGeneration:
    """``codes``: int64 [batch, h_k, w_k] per step; ``logits``: the conditional rows' float32 code
    logits [batch, h_k·w_k, codes] per step before guidance; ``log_probs``: float32 [batch, h_k, w_k]
    per step, each sampled code's log-probability under ``ImageSampling.policy`` (each only when
    asked for)."""

    codes: list[Tensor]
    logits: list[Tensor] | None = None
    log_probs: list[Tensor] | None = None


@torch.no_grad()
def generate_image_codes(
    model: NextFlow,
    prompts: Sequence[Example],
    schedule: ScaleSchedule,
    *,
    uncond: Sequence[Example] | None = None,
    sampling: ImageSampling | None = None,
    generator: torch.Generator | None = None,
    keep_logits: bool = False,
    keep_log_probs: bool = False,
    progress: bool = False,
    on_forward: Callable[[str], None] | None = None,
    given: Sequence[Tensor] = (),
) -> ImageGeneration:
    """One image per prompt, scale by scale over a KV cache (module docstring). ``uncond``: one
    unconditional prompt per prompt, needed when ``sampling.cfg`` guides any scale. ``on_forward``
    is called with ``"prompt"`` after the prefill and ``"scale k"`` once scale k is sampled (the
    latency harness times the steps with it). ``given``: int64 [batch, h_k, w_k] codes of the first
    ``len(given)`` scales (e.g. a real image's coarse scales), used instead of sampling them; the
    model still runs those scales, so their ``logits`` / ``log_probs`` score the given codes."""
    sampling = sampling or ImageSampling()
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(f"schedule must be a ScaleSchedule, got {type(schedule).__name__}")
    steps = tuple(schedule.steps)
    sampling.check(len(steps))
    given = _check_given(given, steps, len(prompts), model.config.vocabulary.codebook_size)
    _check_ratio(steps[-1])
    if len(steps) > model.config.max_scales:
        raise ValueError(
            f"the schedule has {len(steps)} scales but the model's scale embedding has max_scales = "
            f"{model.config.max_scales}; use a schedule with at most that many steps"
        )
    guided = sampling.guided(len(steps))
    prompts = list(prompts)
    if guided:
        if uncond is None or len(uncond) != len(prompts):
            raise ValueError(
                f"ImageSampling.cfg guides but uncond has {0 if uncond is None else len(uncond)} prompts "
                f"for {len(prompts)} prompts; pass one unconditional prompt per prompt (or cfg=1.0)"
            )
        rows = prompts + list(uncond)
    else:
        rows = prompts
    batch = len(prompts)
    total = sum(h * w for h, w in steps)
    session = Session(model, rows, extra=total)
    mark = on_forward or (lambda name: None)
    mark("prompt")
    codes: list[Tensor] = []
    kept: list[Tensor] = []
    scores: list[Tensor] = []
    for k, (h, w) in enumerate(tqdm(steps, desc="scales", disable=not progress, leave=False)):
        logits = model.code_logits(session.image_step(k, schedule, codes))
        cond = logits[:batch]
        un = [logits[batch:].flatten(0, 1)] if guided else []
        flat = cond.flatten(0, 1)
        if k < len(given):
            sampled = given[k].to(flat.device)
        else:
            sampled = sampling.sampler(k, len(steps)).sample(
                flat, un, step=k, num_steps=len(steps), generator=generator
            ).view(batch, h, w)
        codes.append(torch.cat([sampled, sampled]) if guided else sampled)
        mark(f"scale {k}")
        if keep_logits:
            kept.append(cond)
        if keep_log_probs:
            dist = sampling.policy(k, len(steps)).log_probs(flat, un, step=k, num_steps=len(steps))
            scores.append(dist.gather(1, sampled.reshape(-1, 1)).view(batch, h, w))
    return ImageGeneration([c[:batch] for c in codes], kept if keep_logits else None,
                           scores if keep_log_probs else None)


def _check_given(given: object, steps: tuple, batch: int, codebook_size: int) -> list[Tensor]:
    if isinstance(given, Tensor) or not isinstance(given, Sequence):
        raise TypeError(f"given must be a sequence of code grids, one per scale, got {type(given).__name__}")
    given = list(given)
    if len(given) > len(steps):
        raise ValueError(
            f"given holds {len(given)} scales but the schedule has {len(steps)}; give at most that many"
        )
    for k, (codes, (h, w)) in enumerate(zip(given, steps, strict=False)):
        if not isinstance(codes, Tensor) or codes.dtype != torch.int64 or tuple(codes.shape) != (batch, h, w):
            got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(
                f"given[{k}] must be int64 codes of shape {(batch, h, w)} (one grid per prompt at scale {k}),"
                f" got {got}"
            )
        if not 0 <= int(codes.min()) <= int(codes.max()) < codebook_size:
            raise ValueError(
                f"given[{k}] holds codes outside [0, {codebook_size}); pass the tokenizer's code indices, "
                "not vocabulary ids"
            )
    return given


def _check_ratio(grid: tuple[int, int]) -> None:
    h, w = grid
    if not 0.25 <= h / w <= 4.0:
        raise ValueError(
            f"the schedule ends on a {h}x{w} grid, aspect ratio {h / w:.3g} (height / width), outside "
            "1:4 .. 4:1 (Table 14); pick a ratio in [0.25, 4]"
        )


@torch.no_grad()
def generate_text(
    model: NextFlow,
    prompts: Sequence[Example],
    *,
    sampling: TextSampling | None = None,
    stop: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue every prompt with text until one of ``stop`` ids (included) or ``max_tokens``;
    neither image codes nor ``<boi>`` are sampled here (``interleave`` draws images)."""
    sampling = sampling or TextSampling()
    session = Session(model, prompts, extra=sampling.max_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(sampling.max_tokens):
        ids = sampling.sample(_text_logits(model, session.last[:, 0], allow_boi=False), generator)
        for b, token in enumerate(ids.tolist()):
            if not done[b]:
                out[b].append(token)
                done[b] = token in stop
        if bool(done.all()):
            break
        session.text_step(ids)
    return out


def _text_logits(model: NextFlow, hidden: Tensor, *, allow_boi: bool = True) -> Tensor:
    """Logits of the next text token: visual codes excluded (and ``<boi>`` unless allowed)."""
    logits = model.logits(hidden)
    lo, hi = model.vocabulary.code_range
    logits[..., lo:hi] = float("-inf")
    if not allow_boi:
        logits[..., model.vocabulary.special_id("<boi>")] = float("-inf")
    return logits


@torch.no_grad()
def interleave(
    model: NextFlow,
    prompt: Example,
    schedule: ScaleSchedule,
    *,
    text: TextSampling | None = None,
    image: ImageSampling | None = None,
    max_images: int = 4,
    generator: torch.Generator | None = None,
) -> list[list[int] | list[Tensor]]:
    """Continue one prompt with alternating text and images: text until the model writes
    ``<boi>``, then an image (no guidance: there is no unconditional branch of a running story),
    ``<eoi>``, text again; stops at ``<eos>``, after ``max_images`` images, or after
    ``text.max_tokens`` text tokens in all. Returns the pieces in order: text id lists and image
    code lists (int64 [1, h_k, w_k] per step)."""
    text = text or TextSampling()
    image = image or ImageSampling()
    image.check(len(schedule.steps))
    if image.guided(len(schedule.steps)):
        raise ValueError("interleave samples images without guidance; pass ImageSampling(cfg=1.0)")
    vocab = model.vocabulary
    boi, eoi = vocab.special_id("<boi>"), vocab.special_id("<eoi>")
    eos = vocab.special_tokens.get("<eos>")
    total = sum(h * w for h, w in schedule.steps)
    session = Session(model, [prompt], extra=text.max_tokens + max_images * (total + 1))
    pieces: list[list[int] | list[Tensor]] = []
    current: list[int] = []
    images = 0
    for _ in range(text.max_tokens):
        token = int(text.sample(_text_logits(model, session.last[:, 0]), generator)[0])
        if token == boi and images < max_images:
            if current:
                pieces.append(current)
                current = []
            codes: list[Tensor] = []
            for k, (h, w) in enumerate(schedule.steps):
                logits = model.code_logits(session.image_step(k, schedule, codes))
                sampler = image.sampler(k, len(schedule.steps))
                codes.append(sampler.sample(logits[0], generator=generator).view(1, h, w))
            pieces.append(codes)
            images += 1
            session.text_step(torch.tensor([eoi]))
            continue
        current.append(token)
        if token == eos:
            break
        session.text_step(torch.tensor([token]))
    if current:
        pieces.append(current)
    return pieces


def image_part(codes: Sequence[Tensor], schedule: ScaleSchedule, index: int = 0) -> Image:
    """Row ``index`` of generated or encoded codes as a context ``Image`` part (no loss)."""
    return Image.of([c[index] for c in codes], schedule, loss=False)
