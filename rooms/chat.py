"""Chat and Q&A: the message record and a per-participant rate limiter.

Pure: no I/O, the clock is injected. The limiter lives in the node that
holds the participant's connection, so it needs no shared state.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class ChatKind(enum.StrEnum):
    CHAT = "chat"
    QUESTION = "question"  # goes to the Q&A list the moderators answer from
    BACKSTAGE = "backstage"  # between the forum's speakers and its operators; never shown to guests


class ModerationAction(enum.StrEnum):
    HIDE = "hide"
    SHOW = "show"
    ANSWER = "answer"
    UNANSWER = "unanswer"
    PIN = "pin"
    UNPIN = "unpin"
    APPROVE = "approve"  # a question: shown to every guest
    UNAPPROVE = "unapprove"

    def changes(self) -> dict[str, bool]:
        """The message fields this action sets."""
        return _ACTION_CHANGES[self]


_ACTION_CHANGES: dict[ModerationAction, dict[str, bool]] = {
    ModerationAction.HIDE: {"hidden": True},
    ModerationAction.SHOW: {"hidden": False},
    ModerationAction.ANSWER: {"answered": True},
    ModerationAction.UNANSWER: {"answered": False},
    ModerationAction.PIN: {"pinned": True},
    ModerationAction.UNPIN: {"pinned": False},
    ModerationAction.APPROVE: {"approved": True},
    ModerationAction.UNAPPROVE: {"approved": False},
}

# the only fields moderation may change (Store.update_message refuses others)
MODERATION_FIELDS = frozenset({"hidden", "answered", "pinned", "approved"})


@dataclass(frozen=True)
class ChatMessage:
    id: str
    forum_id: str
    participant_id: str
    name: str  # display name at the time of posting
    text: str
    kind: ChatKind
    ts: float  # unix seconds
    hidden: bool = False
    answered: bool = False
    pinned: bool = False
    approved: bool = False  # a question the moderators chose to show to everyone

    @property
    def public(self) -> bool:
        """Shown to every guest: a chat message until hidden; a question
        once approved (until hidden: "dismiss"). Unapproved questions are
        the operators' queue; backstage messages are never public, even
        approved."""
        if self.hidden:
            return False
        if self.kind is ChatKind.QUESTION:
            return self.approved
        return self.kind is ChatKind.CHAT


class RateLimiter:
    """At most `limit` hits per key in any sliding `window_s` seconds.

    Memory stays bounded: a key's history holds at most `limit` stamps, and
    keys idle for a whole window are swept once the table grows.
    """

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sweep_above: int = 10_000,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._sweep_above = sweep_above
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float:
        """Record a hit and return 0.0, or return the seconds to wait (> 0)
        without recording anything when the key is over its limit."""
        now = self._clock()
        stamps = self._hits.get(key)
        if stamps is None:
            if len(self._hits) >= self._sweep_above:
                self._sweep(now)
            stamps = self._hits[key] = deque(maxlen=self.limit)
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return max(stamps[0] + self.window_s - now, 0.001)
        stamps.append(now)
        return 0.0

    def forget(self, key: str) -> None:
        self._hits.pop(key, None)

    def __len__(self) -> int:
        return len(self._hits)

    def _sweep(self, now: float) -> None:
        stale = [k for k, s in self._hits.items() if not s or s[-1] <= now - self.window_s]
        for key in stale:
            del self._hits[key]
        logger.debug("RateLimiter swept %d idle keys", len(stale))
