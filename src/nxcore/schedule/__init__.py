"""Scale schedules for next-scale prediction: the contract and its reference implementations."""

from nxcore.schedule.derived import derived_schedule
from nxcore.schedule.nextflow import (
    NEXTFLOW_LEVELS,
    nearest_nextflow_ratio,
    nextflow_schedule,
    nextflow_schedule_for_size,
)
from nxcore.schedule.presets import infinity_schedule, var_schedule
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.schedule.schedule import Schedule

__all__ = [
    "NEXTFLOW_LEVELS",
    "ScaleSchedule",
    "Schedule",
    "derived_schedule",
    "infinity_schedule",
    "nearest_nextflow_ratio",
    "nextflow_schedule",
    "nextflow_schedule_for_size",
    "var_schedule",
]
