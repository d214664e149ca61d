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


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this machine, from
    /proc/net/tcp{,6} (state 0A = LISTEN) and each process's fd links;
    None when none is found or its fds are not readable."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    return int(entry)
        except OSError:
            continue  # gone, or not ours to read
    return None
