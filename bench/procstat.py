"""CPU time of a process and its descendants, read from /proc (Linux)."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (all its threads), in seconds; zeros if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU of the process plus its live descendants (e.g. ffmpeg children)."""
    splits = [cpu_split(p) for p in (pid, *descendants(pid))]
    return sum(u for u, _ in splits), sum(s for _, s in splits)


def tree_cpu_seconds(pid: int) -> float:
    return sum(tree_cpu_split(pid))
