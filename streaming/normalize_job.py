"""One normalization running in the background: its state and progress.

States: queued -> probing -> converting -> done | failed. `progress` is
0..1 of the source's duration written so far (ffmpeg's `out_time_us`),
`eta_s` the seconds left at the rate so far. Every change calls
`on_change(job)` (the library pushes it to operators); changes of
progress at most once per `PROGRESS_STEP`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streaming.lifecycle import StateMachine

logger = logging.getLogger(__name__)

PROGRESS_STEP = 0.01


class JobState(enum.Enum):
    QUEUED = "queued"
    PROBING = "probing"
    CONVERTING = "converting"
    DONE = "done"
    FAILED = "failed"


@dataclass
class NormalizeJob(StateMachine[JobState]):
    """A normalization of one upload or event-file video into a forum's library."""

    id: str
    forum_id: str
    name: str
    owner: str  # the token subject that asked for it (bounds count per owner)
    on_change: Callable[[NormalizeJob], None] | None = None
    _state: JobState = JobState.QUEUED
    progress: float = 0.0  # 0..1
    eta_s: float | None = None
    item_id: str | None = None
    error: str | None = None
    failure_code: str = "unsupported_media_type"  # the RoomError code a waiter gets when it failed
    duration: float = 0.0  # seconds of source
    plan: dict[str, object] | None = None
    created_at: float = field(default_factory=time.time)
    _converting_since: float = 0.0
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set once done or failed

    def __post_init__(self) -> None:
        StateMachine.__init__(self, self._state, f"NormalizeJob({self.id})")
        self.add_state_listener(self._on_state)

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def finished(self) -> bool:
        return self._state in (JobState.DONE, JobState.FAILED)

    def _on_state(self, state: JobState) -> None:
        if self.finished:
            self.ended.set()
        if state is JobState.CONVERTING:
            self._converting_since = time.monotonic()
        self._changed()

    def probing(self) -> None:
        self._set_state(JobState.PROBING)

    def converting(self, duration: float, plan: dict[str, object]) -> None:
        self.duration, self.plan = duration, plan
        self._set_state(JobState.CONVERTING)

    def done(self, item_id: str) -> None:
        self.item_id, self.progress, self.eta_s = item_id, 1.0, 0.0
        self._set_state(JobState.DONE)

    def failed(self, error: str) -> None:
        self.error, self.eta_s = error, None
        self._set_state(JobState.FAILED)

    def on_ffmpeg_line(self, line: str) -> None:
        """Read ffmpeg's `-progress` lines (out_time_us=<microseconds>)."""
        if not line.startswith("out_time_us=") or self.duration <= 0:
            return
        try:
            written = int(line.partition("=")[2]) / 1_000_000
        except ValueError:  # "N/A" before the first frame
            return
        progress = max(0.0, min(1.0, written / self.duration))
        if progress - self.progress < PROGRESS_STEP:
            return
        self.progress = progress
        elapsed = time.monotonic() - self._converting_since
        self.eta_s = round(elapsed * (1 - progress) / progress, 1) if progress > 0 else None
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:
                logger.exception("NormalizeJob(%s) change callback failed", self.id)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "forum_id": self.forum_id, "name": self.name, "state": self.state,
                "percent": round(self.progress * 100, 1), "eta_s": self.eta_s, "media": self.item_id,
                "error": self.error, "processing": self.plan, "created_at": self.created_at}
