"""Scale schedules for next-scale prediction."""

from nxcore.schedule.protocol import ScaleSchedule

__all__ = ["ScaleSchedule"]
