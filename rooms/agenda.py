"""The agenda clock: what is live in a forum now, what comes next, and when
a recorded speaker's video must start.

Pure and synchronous: the clock is injected (`now`), so tests move time
and a scheduler elsewhere decides how often to ask.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rooms.errors import RoomError
from rooms.models import Event, Forum, Session, SpeakerMode

logger = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class ScheduledPlayout:
    """A recorded speaker's video that must start at `at` in a forum."""

    forum_id: str
    session_id: str
    speaker_id: str
    video: Path
    at: dt.datetime
    until: dt.datetime | None = None  # the session's end: the latest it may run


@dataclass(frozen=True)
class ForumStatus:
    forum_id: str
    live: Session | None
    next: Session | None

    def to_json(self) -> dict[str, object]:
        return {
            "forum_id": self.forum_id,
            "live": session_json(self.live) if self.live else None,
            "next": session_json(self.next) if self.next else None,
        }


def session_json(session: Session) -> dict[str, object]:
    return {
        "id": session.id,
        "title": session.title.to_json(),
        "start": session.start.isoformat(),
        "end": session.end.isoformat(),
        "speakers": list(session.speaker_ids),
    }


LABEL_LENGTH = 64  # rooms.service.MAX_NAME_LENGTH: a source's name
LABEL_SEPARATOR = " — "


class AgendaClock:
    def __init__(self, event: Event, now: Callable[[], dt.datetime] = utc_now) -> None:
        self.event = event
        self._now = now
        self._playouts = self._all_playouts()

    def now(self) -> dt.datetime:
        return self._now()

    def _forum(self, forum_id: str) -> Forum:
        forum = self.event.forum(forum_id)
        if forum is None:
            raise RoomError("not_found", f"there is no forum {forum_id!r} in this event")
        return forum

    def live_session(self, forum_id: str) -> Session | None:
        """The session on air in the forum now, if any."""
        now = self._now()
        for session in self._forum(forum_id).sessions:
            if session.is_live_at(now):
                return session
        return None

    def next_session(self, forum_id: str) -> Session | None:
        """The first session that starts after now."""
        now = self._now()
        upcoming = [s for s in self._forum(forum_id).sessions if s.start > now]
        return min(upcoming, key=lambda s: s.start, default=None)

    def status(self, forum_id: str) -> ForumStatus:
        return ForumStatus(forum_id, self.live_session(forum_id), self.next_session(forum_id))

    def recorded_starts(self, start: dt.datetime, end: dt.datetime) -> list[ScheduledPlayout]:
        """Recorded videos due to start in [start, end), in time order."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        return [p for p in self._playouts if start <= p.at < end]

    def due_playouts(self, since: dt.datetime) -> list[ScheduledPlayout]:
        """Recorded videos whose start fell in (since, now]: a scheduler that
        remembers `now` after each call sees every playout exactly once."""
        _require_aware(since, "since")
        now = self._now()
        return [p for p in self._playouts if since < p.at <= now]

    def playout_label(self, playout: ScheduledPlayout) -> str:
        """How a recorded talk is named wherever sources are listed: the
        session's title and the speaker's name (English), at most
        `LABEL_LENGTH` characters (the title is shortened, never the name)."""
        forum = self.event.forum(playout.forum_id)
        session = next((s for s in forum.sessions if s.id == playout.session_id), None) if forum else None
        speaker = self.event.speakers.get(playout.speaker_id)
        name = speaker.name.en if speaker is not None else playout.speaker_id
        title = session.title.en if session is not None else ""
        if not title:
            return name[:LABEL_LENGTH]
        room = LABEL_LENGTH - len(name) - len(LABEL_SEPARATOR)
        if room < 8:
            return name[:LABEL_LENGTH]
        if len(title) > room:
            title = title[:room - 1].rstrip() + "…"
        return f"{title}{LABEL_SEPARATOR}{name}"

    def label_for_video(self, forum_id: str, file_name: str) -> str | None:
        """The label of the forum's scheduled talk whose video file is named
        `file_name` (a library item added from the event file keeps that
        name), or None when the agenda has no such talk."""
        for playout in self._playouts:
            if playout.forum_id == forum_id and playout.video.name == file_name:
                return self.playout_label(playout)
        return None

    def _all_playouts(self) -> list[ScheduledPlayout]:
        playouts: list[ScheduledPlayout] = []
        for forum in self.event.forums:
            for session in forum.sessions:
                for speaker_id in session.speaker_ids:
                    speaker = self.event.speakers.get(speaker_id)
                    if speaker is None or speaker.mode is not SpeakerMode.RECORDED or speaker.video is None:
                        continue
                    playouts.append(
                        ScheduledPlayout(forum.id, session.id, speaker_id, speaker.video, session.start, session.end)
                    )
        playouts.sort(key=lambda p: (p.at, p.forum_id))
        return playouts


def _require_aware(when: dt.datetime, name: str) -> None:
    if when.tzinfo is None:
        raise ValueError(f"{name}={when.isoformat()} has no time zone; the agenda compares aware times")
