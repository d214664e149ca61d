"""Whole-machine CPU from /proc/stat: the noise other processes add to a run."""

from __future__ import annotations


def busy_and_total_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user..steal; guest time is already inside user
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    """Average number of busy cores between two samples."""
    total = after[1] - before[1]
    return cores * (after[0] - before[0]) / total if total else 0.0
