"""Progressive-resolution training as data: a curriculum is a list of stages by starting step.

NextFlow pre-trains images at the 256 level (12 scales of a Table 14 row) first, then continues at
512 (16 scales) and finally 1024 (18 scales)::

    curriculum = nextflow_curriculum(steps_256=100_000, steps_512=50_000)
    stage = curriculum.stage_at(step)       # Stage(name='512', start_step=100000, level=512, ...)
    schedule = nextflow_schedule(ratio, level=stage.level)

The loop does not read the curriculum; the data source (or the step function) asks it which stage
a step belongs to. Both are configs: a recipe config can hold one and round-trip it through JSON.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import attrs

from nxcore.config import Config, integer
from nxcore.schedule import NEXTFLOW_LEVELS

__all__ = ["Curriculum", "Stage", "nextflow_curriculum"]


def _name(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Stage.name = {value!r} is not allowed; expected a non-empty string")


@attrs.frozen
class Stage(Config):
    """From update ``start_step`` on, train images at ``level`` with their first ``num_scales`` scales."""

    name: str = attrs.field(validator=_name)
    start_step: int = attrs.field(validator=integer(at_least=0))
    level: int = attrs.field(validator=integer(at_least=1))
    num_scales: int = attrs.field(validator=integer(at_least=1))


def _stages(value: Any) -> tuple[Stage, ...]:
    if isinstance(value, Stage) or not isinstance(value, list | tuple):
        raise TypeError(f"Curriculum.stages must be a list or tuple of Stage, got {value!r}")
    return tuple(value)


def _check_stages(instance: Any, attribute: attrs.Attribute, stages: tuple[Stage, ...]) -> None:
    if not stages:
        raise ValueError("Curriculum.stages is empty; give at least one Stage starting at step 0")
    for stage in stages:
        if not isinstance(stage, Stage):
            raise TypeError(f"Curriculum.stages holds {stage!r}; every entry must be a Stage")
    if stages[0].start_step != 0:
        raise ValueError(
            f"the first stage {stages[0].name!r} starts at step {stages[0].start_step}; the first "
            "stage must start at step 0 so every step has a stage"
        )
    for before, after in zip(stages, stages[1:], strict=False):
        if after.start_step <= before.start_step:
            raise ValueError(
                f"stage {after.name!r} starts at step {after.start_step}, not after stage "
                f"{before.name!r} (step {before.start_step}); order stages by strictly increasing "
                "start_step"
            )
    names = [s.name for s in stages]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"stage names must be unique; repeated: {repeated}")


@attrs.frozen
class Curriculum(Config):
    """Stages ordered by ``start_step``, the first at step 0; each lasts until the next starts."""

    stages: tuple[Stage, ...] = attrs.field(converter=_stages, validator=_check_stages)

    def stage_at(self, step: int) -> Stage:
        """The stage that update ``step`` (0-based) belongs to; the last one lasts forever."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step = {step!r} must be an int >= 0")
        starts = [s.start_step for s in self.stages]
        return self.stages[bisect.bisect_right(starts, step) - 1]

    def end_of(self, stage: Stage | str) -> int | None:
        """The first step after ``stage`` (the next stage's start); ``None`` for the last stage."""
        name = stage.name if isinstance(stage, Stage) else stage
        for i, s in enumerate(self.stages):
            if s.name == name:
                return self.stages[i + 1].start_step if i + 1 < len(self.stages) else None
        raise ValueError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)


def nextflow_curriculum(steps_256: int, steps_512: int) -> Curriculum:
    """NextFlow's progressive resolution: ``steps_256`` updates at the 256 level (12 scales), then
    ``steps_512`` at 512 (16 scales), then 1024 (18 scales) for the rest of the run."""
    for name, value in (("steps_256", steps_256), ("steps_512", steps_512)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r} must be an int >= 1 (updates spent at that level)")
    starts = {256: 0, 512: steps_256, 1024: steps_256 + steps_512}
    return Curriculum(
        tuple(Stage(str(level), starts[level], level, NEXTFLOW_LEVELS[level]) for level in (256, 512, 1024))
    )
