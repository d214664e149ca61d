"""Demo mode (rooms/demo.py): the sample event moved to run at an injected
`now`; no clock, no network."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from config.settings import SAMPLE_EVENT
from rooms.agenda import AgendaClock
from rooms.demo import demo_event
from rooms.event_file import load_event
from rooms.models import Event

UTC = dt.timezone.utc
NOWS = [
    dt.datetime(2027, 3, 14, 1, 59, 26, 500, tzinfo=UTC),
    dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC),  # the moved agenda crosses a new year
    dt.datetime(2026, 11, 8, 9, 40, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai")),  # during the real event
    dt.datetime(2027, 3, 28, 0, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),  # a DST night elsewhere
]


@pytest.fixture(scope="module")
def event() -> Event:
    return load_event(SAMPLE_EVENT)


@pytest.mark.parametrize("now", NOWS)
def test_a_session_is_live_and_a_recorded_talk_is_due_within_two_minutes(event: Event, now: dt.datetime) -> None:
    demo = demo_event(event, now)
    agenda = AgendaClock(demo, now=lambda: now)
    assert demo.demo and not event.demo
    live = [forum.id for forum in demo.forums if agenda.live_session(forum.id) is not None]
    assert live, "no session is live now"
    due = agenda.recorded_starts(now, now + dt.timedelta(seconds=120))
    assert due and all(dt.timedelta(seconds=60) <= p.at - now <= dt.timedelta(seconds=120) for p in due)
    assert due[0].forum_id in live  # its forum is live until the talk starts
    first = min(session.start for forum in demo.forums for session in forum.sessions)
    assert dt.timedelta(0) < now - first < dt.timedelta(hours=3)  # day one started now-ish


@pytest.mark.parametrize("now", NOWS)
def test_the_agenda_keeps_its_shape(event: Event, now: dt.datetime) -> None:
    demo = demo_event(event, now)
    before = [s for forum in event.forums for s in forum.sessions]
    after = [s for forum in demo.forums for s in forum.sessions]
    assert [s.id for s in after] == [s.id for s in before]
    offsets = {a.start - b.start for a, b in zip(after, before)} | {a.end - b.end for a, b in zip(after, before)}
    assert len(offsets) == 1  # one offset for every start and end (exact instants, DST or not)
    assert all(s.start.tzinfo == zoneinfo.ZoneInfo(event.timezone) for s in after)
    assert all(s.start.second == 0 for s in after)
    covered = {s.start.date() for s in after} | {(s.end - dt.timedelta(microseconds=1)).date() for s in after}
    assert set(demo.days) == covered and list(demo.days) == sorted(demo.days)
    assert demo.speakers == event.speakers and demo.name == event.name


def test_needs_an_aware_now(event: Event) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        demo_event(event, dt.datetime(2027, 1, 1, 12, 0))
