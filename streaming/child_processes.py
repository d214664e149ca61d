"""Child processes never outlive the server, even when it is SIGKILLed.

Two mechanisms, because either alone leaves a gap:

- Parent-death signal (Linux prctl(2) PR_SET_PDEATHSIG = SIGKILL), set in
  the child between fork and exec, plus the child in its own process group
  (so a terminal's Ctrl-C reaches the server, which stops its children in
  order, and a stray can be ended with its whole group). The signal fires
  when the *thread* that forked exits, not the process: children are
  spawned from the event loop's thread (asyncio's subprocess_exec forks
  there), never from a worker thread (asyncio.to_thread) that may end.
  The child checks getppid() after prctl: a parent that died before the
  prctl would otherwise go unnoticed.
- A pid file per child in the data directory (`ChildRegistry`), removed
  when the child is reaped. A starting server ends the strays a dead
  predecessor left (a kernel without the signal, a child that re-parented
  itself) so their ports are free before anything binds. A pid is only
  killed when both its start time (/proc/<pid>/stat field 22, clock ticks
  since boot) matches the file, so a recycled pid is never killed, and the
  server that wrote the file is gone (a second live server sharing the data
  directory keeps its children).

One registry per process, installed by the composition root
(`install()`); `FfmpegProcess` records every child in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc: ctypes.CDLL | None = None


def _prctl() -> Callable[..., int] | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    return getattr(_libc, "prctl", None)


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for subprocess: SIGKILL the child when the forking
    thread ends (PR_SET_PDEATHSIG), and exit at once if the parent is
    already gone. Call in the parent (it resolves libc before the fork)."""
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|PASSPHRASE|CREDENTIAL|^FORUMCAST_", re.IGNORECASE)


def child_environment() -> dict[str, str]:
    """The server's environment without what a child has no use for and
    must not hold: FORUMCAST_* settings (the token secret, the Redis URL)
    and any variable named like a key, secret, token or password (the
    restreams' key_env variables)."""
    return {name: value for name, value in os.environ.items() if not _SECRET_NAME.search(name)}


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (proc(5),
    /proc/<pid>/stat field 22), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the name (field 2) may hold spaces and ')'
    try:
        return int(fields[19])  # field 22, counting from field 3 after the name
    except (IndexError, ValueError):
        return None


def _alive(pid: int, ticks: int | None) -> bool:
    return ticks is not None and start_ticks(pid) == ticks


class ChildRegistry:
    """Pid files of this server's children in `directory` (0700), one
    `<pid>.json` each: {pid, ticks, name, server_pid, server_ticks}."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server_pid = os.getpid()
        self._server_ticks = start_ticks(self._server_pid)

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def record(self, pid: int, name: str) -> None:
        """Note a child just started (a failure to write is logged: the
        parent-death signal still covers it)."""
        entry = {"pid": pid, "ticks": start_ticks(pid), "name": name,
                 "server_pid": self._server_pid, "server_ticks": self._server_ticks}
        try:
            self._prepare()
            path = self.directory / f"{pid}.json"
            temp = path.with_suffix(".tmp")
            temp.write_text(json.dumps(entry))
            os.replace(temp, path)
        except OSError as error:
            logger.warning("ChildRegistry: cannot record child %d (%s): %s", pid, name, error)

    def forget(self, pid: int) -> None:
        """The child was reaped."""
        with contextlib.suppress(OSError):
            (self.directory / f"{pid}.json").unlink()

    def reap_strays(self, timeout: float = 5.0) -> list[int]:
        """End every child recorded by a server that is no longer running
        (SIGKILL to its process group); returns the pids ended. Files of
        children already gone, or whose pid now names another process, are
        just removed."""
        if not self.directory.is_dir():
            return []
        ended: list[int] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                pid, ticks = int(entry["pid"]), entry.get("ticks")
                server_pid, server_ticks = int(entry["server_pid"]), entry.get("server_ticks")
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ChildRegistry: unreadable pid file %s removed", path)
                path.unlink(missing_ok=True)
                continue
            if server_pid != self._server_pid and _alive(server_pid, server_ticks):
                continue  # another live server shares this data directory: its children are its own
            if server_pid == self._server_pid and server_ticks == self._server_ticks:
                continue  # ours (a registry made twice in one process)
            if _alive(pid, ticks):
                logger.warning("ChildRegistry: ending stray %s (pid %d) left by server pid %d",
                               entry.get("name", "?"), pid, server_pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                ended.append(pid)
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        # not our children: init reaps them; wait until the kernel has (their ports are free then)
        while any(start_ticks(pid) is not None and not _zombie(pid) for pid in ended):
            if time.monotonic() > deadline:
                logger.error("ChildRegistry: strays %s still running after SIGKILL", ended)
                break
            time.sleep(0.02)
        return ended


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("Z", "X")


def run_id() -> str:
    """This server run's name for per-run directories: "<pid>-<start ticks>"."""
    return f"{os.getpid()}-{start_ticks(os.getpid())}"


def run_alive(run: str) -> bool:
    """The server run named `run` (a `run_id()`) is still running (its pid
    is alive with the same start time: a recycled pid is not it)."""
    pid, _, ticks = run.partition("-")
    return pid.isdigit() and ticks.isdigit() and start_ticks(int(pid)) == int(ticks)


def remove_dead_runs(parent: Path) -> list[Path]:
    """Remove the per-run directories (named by `run_id()`) under `parent`
    whose server no longer runs: a SIGKILLed run cannot clean up the files
    it kept there (secrets among them). Returns the directories removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        pid, _, ticks = entry.name.partition("-")
        if not (entry.is_dir() and pid.isdigit() and ticks.isdigit()):
            continue
        if run_alive(entry.name):
            continue  # that server still runs
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


_installed: ChildRegistry | None = None


def install(registry: ChildRegistry | None) -> None:
    """Make `registry` the one every FfmpegProcess records in (None: none)."""
    global _installed
    _installed = registry


def installed() -> ChildRegistry | None:
    return _installed
