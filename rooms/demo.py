"""Demo mode: an event moved in time so that it runs now.

The sample event's days are fixed dates that pass; a first `serve` would
show only slates. `demo_event(event, now)` shifts every session of the
event by one offset, so the agenda keeps its shape (order, lengths, gaps,
parallel forums) and a recorded talk is due in one to two minutes while
the session before it in its forum is live. The file is never touched:
this is a pure function of the event and an injected `now`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

from rooms.models import Event, Forum, Session, SpeakerMode

# the recorded talk starts at the first whole minute at least this far
# ahead: long enough to open a page and watch it start, short enough to wait
MIN_LEAD = dt.timedelta(seconds=60)
_MINUTE = dt.timedelta(minutes=1)
_UTC = dt.timezone.utc


def demo_event(event: Event, now: dt.datetime) -> Event:
    """`event` with every session moved by one offset and `demo=True`.

    The anchor is the earliest recorded talk (a session with a recorded
    speaker that has a video) whose forum has a session live MIN_LEAD
    before it starts; failing that, the earliest recorded talk; failing
    that, the first session. The anchor then starts at the first whole
    minute >= now + MIN_LEAD (so 60-120 s after `now`). `days` become the
    local dates the moved sessions cover. Offsets are added in UTC, so a
    daylight-saving change between the file's dates and now moves nothing
    by an hour.

    Raises ValueError when `now` is naive or the event has no session.
    """
    if now.tzinfo is None:
        raise ValueError(f"now={now.isoformat()} has no time zone")
    anchor = _anchor(event)
    if anchor is None:
        raise ValueError(f"event {event.id!r} has no session to move")
    start = _ceil_minute((now + MIN_LEAD).astimezone(_UTC))
    offset = start - anchor.start.astimezone(_UTC)
    zone = zoneinfo.ZoneInfo(event.timezone)
    forums = tuple(
        dataclasses.replace(forum, sessions=tuple(_moved(session, offset, zone) for session in forum.sessions))
        for forum in event.forums
    )
    return dataclasses.replace(event, forums=forums, days=_days(forums), demo=True)


def _anchor(event: Event) -> Session | None:
    recorded: list[tuple[Forum, Session]] = []
    for forum in event.forums:
        for session in forum.sessions:
            if any(_is_recorded(event, speaker_id) for speaker_id in session.speaker_ids):
                recorded.append((forum, session))
    recorded.sort(key=lambda item: item[1].start)
    for forum, session in recorded:
        before = session.start - MIN_LEAD - _MINUTE  # the most the lead can be
        if any(other.is_live_at(before) and other.end >= session.start for other in forum.sessions):
            return session
    if recorded:
        return recorded[0][1]
    sessions = [session for forum in event.forums for session in forum.sessions]
    return min(sessions, key=lambda session: session.start, default=None)


def _is_recorded(event: Event, speaker_id: str) -> bool:
    speaker = event.speakers.get(speaker_id)
    return speaker is not None and speaker.mode is SpeakerMode.RECORDED and speaker.video is not None


def _moved(session: Session, offset: dt.timedelta, zone: dt.tzinfo) -> Session:
    return dataclasses.replace(
        session,
        start=(session.start.astimezone(_UTC) + offset).astimezone(zone),
        end=(session.end.astimezone(_UTC) + offset).astimezone(zone),
    )


def _days(forums: tuple[Forum, ...]) -> tuple[dt.date, ...]:
    days: set[dt.date] = set()
    for forum in forums:
        for session in forum.sessions:
            days.add(session.start.date())
            days.add((session.end - dt.timedelta(microseconds=1)).date())  # an end at midnight is the day before
    return tuple(sorted(days))


def _ceil_minute(when: dt.datetime) -> dt.datetime:
    floor = when.replace(second=0, microsecond=0)
    return floor if floor == when else floor + _MINUTE
