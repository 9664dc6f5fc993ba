"""Hypothesis strategies for nx objects (requires ``hypothesis``: ``pip install nx[dev]``).

    from hypothesis import given
    from nxcore.testing import strategies as nxst

    @given(nxst.layouts())
    def test_my_encoder(layout): ...
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from nxcore.layout import ContinuousImage, DiscreteImage, SequenceLayout, TextSpan
from nxcore.schedule import ScaleSchedule, Schedule

__all__ = ["grids", "layouts", "named_tensors", "schedules", "token_grids"]


def grids(max_side: int = 16) -> st.SearchStrategy[tuple[int, int]]:
    """(h, w) with 1 <= h, w <= max_side."""
    side = st.integers(1, max_side)
    return st.tuples(side, side)


@st.composite
def _monotone(draw, final: int, steps: int) -> list[int]:
    values = draw(st.lists(st.integers(1, final), min_size=steps - 1, max_size=steps - 1))
    return sorted(values) + [final]


@st.composite
def schedules(draw, max_steps: int = 6, max_side: int = 16) -> Schedule:
    """Valid schedules: 1..max_steps steps, never shrinking, final grid up to max_side."""
    gh, gw = draw(grids(max_side))
    k = draw(st.integers(1, max_steps))
    hs = draw(_monotone(gh, k))
    ws = draw(_monotone(gw, k))
    return Schedule(steps=tuple(zip(hs, ws, strict=True)))


@st.composite
def layouts(
    draw,
    max_segments: int = 4,
    max_text: int = 6,
    max_steps: int = 4,
    max_side: int = 6,
    discrete: bool = True,
    continuous: bool = True,
) -> SequenceLayout:
    """Interleaved layouts of text spans and (discrete and/or continuous) images."""
    kinds = ["text"] + (["discrete"] if discrete else []) + (["continuous"] if continuous else [])
    n = draw(st.integers(1, max_segments))
    segments = []
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind == "text":
            segments.append(TextSpan(draw(st.integers(1, max_text))))
        elif kind == "discrete":
            segments.append(DiscreteImage(draw(schedules(max_steps, max_side))))
        else:
            h, w = draw(grids(max_side))
            segments.append(ContinuousImage(h, w))
    return SequenceLayout(tuple(segments))


@st.composite
def token_grids(
    draw, schedule: ScaleSchedule, vocab_size: int, batch: int = 1
) -> list[torch.Tensor]:
    """One int64 code grid [batch, h_k, w_k] per step of ``schedule``, values in [0, vocab_size)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return [torch.randint(0, vocab_size, (batch, h, w), generator=gen) for h, w in schedule.steps]


@st.composite
def named_tensors(
    draw,
    *specs: str,
    sizes: dict[str, int] | None = None,
    max_size: int = 8,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """Random tensors for shape specs like ``"batch seq dim"``; equal names get equal sizes.

    Sizes not fixed in ``sizes`` are drawn from [1, max_size] (so length-1 dims are covered);
    values are N(0, scale^2), from a seed hypothesis draws (so failures shrink and replay).
    """
    known = dict(sizes or {})
    for spec in specs:
        for name in spec.split():
            if name not in known:
                known[name] = draw(st.integers(1, max_size), label=name)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    out = []
    for spec in specs:
        shape = tuple(known[name] for name in spec.split())
        out.append((torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(dtype))
    return tuple(out)
