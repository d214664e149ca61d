"""What the machine withheld from this process: time its threads were
ready to run but waited for a CPU (Linux /proc/self/task/*/schedstat,
second field, ns).

Tests assert behaviour, not speed (rates and latencies are bench/'s). Where
a behaviour is "keeps real time" (a paced playout, a looped slate), a
shared, loaded machine can only make the process late by as much as it
kept it waiting, so the allowed lag is a small fixed tolerance plus that
wait, measured over the same span, rather than a figure tuned on a quiet
machine:

    waited = RunQueueWait()
    ... run the paced thing ...
    assert lag <= 0.25 + waited.seconds()
"""

from __future__ import annotations

import os
from pathlib import Path

_TASKS = Path("/proc/self/task")


def _waits() -> dict[str, int]:
    waits: dict[str, int] = {}
    try:
        tasks = os.listdir(_TASKS)
    except OSError:
        return waits  # not Linux: no allowance beyond the fixed tolerance
    for tid in tasks:
        try:
            fields = (_TASKS / tid / "schedstat").read_text().split()
            waits[tid] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return waits


class RunQueueWait:
    """Seconds this process's threads spent runnable but not running since
    creation (threads started later count from 0; ended ones are lost,
    which only makes the allowance smaller)."""

    def __init__(self) -> None:
        self._start = _waits()

    def seconds(self) -> float:
        now = _waits()
        return sum(max(0, ns - self._start.get(tid, 0)) for tid, ns in now.items()) / 1e9
