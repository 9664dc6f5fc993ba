"""The tables ``nx flops`` prints: the paper's NextFlow-vs-MMDiT comparison (Appendix A.2, Fig. 24)
and the real-architecture count of a NextFlow model against a diffusion transformer with the same
layers, overall and scale by scale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nxcore.schedule import nextflow_schedule
from nxcore.schedule.protocol import ScaleSchedule
from nxrecipes.eval.flops import (
    DecoderShape,
    dit_flops,
    nextflow_flops,
    paper_coefficients,
    paper_mmdit_flops,
    paper_nextflow_flops,
    total,
    uniform_schedule,
)

__all__ = ["format_table", "paper_table", "per_scale_table", "real_table"]

LEVELS = (256, 512, 1024)


def _schedules(level: int) -> dict[str, ScaleSchedule]:
    realistic = nextflow_schedule(level=level)
    return {"realistic": realistic, "uniform": uniform_schedule(realistic.grid[0], realistic.num_steps)}


def paper_table(hidden: Sequence[int] = (2048, 4096), *, layers: int = 1, prompt_tokens: int = 100,
                levels: Sequence[int] = LEVELS) -> list[dict[str, Any]]:
    """Eqs. 9-11 for every level, schedule (Table 14's *realistic* steps, Fig. 24's *uniform* ones)
    and width: FLOPs of both models (``layers`` layers; 1 = per layer, as Eq. 11) and their ratios,
    overall, for the h^2 (linear) terms and for the attention terms."""
    rows = []
    for level in levels:
        for name, schedule in _schedules(level).items():
            coef = paper_coefficients(schedule, prompt_tokens)
            tokens = schedule.grid[0] * schedule.grid[1]
            for h in hidden:
                nf = paper_nextflow_flops(schedule, hidden=h, layers=layers, prompt_tokens=prompt_tokens)
                dit = paper_mmdit_flops(tokens, hidden=h, steps=schedule.num_steps, layers=layers)
                rows.append({
                    "level": level, "schedule": name, "steps": schedule.num_steps, "tokens": tokens,
                    "hidden": h, "nextflow_tflop": nf / 1e12, "mmdit_tflop": dit / 1e12, "ratio": dit / nf,
                    "linear_ratio": coef["mmdit"][0] / coef["nextflow"][0],
                    "attention_ratio": coef["mmdit"][1] / coef["nextflow"][1],
                })
    return rows


def _rows(prompt_tokens: int, batch: int, cfg: bool) -> list[int]:
    return [prompt_tokens] * batch + ([0] * batch if cfg else [])


def real_table(config: Any, *, prompt_tokens: int = 100, batch: int = 1, cfg: bool = True,
               levels: Sequence[int] = LEVELS) -> list[dict[str, Any]]:
    """``config``'s generation FLOPs per image at every 1:1 level (CFG doubles the rows), by kind,
    next to a diffusion transformer with the same layers, steps, prompt and CFG."""
    shape = DecoderShape.of(config)
    rows = []
    for level in levels:
        schedule = nextflow_schedule(level=level)
        nf = total(nextflow_flops(shape, schedule, _rows(prompt_tokens, batch, cfg)))
        tokens = schedule.grid[0] * schedule.grid[1]
        dit = dit_flops(shape, tokens, steps=schedule.num_steps, prompt_tokens=prompt_tokens,
                        rows=batch * (2 if cfg else 1))
        rows.append({
            "level": level, "steps": schedule.num_steps, "tokens": schedule.total_tokens,
            **{f"{k}_tflop": v / 1e12 / batch for k, v in nf.as_dict().items()},
            "dit_tflop": dit.total / 1e12 / batch, "dit_ratio": dit.total / nf.total,
        })
    return rows


def per_scale_table(config: Any, schedule: ScaleSchedule, *, prompt_tokens: int = 100, batch: int = 1,
                    cfg: bool = True) -> list[dict[str, Any]]:
    """One row per forward of generation (prefill, then each scale): tokens, slots attended,
    GFLOPs by kind and the share of the total."""
    steps = nextflow_flops(DecoderShape.of(config), schedule, _rows(prompt_tokens, batch, cfg))
    whole = total(steps).total
    return [{"forward": s.name, "new_tokens": s.new_tokens, "attended": s.attended,
             **{f"{k}_gflop": v / 1e9 for k, v in s.flops.as_dict().items()},
             "share": s.flops.total / whole} for s in steps]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (same keys), numbers to 4 significant digits."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
