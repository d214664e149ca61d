"""The lifecycle shape every long-lived media object shares.

One state enum per class behind `_state`; one `_set_state` that logs
`old -> new` and tells the state listeners, only when the state changes;
an idempotent `stop()` run as ONE task that every caller awaits (a caller
that is cancelled, a `wait_for` that times out, does not cut the stop
short for the others, and no caller starts a second one); `started` and
`exited` events around the object's own task where it runs one.

Shape taken from aiortc's RTCDtlsTransport (`_set_state`) and
RTCRtpSender (started/exited events, stop awaited by every caller). Nothing
here runs per packet: a subclass's packet path reads `self._state` as a
plain attribute, as before.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["Lifecycle", "StateMachine"]

S = TypeVar("S", bound=enum.Enum)


class StateMachine(Generic[S]):
    """States `S` behind `_state`, changed only through `_set_state`, which
    logs `old -> new` and tells each listener the new state (one that
    raises is logged and the others still run). For an object with states
    and no stop of its own (a normalization job); `Lifecycle` adds the
    stop."""

    _STATE_LOG_LEVEL: ClassVar[int] = logging.INFO  # DEBUG for objects counted in thousands (viewers)

    _state: S

    def __init__(self, initial: S, label: str) -> None:
        self._state = initial
        self._label = label  # as in logs, e.g. "Viewer(v1)"
        self._state_listeners: list[Callable[[S], None]] = []

    def add_state_listener(self, listener: Callable[[S], None]) -> Callable[[], None]:
        """Call `listener(new_state)` on every change; returns its remover."""
        self._state_listeners.append(listener)

        def remove() -> None:
            if listener in self._state_listeners:
                self._state_listeners.remove(listener)

        return remove

    def _set_state(self, state: S) -> None:
        if state is self._state:
            return
        old, self._state = self._state, state
        logging.getLogger(type(self).__module__).log(
            self._STATE_LOG_LEVEL, "%s %s -> %s", self._label, old.value, state.value
        )
        for listener in tuple(self._state_listeners):
            try:
                listener(state)
            except Exception:
                logging.getLogger(type(self).__module__).exception("%s state listener failed", self._label)


class Lifecycle(StateMachine[S]):
    """Base of a media object with states `S` and a stop.

    Subclasses call `super().__init__(initial, label)` (`label` as in
    logs, e.g. "Viewer(v1)"), change state only through `_set_state`,
    implement `_stop()` (the body of the one stop; `_stop_begins()` for
    what must happen before the caller's next await) and keep their public
    `state` property (most return `self._state.value`, the names status
    JSON and tests read). A listener gets the new state; one that raises is
    logged and the others still run.
    """

    def __init__(self, initial: S, label: str) -> None:
        super().__init__(initial, label)
        self._stop_task: asyncio.Task[None] | None = None
        # around the object's own task (`_start_task`); unused by objects that run none
        self.started = asyncio.Event()
        self.exited = asyncio.Event()
        self._own_task: asyncio.Task[None] | None = None

    # --- stop ------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once stop() was called (the stop may still be running)."""
        return self._stop_task is not None

    async def stop(self) -> None:
        """Stop (idempotent, irreversible unless the class says otherwise):
        every caller awaits the same single stop; its error, if any, is
        raised to each of them."""
        await self._stop_once(self._stop)

    def _stop_begins(self) -> None:
        """Runs at once in the first stop() call, before the stop task gets
        its first turn: mark the object stopping (a state, a flag) so that
        nothing new starts on it in between. Must not block."""

    async def _stop(self) -> None:
        """The one stop's body (runs in the stop task)."""
        raise NotImplementedError

    async def _stop_once(self, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self._stop_task
        if task is None:
            self._stop_begins()
            task = self._stop_task = asyncio.get_running_loop().create_task(body(), name=f"{self._label}-stop")
        elif task is asyncio.current_task():
            return  # the stop itself reached stop() again (a callback): it is already under way
        await asyncio.shield(task)

    async def _rearm(self) -> None:
        """For an object that may start again after a stop (Restream): wait
        for a stop under way (its error went to its callers), then the next
        stop() runs anew."""
        task = self._stop_task
        if task is not None:
            await asyncio.wait([task])
            self._stop_task = None

    # --- the object's own task -------------------------------------------

    def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `coro` as the object's task: `started` is set when it begins,
        `exited` when it ends (however it ends); both cleared first, so an
        object that runs its task again (a playout restart) can be awaited
        again."""
        self.started.clear()
        self.exited.clear()
        task = asyncio.get_running_loop().create_task(self._tracked(coro), name=name)
        self._own_task = task
        # cancelled before its first step, _tracked never runs: still exited
        task.add_done_callback(lambda done: self._own_task_done(done, coro))
        return task

    def _own_task_done(self, task: asyncio.Task[None], coro: Coroutine[Any, Any, None]) -> None:
        coro.close()  # no-op once it ran; spares "never awaited" when it never did
        if task is self._own_task:  # not a previous run's, ending after a restart
            self.exited.set()

    async def _tracked(self, coro: Coroutine[Any, Any, None]) -> None:
        self.started.set()
        try:
            await coro
        finally:
            if asyncio.current_task() is self._own_task:
                self.exited.set()
