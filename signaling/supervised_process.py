"""One command kept running: a node worker or the local redis-server of
`serve --workers`.

`SupervisedProcess` spawns its child with the parent-death signal and in
its own process group (streaming/child_processes.py: it dies with us even
when we are SIGKILLed, and a terminal's Ctrl-C reaches only us, so we stop
the children in order), restarts it when it dies under a `RestartPolicy`
(streaming/ffmpeg_process.py: at once after a stable run, capped
exponential backoff while it keeps failing fast), and stops it with
SIGTERM, then SIGKILL after `stop_grace` s; every child is reaped.
`start()` returns once the first child is ready (`ready()` answered
True) and raises `ChildStartError` when it exits or stays unready first:
the caller can refuse to run half a cluster.

States: new -> starting -> running <-> backoff -> stopped | failed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from streaming.child_processes import ChildRegistry, die_with_parent
from streaming.ffmpeg_process import RestartPolicy
from streaming.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

READY_POLL_S = 0.1  # how often a starting child's readiness is asked


class ChildStartError(Exception):
    """The first child did not become ready: it exited (`returncode`) or
    `ready_timeout` passed."""

    def __init__(self, name: str, message: str, returncode: int | None = None) -> None:
        super().__init__(f"{name} could not start: {message}")
        self.name = name
        self.returncode = returncode


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"  # the first child is spawned, not ready yet
    RUNNING = "running"
    BACKOFF = "backoff"  # waiting before the next start
    FAILED = "failed"  # the first start failed: nothing runs
    STOPPED = "stopped"


class SupervisedProcess(Lifecycle[_State]):
    """Keeps `command` running (see the module docstring).

    `env` is the child's whole environment (the caller decides what it
    holds; never put a secret in `command`, any local user reads argv).
    `ready()` is asked every READY_POLL_S s after each spawn until it
    answers True (raising counts as not yet). `registry`, when given,
    keeps a pid file per child (ChildRegistry) so a later run can end a
    stray. `on_exit(returncode)` is told every run's end.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
        ready_timeout: float = 120.0,
        policy: RestartPolicy = RestartPolicy(initial=0.5, maximum=10.0),
        stop_grace: float = 30.0,
        registry: ChildRegistry | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(_State.NEW, f"SupervisedProcess({name})")
        self.name = name
        self.command = list(command)
        self._env = dict(env) if env is not None else None
        self._ready = ready
        self._ready_timeout = ready_timeout
        self.policy = policy
        self._stop_grace = stop_grace
        self._registry = registry
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._first_ready: asyncio.Future[None] | None = None
        self.starts = 0  # children spawned so far
        self.restarts = 0  # children spawned after one died

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def pid(self) -> int | None:
        """The running child's pid, None between children."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Spawn the child and wait until it is ready. Raises
        ChildStartError (the child exited or was not ready in time;
        nothing is left running) or OSError (the binary cannot run)."""
        assert self._state is _State.NEW, f"{self._label} started twice"
        self._set_state(_State.STARTING)
        try:
            process = await self._spawn()
        except OSError:
            self._set_state(_State.FAILED)
            raise
        try:
            await self._await_ready(process, self._ready_timeout)
        except ChildStartError:
            await self._end(process)
            self._set_state(_State.FAILED)
            raise
        if self._stopping.is_set():  # stop() came while it was starting: nobody wants it
            await self._end(process)
            return
        self._set_state(_State.RUNNING)
        self._start_task(self._supervise(process), name=f"supervise-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        # forked from the loop's thread: the parent-death signal fires when the forking thread ends
        process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.DEVNULL, env=self._env,
            preexec_fn=die_with_parent(), process_group=0,
        )
        self._process = process
        self.starts += 1
        if self._registry is not None:
            self._registry.record(process.pid, self.name)
        logger.info("%s: pid %d started", self._label, process.pid)
        return process

    async def _await_ready(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        if self._ready is None:
            return
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(process.wait())
        try:
            while True:
                try:
                    if await self._ready():
                        return
                except Exception as error:  # not listening yet, refused...: ask again
                    logger.debug("%s not ready yet: %s", self._label, error)
                if exited.done():
                    raise ChildStartError(self.name, f"it exited with code {process.returncode}",
                                          process.returncode)
                if time.monotonic() > deadline:
                    raise ChildStartError(self.name, f"not ready after {timeout:.0f} s")
                await asyncio.wait([exited], timeout=READY_POLL_S)
        finally:
            exited.cancel()

    async def _supervise(self, process: asyncio.subprocess.Process) -> None:
        delay = 0.0
        while True:
            began = time.monotonic()
            code = await process.wait()
            self._reaped(process)
            if self._stopping.is_set():
                return
            runtime = time.monotonic() - began
            logger.warning("%s: pid %d exited with code %d after %.1f s: restarting",
                           self._label, process.pid, code, runtime)
            while True:
                delay = self.policy.next_delay(delay, runtime)
                if delay > 0:
                    self._set_state(_State.BACKOFF)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), delay)
                        return  # stopped while waiting
                    except asyncio.TimeoutError:
                        pass
                if self._stopping.is_set():
                    return
                try:
                    process = await self._spawn()
                    break
                except OSError as error:  # the binary went away: keep trying, backing off
                    logger.error("%s cannot start: %s", self._label, error)
                    self._process = None
                    runtime = 0.0
            self.restarts += 1
            if self._stopping.is_set():  # stop() ran while we were spawning
                await self._end(process)
                return
            self._set_state(_State.RUNNING)

    def _reaped(self, process: asyncio.subprocess.Process) -> None:
        if self._registry is not None:
            self._registry.forget(process.pid)
        if self._on_exit is not None and process.returncode is not None:
            try:
                self._on_exit(process.returncode)
            except Exception:
                logger.exception("%s exit callback failed", self._label)

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, SIGKILL after the grace; reaped."""
        if process.returncode is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace)
            except asyncio.TimeoutError:
                logger.warning("%s: pid %d did not stop in %.0f s: SIGKILL", self._label, process.pid,
                               self._stop_grace)
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
        await process.wait()
        if self._registry is not None:
            self._registry.forget(process.pid)

    async def stop(self) -> None:
        """Stop the child (SIGTERM: a node gives up its leases and
        finalizes its recordings) and restart it no more. Idempotent;
        concurrent callers await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._stopping.set()

    async def _stop(self) -> None:
        process = self._process
        if process is not None:
            await self._end(process)
        task = self._own_task
        if task is not None:
            await asyncio.wait([task])
        if self._state is not _State.FAILED:
            self._set_state(_State.STOPPED)
