"""What a series is (``SeriesKind``) and what work a completed series gets (``JobKind``).

The values are stored: job kinds in the index's ``jobs`` table, series kinds in the
configuration's ``[[classify]]`` rules and in logs. Keep them stable.
"""

from __future__ import annotations

from enum import StrEnum


class SeriesKind(StrEnum):
    """The classification of a stored series (``classify``)."""

    T2 = "t2"  # T2-prepared multi-echo: quantified
    PERFUSION = "perfusion"  # first-pass perfusion: quantified
    PREBOLUS = "prebolus"  # low-dose pre-bolus: the arterial input of its study's perfusion job
    ASL = "asl"  # arterial spin labelling: stored and served
    OTHER = "other"  # anything else: stored and served


class JobKind(StrEnum):
    """The work a completed series gets; one handler per kind (``processing.job_handlers``)."""

    FORWARD = "forward"  # send the series unchanged to ``routing.forward_series_to``
    T2 = "t2"
    PERFUSION = "perfusion"


# the series kinds that are quantified, and the job that does it
QUANTIFIED: dict[SeriesKind, JobKind] = {SeriesKind.T2: JobKind.T2, SeriesKind.PERFUSION: JobKind.PERFUSION}
