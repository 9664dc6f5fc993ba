"""FLOPs of image generation: the NextFlow paper's analytic comparison (Appendix A.2, Eqs. 6-11)
and a count of the real architecture, checked against ``torch.utils.flop_counter``.

A multiply-add is 2 FLOPs. Element-wise work (norms, RoPE, softmax, activations, sampling, the
next-scale resampling) is not counted, as in the paper and in ``FlopCounterMode``.

**The paper** counts one layer as ``12 s_q h^2 + 4 s_q s_kv h`` (Eq. 8: four h x h projections,
an MLP counted as ``4 s_q h^2``, and QK^T + AV). NextFlow (Eq. 10) prefills a ``P``-token prompt
(``s_q = s_kv = P``), then decodes scale t with ``s_q = n_t`` new tokens over ``s_kv = P + n_1 + ...
+ n_t`` cached ones; MMDiT (Eq. 9) runs T steps over the full ``s``-token grid. With the 1:1
1024-level schedule of Table 14 and P = 100 this gives exactly the paper's coefficients, per layer,
``122,208 h^2 + 256,215,912 h`` and ``884,736 h^2 + 1,207,959,552 h`` (``paper_coefficients``).
Note: Eq. 11's 6.18e12 / 1.04e12 = 5.96 is the value at h = 2048, not at the h = 4096 the text
names (there the ratio is 6.38).

**The real architecture** (``DecoderShape``: GQA widths, SwiGLU width, the head over the visual
codes, the scale-length input projection) counts what ``generate_image_codes`` executes for a
list of rows (with CFG: the conditional rows, then the unconditional ones): the prefill runs
every row at the padded prompt length, each scale attends over every slot filled so far, and the
head scores only the visual codes (``NextFlow.code_logits``). ``counted_flops`` runs a function
under ``FlopCounterMode`` with the formula it lacks for CPU SDPA registered, and
``cross_check`` compares the two on a small random model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from nxcore.config import integer
from nxcore.schedule import Schedule
from nxcore.schedule.protocol import ScaleSchedule

__all__ = [
    "DecoderShape",
    "Flops",
    "StepFlops",
    "counted_flops",
    "cpu_sdpa_formulas",
    "cross_check",
    "dit_flops",
    "nextflow_flops",
    "paper_coefficients",
    "paper_layer_flops",
    "paper_mmdit_flops",
    "paper_nextflow_flops",
    "total",
    "uniform_schedule",
]


# --- the paper (Appendix A.2) -------------------------------------------------------------------


def paper_layer_flops(s_q: int, s_kv: int, hidden: int) -> int:
    """Eq. 8: ``12 s_q h^2 + 4 s_q s_kv h`` (Eq. 6 attention + Eq. 7 MLP)."""
    return 12 * s_q * hidden**2 + 4 * s_q * s_kv * hidden


def _nextflow_lengths(schedule: ScaleSchedule, prompt_tokens: int) -> list[tuple[int, int]]:
    """(s_q, s_kv) of every forward: the prompt prefill (when there is one), then each scale."""
    _check_count("prompt_tokens", prompt_tokens, at_least=0)
    steps = [(prompt_tokens, prompt_tokens)] if prompt_tokens else []
    seen = prompt_tokens
    for n in schedule.token_counts:
        seen += n
        steps.append((n, seen))
    return steps


def paper_coefficients(schedule: ScaleSchedule, prompt_tokens: int = 100) -> dict[str, tuple[int, int]]:
    """Per-layer ``(a, b)`` with FLOPs = ``a h^2 + b h`` for NextFlow (Eq. 10) and for MMDiT (Eq. 9)
    over the same grid and number of steps."""
    lengths = _nextflow_lengths(schedule, prompt_tokens)
    s, steps = schedule.grid[0] * schedule.grid[1], schedule.num_steps
    return {
        "nextflow": (12 * sum(q for q, _ in lengths), 4 * sum(q * kv for q, kv in lengths)),
        "mmdit": (12 * steps * s, 4 * steps * s * s),
    }


def paper_nextflow_flops(schedule: ScaleSchedule, *, hidden: int, layers: int = 1, prompt_tokens: int = 100
                         ) -> int:
    """Eq. 10: ``sum_t L (12 s_q h^2 + 4 s_q s_kv h)`` over the prompt prefill and every scale."""
    _check_count("hidden", hidden)
    _check_count("layers", layers)
    lengths = _nextflow_lengths(schedule, prompt_tokens)
    return layers * sum(paper_layer_flops(q, kv, hidden) for q, kv in lengths)


def paper_mmdit_flops(tokens: int, *, hidden: int, steps: int = 18, layers: int = 1) -> int:
    """Eq. 9: ``T L (12 s h^2 + 4 s^2 h)``, a fixed ``s``-token sequence at every one of T steps."""
    for name, value in (("tokens", tokens), ("hidden", hidden), ("steps", steps), ("layers", layers)):
        _check_count(name, value)
    return steps * layers * paper_layer_flops(tokens, tokens, hidden)


def uniform_schedule(side: int, num_steps: int) -> Schedule:
    """Fig. 24's *uniform steps*: square grids whose side grows linearly, ``round(side t / T)``
    for t = 1..T (at least 1)."""
    _check_count("side", side)
    _check_count("num_steps", num_steps)
    sides = [max(1, round(side * t / num_steps)) for t in range(1, num_steps + 1)]
    return Schedule(tuple((s, s) for s in sides))


# --- the real architecture ----------------------------------------------------------------------


@attrs.frozen
class Flops:
    """FLOPs by kind: ``projections`` (q, k, v, o), ``attention`` (QK^T and AV), ``mlp`` (SwiGLU),
    ``head`` (logits), ``inputs`` (the per-token input projection)."""

    projections: int = 0
    attention: int = 0
    mlp: int = 0
    head: int = 0
    inputs: int = 0

    @property
    def total(self) -> int:
        return self.projections + self.attention + self.mlp + self.head + self.inputs

    @property
    def linear(self) -> int:
        """Everything that scales with the new tokens only (all but attention)."""
        return self.total - self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(**{k: getattr(self, k) + getattr(other, k) for k in attrs.fields_dict(Flops)})

    def as_dict(self) -> dict[str, int]:
        return {**attrs.asdict(self), "total": self.total}


@attrs.frozen
class StepFlops:
    """One forward of generation: ``name`` ("prompt" or "scale k"), its new tokens per row, the
    slots attended per row, and its FLOPs over all rows."""

    name: str
    new_tokens: int
    attended: int
    flops: Flops


@attrs.frozen(kw_only=True)
class DecoderShape:
    """The widths that set a decoder's FLOPs. ``logits``: ids the head scores per generated image
    token (the codebook); ``input_proj``: width of a per-token input projection (NextFlow's
    scale-length embedding, ``hidden`` wide; 0 for none)."""

    hidden: int = attrs.field(validator=integer(at_least=1))
    layers: int = attrs.field(validator=integer(at_least=1))
    heads: int = attrs.field(validator=integer(at_least=1))
    kv_heads: int = attrs.field(validator=integer(at_least=1))
    head_dim: int = attrs.field(validator=integer(at_least=1))
    mlp: int = attrs.field(validator=integer(at_least=1))
    logits: int = attrs.field(validator=integer(at_least=0))
    input_proj: int = attrs.field(default=0, validator=integer(at_least=0))

    @classmethod
    def of(cls, config: Any) -> DecoderShape:
        """The shape of a ``NextFlowConfig`` (or a built ``NextFlow``)."""
        config = getattr(config, "config", config)
        layer = getattr(config, "layer", None)
        if layer is None or not hasattr(config, "vocabulary"):
            raise TypeError(f"config must be a NextFlowConfig or a NextFlow, got {type(config).__name__}")
        return cls(hidden=layer.dim, layers=config.num_layers, heads=layer.num_heads,
                   kv_heads=layer.num_kv_heads or layer.num_heads, head_dim=config.head_dim,
                   mlp=layer.hidden, logits=config.vocabulary.codebook_size, input_proj=layer.dim)

    def forward(self, new_tokens: int, attended: int, *, head: bool = True) -> Flops:
        """One row's FLOPs for ``new_tokens`` queries over ``attended`` key/value slots."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = Flops(projections=2 * new_tokens * h * (2 * q + 2 * kv),
                          attention=4 * new_tokens * attended * q,
                          mlp=6 * new_tokens * h * self.mlp)
        return Flops(projections=self.layers * per_layer.projections,
                     attention=self.layers * per_layer.attention, mlp=self.layers * per_layer.mlp,
                     head=2 * new_tokens * h * self.logits if head else 0,
                     inputs=2 * new_tokens * self.input_proj * h)


