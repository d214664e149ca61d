"""One ffmpeg child per object, and a supervisor that restarts it.

`FfmpegProcess` owns exactly one ffmpeg child: it starts it, drains its
stderr into a bounded ring of the last lines (so the pipe never fills and a
failure can be reported with ffmpeg's own words), reports its exit code and
stops it gracefully ('q' on stdin lets muxers write their trailer, which
matters for recordings), then SIGTERM, then SIGKILL, always reaping it.

`Supervisor` runs one FfmpegProcess after another under a `RestartPolicy`:
restart at once after a run that was stable (an encoder that disconnected
after an hour, a restream whose server dropped us), capped exponential
backoff while it keeps failing fast (a port in use, a server refusing us).
Venue ingest uses it now, restreams later ("restreams that never give up").

Command lines are built by the callers with ffmpeg-python's graph API
(`.get_args()`); this module only adds the binary and the house flags.
Every ffmpeg the server runs goes through `FfmpegProcess` (venue ingest,
slate encode, media normalization): each child gets the parent-death
signal and its own process group and is recorded in the installed
ChildRegistry (child_processes.py), so none outlives a crashed server.
Secrets never go on a command line (any local user can read argv): a
caller passes them in a file or on stdin; the command is still logged
through `mask_secrets`.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import enum
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from config.redaction import mask_secrets
from streaming.child_processes import child_environment, die_with_parent, installed
from streaming.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

# Every child still alive, so an interpreter exit (a loop that was closed
# without stop()) still kills and reaps it instead of leaving an orphan.
_LIVE: dict[int, asyncio.subprocess.Process] = {}


@atexit.register
def _reap_leftovers() -> None:
    for pid, process in list(_LIVE.items()):
        if process.returncode is not None:
            continue
        logger.warning("ffmpeg pid %d still running at exit: killing it", pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # already gone or reaped by asyncio's child watcher
        registry = installed()
        if registry is not None:
            registry.forget(pid)
    _LIVE.clear()


def ffmpeg_binary(configured: str = "") -> str:
    """The ffmpeg to run: the configured one, else imageio-ffmpeg's."""
    if configured:
        return configured
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class FfmpegExit:
    """How one run of an ffmpeg child ended."""

    name: str
    returncode: int
    runtime: float  # seconds the child ran
    stderr_tail: tuple[str, ...]  # its last stderr lines, oldest first
    stopped: bool  # True: we asked it to stop; False: it ended by itself

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        last = self.stderr_tail[-1] if self.stderr_tail else "no output"
        return f"{self.name} exited with {self.returncode} after {self.runtime:.1f}s: {last}"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"  # ended by itself
    STOPPED = "stopped"  # ended because stop() asked


