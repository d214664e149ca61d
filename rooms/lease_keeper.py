"""The node's lease upkeep: runs `ForumOwnership.tick()` every
`tick_interval_s` (a tenth of the lease TTL) and tells an
`OwnershipListener` which forums this node starts and stops hosting.

`claim(forum_id)` is the synchronous path for a need that cannot wait for
the next tick (a publisher connects, an operator acts): it ticks at once
and says whether this node owns the forum now. Ticks never overlap (one
lock), so the listener hears each change once, in order. `stop()` gives
every lease up (another node takes the forums at its next tick instead
of after the TTL) and tells the listener it lost them. Lifecycle: state
enum, idempotent `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Protocol

from rooms.forum_ownership import ForumOwnership, OwnershipChange

logger = logging.getLogger(__name__)


class OwnershipListener(Protocol):
    """What hosts a forum on this node. Both calls must not raise."""

    async def acquired(self, forum_id: str) -> None:
        """This node holds the forum's lease now: host it (slate first)."""

    async def lost(self, forum_id: str) -> None:
        """Another node holds it, or it was given up: stop hosting it."""


class KeeperState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class LeaseKeeper:
    def __init__(self, ownership: ForumOwnership, listener: OwnershipListener | None = None) -> None:
        self.ownership = ownership
        self._listener = listener
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._state = KeeperState.NEW
        self._stopped: asyncio.Future[None] | None = None
        # called before each tick (the caller refreshes what the agenda needs)
        self.before_tick: Callable[[], None] | None = None

    @property
    def state(self) -> KeeperState:
        return self._state

    def _set_state(self, state: KeeperState) -> None:
        if state is not self._state:
            logger.info("LeaseKeeper(%s) %s -> %s", self.ownership.node_id, self._state.value, state.value)
            self._state = state

    def set_listener(self, listener: OwnershipListener | None) -> None:
        self._listener = listener

    async def start(self) -> None:
        if self._state is not KeeperState.NEW:
            return
        self._set_state(KeeperState.RUNNING)
        self._task = asyncio.create_task(self._run(), name=f"LeaseKeeper({self.ownership.node_id})")

    async def stop(self) -> None:
        """Stop ticking, release every lease, tell the listener. Idempotent:
        concurrent callers await the same stop."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            self._set_state(KeeperState.STOPPED)
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with self._lock:
                released = await self.ownership.release_all()
                await self._tell(OwnershipChange(released=tuple(released)))
        finally:
            self._stopped.set_result(None)

    def owns(self, forum_id: str) -> bool:
        return self.ownership.owns(forum_id)

    async def claim(self, forum_id: str) -> bool:
        """This node needs the forum now (an operator's command): touch it
        and tick at once. True when this node owns it afterwards."""
        self.ownership.touch(forum_id)
        if not self.ownership.owns(forum_id) and self._state is KeeperState.RUNNING:
            await self.tick()
        return self.ownership.owns(forum_id)

    async def tick(self) -> OwnershipChange:
        async with self._lock:
            if self._state is KeeperState.STOPPED:
                return OwnershipChange()
            if self.before_tick is not None:
                self.before_tick()
            change = await self.ownership.tick()
            await self._tell(change)
            return change

    def poke(self) -> None:
        """Tick soon (a need changed) instead of at the next interval."""
        self._wake.set()

    async def _tell(self, change: OwnershipChange) -> None:
        listener = self._listener
        if listener is None:
            return
        for forum_id in (*change.lost, *change.released):
            await listener.lost(forum_id)
        for forum_id in change.acquired:
            await listener.acquired(forum_id)

    async def _run(self) -> None:
        interval = self.ownership.tick_interval_s
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a listener must not end the upkeep of every lease
                logger.exception("LeaseKeeper(%s) tick failed; going on", self.ownership.node_id)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)  # the interval, or a poke
            self._wake.clear()
