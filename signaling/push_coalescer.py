"""Pushes of a fast-changing aggregate, coalesced per key.

A forum's viewer count changes with every guest who joins or leaves: at
a session's start 1,000 guests join within seconds, and pushing each
change to the whole room is N pushes of N messages (500,000 messages for
1,000 joins; the clients' and the server's whole CPU). A
`PushCoalescer` sends the first change of a key at once, then at most
one push per `interval_s`, always the latest value, so the last count
always arrives and a room hears at most 1/interval pushes a second.
With `read`, the value is read again at sending time (a push that waited
out its interval carries the value now); a value equal to the last one
pushed for its key is not pushed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PushCoalescer(Generic[T]):
    """`offer(key, value)` never blocks; `send(key, value)` runs from one
    task per key while values keep coming (then the task ends)."""

    def __init__(self, send: Callable[[str, T], Awaitable[None]], interval_s: float,
                 read: Callable[[str, T], Awaitable[T]] | None = None) -> None:
        self._send = send
        self._interval_s = interval_s
        self._read = read  # (key, value offered) -> the value now
        self._latest: dict[str, T] = {}
        self._sent: dict[str, T] = {}  # per key, the last value pushed
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def offer(self, key: str, value: T) -> None:
        self._latest[key] = value
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._drain(key), name=f"push-{key}")

    async def _drain(self, key: str) -> None:
        try:
            while key in self._latest:
                value = self._latest.pop(key)
                if self._read is not None:
                    value = await self._read(key, value)
                if key in self._sent and self._sent[key] == value:
                    continue  # the clients have it already
                try:
                    await self._send(key, value)
                except Exception:
                    logger.exception("pushing %s failed", key)
                self._sent[key] = value
                await asyncio.sleep(self._interval_s)  # what arrives meanwhile goes out as one push
        finally:
            self._tasks.pop(key, None)

    async def stop(self) -> None:
        """Drop what is pending and end every task (idempotent)."""
        self._latest.clear()
        self._sent.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