class FfmpegProcess(Lifecycle[_State]):
    """Owns one ffmpeg child.

    `args` are ffmpeg's arguments without the binary (ffmpeg-python's
    `get_args()`). States: new -> running -> exited | stopping -> stopped.
    `on_state(state)` is called on each change; `on_line(line)` for each
    stderr line (it must not block). With `feed_stdin`, ffmpeg reads its
    input from stdin (`-i pipe:0`): the caller writes with `feed()`, and
    stop() closes stdin (end of input) instead of sending 'q'.
    `started` is set once the child is spawned, `exited` once it is reaped.
    """

    _STATE_LOG_LEVEL = logging.DEBUG

    def __init__(
        self,
        args: Sequence[str],
        *,
        name: str = "ffmpeg",
        ffmpeg: str = "",
        loglevel: str = "warning",
        stderr_lines: int = 64,
        on_state: Callable[[str], None] | None = None,
        on_line: Callable[[str], None] | None = None,
        feed_stdin: bool = False,
    ) -> None:
        super().__init__(_State.NEW, f"FfmpegProcess({name})")
        self.name = name
        self.feed_stdin = feed_stdin
        self.command: list[str] = [
            ffmpeg_binary(ffmpeg), "-hide_banner", "-nostats", "-loglevel", loglevel, *args,
        ]
        self._tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        if on_state is not None:
            self.add_state_listener(lambda state: on_state(state.value))
        self._on_line = on_line
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._ended_at = 0.0

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        return tuple(self._tail)

    async def start(self) -> None:
        """Start the child. Raises OSError if the binary cannot run."""
        assert self._process is None, f"FfmpegProcess({self.name}) started twice"
        logger.info("FfmpegProcess(%s) starting: %s", self.name, mask_secrets(" ".join(self.command)))
        # forked from the loop's thread (asyncio does): the parent-death signal
        # fires when the forking thread ends, and this one lives as long as the server
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent(),
            process_group=0,
            env=child_environment(),  # no token secret, Redis URL or restream keys in a child
        )
        _LIVE[self._process.pid] = self._process
        registry = installed()
        if registry is not None:
            registry.record(self._process.pid, self.name)
        self._started_at = time.monotonic()
        self.started.set()
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"{self.name}-stderr")
        if self.stop_requested:
            # stop() ran while we were spawning: nobody wants this child
            self._process.kill()
            await self.exited.wait()
            return
        self._set_state(_State.RUNNING)

    async def _drain_stderr(self) -> None:
        process = self._process
        assert process is not None and process.stderr is not None
        try:
            while True:
                try:
                    raw = await process.stderr.readline()
                except ValueError:  # a line longer than the reader's limit
                    raw = await process.stderr.read(65536)
                if not raw:
                    break
                line = mask_secrets(raw.decode("utf-8", "replace").rstrip())  # the ring is shown in logs and status
                if not line:
                    continue
                self._tail.append(line)
                if self._on_line is not None:
                    try:
                        self._on_line(line)
                    except Exception:
                        logger.exception("FfmpegProcess(%s) line callback failed", self.name)
            await process.wait()
        finally:
            self._ended_at = time.monotonic()
            if process.returncode is not None:  # else (cancelled with the loop) atexit still kills it
                _LIVE.pop(process.pid, None)
                registry = installed()
                if registry is not None:
                    registry.forget(process.pid)
                if self._state is _State.RUNNING:
                    logger.info("FfmpegProcess(%s) exited with %s", self.name, process.returncode)
                    self._set_state(_State.EXITED)
                self.exited.set()

    async def feed(self, data: bytes) -> None:
        """Write input to a `feed_stdin` child, waiting while its pipe is
        full (back-pressure reaches the sender). Raises ConnectionError
        once the child is gone or stopping."""
        process = self._process
        if process is None or process.stdin is None or self._state is not _State.RUNNING:
            raise ConnectionResetError(f"FfmpegProcess({self.name}) is not running")
        process.stdin.write(data)
        await process.stdin.drain()

    async def wait(self) -> int:
        """Wait until the child has ended and been reaped; its exit code."""
        assert self._process is not None, "not started"
        await self.exited.wait()
        assert self._process.returncode is not None
        return self._process.returncode

    def result(self) -> FfmpegExit:
        """How the run ended (call after wait())."""
        returncode = self.returncode if self.returncode is not None else -1
        return FfmpegExit(
            name=self.name,
            returncode=returncode,
            runtime=max(0.0, (self._ended_at or time.monotonic()) - self._started_at),
            stderr_tail=self.stderr_tail,
            stopped=self._state in (_State.STOPPING, _State.STOPPED),
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Quit gracefully ('q'), after `grace` s SIGTERM, then SIGKILL;
        always reaped. Idempotent; concurrent callers await one stop (the
        first caller's `grace` holds)."""
        await self._stop_once(lambda: self._stop(grace))

    async def kill(self) -> None:
        """SIGKILL now and reap: for a child with nothing to finalize that
        may be stuck in a blocking read (ffmpeg's SRT input ignores 'q'
        and SIGTERM there). Counts as stopped."""
        process = self._process
        if process is not None and process.returncode is None and self._state is _State.RUNNING:
            self._set_state(_State.STOPPING)
            try:
                process.kill()
            except ProcessLookupError:
                pass
            await self.exited.wait()
        await self.stop(grace=0.0)

    async def _stop(self, grace: float = 5.0) -> None:
        process = self._process
        if process is None:
            self._set_state(_State.STOPPED)
            return
        if process.returncode is None and self._state is _State.RUNNING:
            self._set_state(_State.STOPPING)
            try:
                assert process.stdin is not None
                if self.feed_stdin:
                    process.stdin.close()  # end of input: ffmpeg flushes and exits
                else:
                    process.stdin.write(b"q")
                    await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, AssertionError):
                pass  # it is already going away
            for sig, timeout in ((None, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, None)):
                if sig is not None and process.returncode is None:
                    try:
                        process.send_signal(sig)
                    except ProcessLookupError:
                        pass
                try:
                    await asyncio.wait_for(asyncio.shield(self.exited.wait()), timeout)
                    break
                except asyncio.TimeoutError:
                    logger.warning("FfmpegProcess(%s) did not end in %.1fs", self.name, timeout)
        await self.exited.wait()
        if self._state is _State.STOPPING:
            self._set_state(_State.STOPPED)
        if process.stdin is not None:
            process.stdin.close()
        if self._stderr_task is not None:
            await self._stderr_task


@dataclass(frozen=True)
class RestartPolicy:
    """Restart at once after a stable run; back off (doubling from
    `initial` up to `maximum`) while runs keep failing fast."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    stable_after: float = 10.0  # a run this long resets the backoff
    max_restarts: int | None = None  # None: never give up

    def next_delay(self, previous: float, runtime: float) -> float:
        if runtime >= self.stable_after:
            return 0.0
        if previous <= 0.0:
            return self.initial
        return min(previous * self.factor, self.maximum)


class _SupervisorState(enum.Enum):
    NEW = "new"
    RUNNING = "running"  # a child is running
    BACKOFF = "backoff"  # waiting before the next start
    FAILED = "failed"  # gave up (max_restarts)
    STOPPED = "stopped"


class Supervisor(Lifecycle[_SupervisorState]):
    """Keeps an ffmpeg command running.

    `make_args()` is called before each start (a caller can choose fresh
    ports). `on_start(process)` runs when a child has started, `on_exit(exit)`
    when a run ended (also the last one, with `exit.stopped`).
    States: new -> running <-> backoff -> stopped | failed.
    """

    def __init__(
        self,
        make_args: Callable[[], Sequence[str]],
        *,
        name: str = "ffmpeg",
        ffmpeg: str = "",
        loglevel: str = "warning",
        policy: RestartPolicy = RestartPolicy(),
        stop_grace: float = 5.0,
        on_start: Callable[[FfmpegProcess], None] | None = None,
        on_exit: Callable[[FfmpegExit], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(_SupervisorState.NEW, f"Supervisor({name})")
        self.name = name
        self.policy = policy
        self._make_args = make_args
        self._ffmpeg = ffmpeg
        self._loglevel = loglevel
        self._stop_grace = stop_grace
        self._on_start = on_start
        self._on_exit = on_exit
        if on_state is not None:
            self.add_state_listener(lambda state: on_state(state.value))
        self._on_line = on_line
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.current: FfmpegProcess | None = None
        self.starts = 0  # children started so far
        self.last_exit: FfmpegExit | None = None
        self.delays: list[float] = []  # the backoff delays used, in order

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self) -> None:
        assert self._state is _SupervisorState.NEW, f"Supervisor({self.name}) started twice"
        self._set_state(_SupervisorState.RUNNING)
        self._task = self._start_task(self._run(), name=f"supervisor-{self.name}")

    async def _run(self) -> None:
        delay = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    process = FfmpegProcess(
                        self._make_args(), name=self.name, ffmpeg=self._ffmpeg,
                        loglevel=self._loglevel, on_line=self._on_line,
                    )
                    self.current = process
                    self._set_state(_SupervisorState.RUNNING)
                    await process.start()
                except Exception as error:  # no binary, no port: back off like a crash
                    logger.error("Supervisor(%s) cannot run ffmpeg: %s", self.name, error)
                    result = FfmpegExit(self.name, -1, 0.0, (str(error),), False)
                else:
                    self.starts += 1
                    self._callback(self._on_start, process)
                    await process.wait()
                    result = process.result()
                self.last_exit = result
                if not result.stopped:
                    logger.warning("Supervisor(%s): %s", self.name, result.describe())
                self._callback(self._on_exit, result)
                if self._stopping.is_set():
                    break
                if self.policy.max_restarts is not None and len(self.delays) >= self.policy.max_restarts:
                    self._set_state(_SupervisorState.FAILED)
                    return
                delay = self.policy.next_delay(delay, result.runtime)
                self.delays.append(delay)
                if delay > 0:
                    self._set_state(_SupervisorState.BACKOFF)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    except asyncio.TimeoutError:
                        pass  # the backoff is over: start again
        finally:
            if self.current is not None:
                await self.current.stop(self._stop_grace)

    def _callback(self, callback: Callable[..., None] | None, arg: object) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            logger.exception("Supervisor(%s) callback failed", self.name)

    async def stop(self) -> None:
        """Stop the running child (gracefully) and restart no more.
        Idempotent; concurrent callers await one stop."""
        await super().stop()

    async def _stop(self) -> None:
        self._stopping.set()
        if self.current is not None:
            await self.current.stop(self._stop_grace)
        if self._task is not None:
            await self._task
        self._set_state(_SupervisorState.STOPPED)
