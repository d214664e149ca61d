"""The one way tests wait: poll a condition until it holds or a deadline
passes, then fail with what was awaited and the last value seen.

Tests wait on events, not sleeps; where there is no event to await (a child
process, a remote counter), they poll through `eventually` (async) or
`eventually_blocking` (plain code). Deadlines are generous: a slow, shared
machine makes a test wait longer, never fail.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_INTERVAL_S = 0.05


class NotYet(AssertionError):
    """Raised when the condition did not hold before the deadline."""


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    what: str = "",
) -> T:
    """Call `check` (sync or async) until it returns a truthy value, and
    return that value. An AssertionError raised by `check` counts as "not
    yet" (so a check may assert). Raises NotYet after `timeout` seconds,
    naming `what` and the last value or assertion seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise NotYet(f"not within {timeout:g} s: {what or getattr(check, '__name__', 'condition')} "
                         f"(last: {last!r})")
        await asyncio.sleep(interval)


def eventually_blocking(
    check: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    what: str = "",
) -> T:
    """`eventually` for plain (non-async) code: the same contract."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise NotYet(f"not within {timeout:g} s: {what or getattr(check, '__name__', 'condition')} "
                         f"(last: {last!r})")
        time.sleep(interval)
