"""Self-correction encode (NextFlow §2.2 "Self Correction with Residual Features").

Shapes:
    batch       images
    h, w        the grid of one schedule step
    topk        the k nearest codewords searched per cell

What the paper says, and what is implemented:

- "Rather than deterministically selecting the closest codebook index during encoding, we sample
  from a multinomial distribution over the top-k nearest indices, while the model continues to
  predict the top-1 index as the target." → each selected cell's *input* index is drawn from its k
  nearest codewords (the top-1 included: it is one of the "top-k nearest indices"); the *target* is
  the top-1. The paper does not give the multinomial's probabilities: ``temperature=None`` (default)
  draws uniformly over the k; a float τ draws with probabilities ∝ exp(−d_i / τ) over the k joint
  distances d_i. ``exclude_top1=True`` draws from ranks 2..k only, so every selected cell changes.
- "applying correction with probability p = 1.0 to 60% of visual tokens per scale", "(100%
  samples, 60% tokens per scale)", "Using self-correction on 100% training samples and 60% tokens per
  scale" → ``p`` is the probability that an *image* (a training sample) is corrupted, drawn once per
  image for all its steps; ``fraction`` is the share of the cells of every step that are selected in a
  corrupted image: exactly ``floor(fraction·h·w + 0.5)`` cells (round half up), uniformly without
  replacement. Defaults p = 1.0, fraction = 0.6. ``k`` is not given by the paper (default 8).
- "This trains the model to correct suboptimal choices from previous scales" + "residual features"
  → the encode runs scale by scale and the residual for later steps subtracts the codewords of the
  *sampled* (input) indices, so later steps see the error and their targets correct it. At every
  step ``targets[s]`` is the clean top-1 (the nearest codeword, joint distance, ties to the lowest
  index) of the residual left after the *inputs* of steps < s, and ``inputs[s]`` equals it except on
  selected cells. With ``fraction = 0`` or ``p = 0`` both equal ``tokenizer.encode``.
- The transformer's inputs come from the corrupted indices: ``tokenizer.next_scale_inputs(inputs,
  schedule)`` (residual features by default: each step's own codewords, no accumulation), and it is
  trained to predict ``targets[s + 1]`` from them (the inputs of the last step feed nothing).

Deterministic under a ``generator`` (every draw is made on the generator's device, CPU by default,
in a fixed order: the per-image coin, then per step the cell order and the top-k draw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.multiscale.quantizer import CodebookStream, as_steps, contribution, resize
from nxkernels.vq import vq_nearest

__all__ = ["SelfCorrection", "selected_count", "self_correction_encode"]


@attrs.frozen
class SelfCorrection:
    """``inputs``: int64 [batch, h, w] per step, the indices fed to the model (sampled on selected
    cells); ``targets``: int64 [batch, h, w] per step, the clean top-1 of the same residual state;
    ``selected``: bool [batch, h, w] per step, the cells whose input was sampled; ``corrupted``: bool
    [batch], the images drawn (probability ``p``)."""

    inputs: list[Tensor]
    targets: list[Tensor]
    selected: list[Tensor]
    corrupted: Tensor


def selected_count(fraction: float, h: int, w: int) -> int:
    """Cells selected on an (h, w) step of a corrupted image: ``floor(fraction·h·w + 0.5)``."""
    return min(h * w, math.floor(fraction * h * w + 0.5))


def _view(tokenizer) -> tuple[object, Sequence[CodebookStream], str, str, bool]:
    """(features of images as a list of maps, streams, down, up, normalize) of a supported tokenizer."""
    from nxcore.tokenizer.dual.tokenizer import DualCodebookTokenizer
    from nxcore.tokenizer.multiscale.tokenizer import MultiScaleVQTokenizer

    if isinstance(tokenizer, DualCodebookTokenizer):
        c = tokenizer.config
        return (lambda x: list(tokenizer.features(x))), tokenizer.streams, c.down, c.up, c.normalize
    if isinstance(tokenizer, MultiScaleVQTokenizer):
        q = tokenizer.config.quantizer
        return (lambda x: [tokenizer.features(x)]), tokenizer.quantize.streams, q.down, q.up, q.normalize
    raise TypeError(
        "tokenizer must be a DualCodebookTokenizer or a MultiScaleVQTokenizer, got "
        f"{type(tokenizer).__name__}"
    )


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def self_correction_encode(
    tokenizer,
    images: Tensor,
    schedule: ScaleSchedule,
    *,
    p: float = 1.0,
    fraction: float = 0.6,
    k: int = 8,
    temperature: float | None = None,
    exclude_top1: bool = False,
    generator: torch.Generator | None = None,
) -> SelfCorrection:
    """Encode ``images`` with self-correction (module docstring for the exact semantics).

    ``tokenizer``: a ``DualCodebookTokenizer`` (joint search over both halves) or a
    ``MultiScaleVQTokenizer``; ``p``: probability an image is corrupted; ``fraction``: share of each
    step's cells selected in a corrupted image; ``k``: nearest codewords to draw from (1 <= k <=
    codebook_size); ``temperature``: None for uniform over the k, τ > 0 for ∝ exp(−d/τ);
    ``exclude_top1``: draw from ranks 2..k (needs k >= 2). No gradients.
    """
    features_of, streams, down, up, normalize = _view(tokenizer)
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(f"schedule must be a ScaleSchedule, got {type(schedule).__name__}")
    tokenizer.check_images(images, schedule)
    p = _number("p", p, 0.0, 1.0)
    fraction = _number("fraction", fraction, 0.0, 1.0)
    size = tokenizer.codebook_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise ValueError(f"k must be an int in [1, {size}] (the codebook size), got {k!r}")
    if exclude_top1 and k < 2:
        raise ValueError(f"exclude_top1=True needs k >= 2 (ranks 2..k to draw from), got k = {k}")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
        or not math.isfinite(temperature) or temperature <= 0
    ):
        raise ValueError(
            f"temperature must be None (uniform over the top-k) or a number > 0, got {temperature!r}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    steps = as_steps(schedule)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    device, batch = images.device, images.shape[0]
    low = 1 if exclude_top1 else 0

    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    selected: list[Tensor] = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        rest = [f.float() for f in features_of(images)]
        corrupted = (torch.rand(batch, generator=generator, device=rng_device) < p).to(device)
        for s, (h, w) in enumerate(steps):
            rows = [resize(r, (h, w), down).permute(0, 2, 3, 1).reshape(-1, r.shape[1]) for r in rest]
            found = _search(rows, streams, normalize, k)
            idx = found.indices.reshape(batch, h * w, k)
            dist = found.distances.reshape(batch, h * w, k)
            target = idx[..., 0]
            m = selected_count(fraction, h, w)
            order = torch.rand(batch, h * w, generator=generator, device=rng_device).argsort(dim=1)
            chosen = torch.zeros(batch, h * w, dtype=torch.bool, device=rng_device)
            chosen.scatter_(1, order[:, :m], True)
            chosen = chosen.to(device) & corrupted[:, None]
            if temperature is None:
                rank = torch.randint(low, k, (batch, h * w), generator=generator, device=rng_device)
            else:
                logits = -dist[..., low:].to(rng_device) / temperature
                probs = torch.softmax(logits - logits.amax(-1, keepdim=True), dim=-1)
                draw = torch.multinomial(probs.reshape(-1, k - low), 1, generator=generator)
                rank = draw.reshape(batch, h * w) + low
            sampled = idx.gather(-1, rank.to(device)[..., None])[..., 0]
            given = torch.where(chosen, sampled, target).reshape(batch, h, w)
            for i, stream in enumerate(streams):
                rest[i] = rest[i] - contribution(stream, given, s, steps, up=up)
            inputs.append(given)
            targets.append(target.reshape(batch, h, w))
            selected.append(chosen.reshape(batch, h, w))
    return SelfCorrection(inputs, targets, selected, corrupted)


def _search(rows: list[Tensor], streams: Sequence[CodebookStream], normalize: bool, k: int):
    first = streams[0]
    if len(streams) == 1:
        found = vq_nearest(rows[0], first.codebook, w_sem=first.weight, normalize=normalize, k=k)
    else:
        second = streams[1]
        found = vq_nearest(
            rows[0], first.codebook, rows[1], second.codebook, w_sem=first.weight, w_pix=second.weight,
            normalize=normalize, k=k,
        )
    if k == 1:  # vq_nearest drops the topk dimension for k = 1
        return type(found)(found.indices[..., None], found.distances[..., None])
    return found