def _rows(prompt_tokens: Sequence[int]) -> list[int]:
    rows = [prompt_tokens] if isinstance(prompt_tokens, int) else list(prompt_tokens)
    if not rows:
        raise ValueError("prompt_tokens is empty; give one prompt length per row")
    for n in rows:
        _check_count("prompt_tokens", n, at_least=0)
    return rows


def nextflow_flops(shape: DecoderShape, schedule: ScaleSchedule, prompt_tokens: int | Sequence[int]
                   ) -> list[StepFlops]:
    """What ``generate_image_codes`` executes, forward by forward: the prefill, then one forward
    per scale. ``prompt_tokens``: each row's prompt length (with CFG the conditional rows, then
    the unconditional ones, 0 for an empty prompt, which runs as one filler token). Every row runs
    at the padded prompt length; the input projection of a scale runs once per distinct prompt
    length (rows of one layout share it)."""
    lengths = _rows(prompt_tokens)
    rows, layouts = len(lengths), len(set(lengths))
    padded = max(max(lengths), 1)
    per_token = 2 * shape.input_proj * shape.hidden
    prefill = _times(shape.forward(padded, padded, head=False), rows)
    out = [StepFlops("prompt", padded, padded,
                     attrs.evolve(prefill, inputs=sum(max(n, 1) for n in lengths) * per_token))]
    seen = padded
    for k, n in enumerate(schedule.token_counts):
        seen += n
        step = _times(shape.forward(n, seen), rows)
        out.append(StepFlops(f"scale {k}", n, seen, attrs.evolve(step, inputs=layouts * n * per_token)))
    return out


