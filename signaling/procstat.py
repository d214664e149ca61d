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


# Linux with CONFIG_PROC_CHILDREN lists each thread's children: a walk of one
# tree reads a few files, not every process's stat (3 ms with ~100 processes)
_HAS_CHILDREN_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        except OSError:
            continue  # the thread ended
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, theirs...)."""
    children_of = _children if _HAS_CHILDREN_LISTS else _children_table().get
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()) or []:
            found.append(child)
            todo.append(child)
    return found


def _children_table() -> dict[int, list[int]]:
    """Parent pid -> its children, from every process's stat (the slow way)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _with_reaped(pid: int) -> tuple[float, float]:
    """(utime + cutime, stime + cstime) in seconds: the process and its
    children it has already waited for (stat(5) fields 14-17); zeros if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[13])) / _TICK, (int(fields[12]) + int(fields[14])) / _TICK


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU of the process and every descendant (e.g. ffmpeg
    children): the live ones, and the ones already reaped (their time moved
    to their parent's cutime/cstime when it waited for them: an ffmpeg that
    ended between two readings still counts, and the sum never goes back)."""
    splits = [_with_reaped(p) for p in (pid, *descendants(pid))]
    return sum(u for u, _ in splits), sum(s for _, s in splits)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process tree (see tree_cpu_split)."""
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