def _times(flops: Flops, factor: int) -> Flops:
    return Flops(**{key: factor * value for key, value in attrs.asdict(flops).items()})


def dit_flops(shape: DecoderShape, tokens: int, *, steps: int, prompt_tokens: int = 0, rows: int = 1
              ) -> Flops:
    """A diffusion transformer with the same layers over a fixed sequence: ``steps`` full
    forwards of ``tokens + prompt_tokens`` tokens per row (no cache, no head, no input projection)."""
    for name, value in (("tokens", tokens), ("steps", steps), ("rows", rows)):
        _check_count(name, value)
    seq = tokens + prompt_tokens
    return _times(attrs.evolve(shape.forward(seq, seq, head=False), inputs=0), steps * rows)


def total(steps: Sequence[StepFlops]) -> Flops:
    out = Flops()
    for step in steps:
        out = out + step.flops
    return out


# --- measuring ----------------------------------------------------------------------------------


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_sdpa_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas ``FlopCounterMode`` lacks: the fused CPU SDPA kernel (it counts only the CUDA
    ones), for its ``custom_mapping``."""
    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def counted_flops(fn: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run ``fn()`` under ``FlopCounterMode`` (CPU SDPA formula added); returns its result and
    the FLOPs per aten op."""
    from torch.utils.flop_counter import FlopCounterMode  # imports triton when installed: not at import

    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_formulas()) as counter:
        result = fn()
    return result, {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def cross_check(config: Any, schedule: ScaleSchedule, *, prompt_tokens: int | Sequence[int] = 12,
                cfg: bool = True, seed: int = 0) -> dict[str, Any]:
    """Generate one image per prompt (``prompt_tokens``: their lengths) with a random model of
    ``config`` (a ``NextFlowConfig``) under ``counted_flops`` and compare with ``nextflow_flops``:
    ``{"analytic", "counted", "by_op"}``."""
    from nxrecipes.nextflow.generate import ImageSampling, generate_image_codes
    from nxrecipes.nextflow.sequence import Example, Text

    torch.manual_seed(seed)
    model = config.build().eval()
    lengths = _rows(prompt_tokens)
    text = config.vocabulary.text_size
    prompts = [Example([Text(torch.randint(0, text, (n,)).tolist())]) if n else Example() for n in lengths]
    sampling = ImageSampling(cfg=3.0 if cfg else 1.0)
    uncond = [Example()] * len(prompts) if cfg else None

    def run() -> Any:
        return generate_image_codes(model, prompts, schedule, uncond=uncond, sampling=sampling,
                                    generator=torch.Generator().manual_seed(seed))

    _, by_op = counted_flops(run)
    rows = lengths + ([0] * len(lengths) if cfg else [])
    analytic = total(nextflow_flops(DecoderShape.of(config), schedule, rows)).total
    return {"analytic": analytic, "counted": sum(by_op.values()), "by_op": by_op}


def _check_count(name: str, value: object, at_least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
        raise ValueError(f"{name} must be an int >= {at_least}, got {value!r}; pass a whole count")
