"""The recording schedule: pure, with an injected agenda clock."""

from __future__ import annotations

import datetime as dt

from recorder.schedule import due_recordings, plan
from rooms.agenda import AgendaClock
from rooms.event_file import load_event
from config.settings import SAMPLE_EVENT


def test_recorded_forums_record_their_live_session_only() -> None:
    event = load_event(SAMPLE_EVENT)
    main = event.forum("main")
    assert main is not None and main.sessions and main.recorded
    first = main.sessions[0]
    during = first.start + (first.end - first.start) / 2
    due = due_recordings(event, AgendaClock(event, now=lambda: during))
    assert due.get("main") == first.id
    before = first.start - dt.timedelta(hours=6)
    assert "main" not in due_recordings(event, AgendaClock(event, now=lambda: before))


def test_plan_starts_stops_and_switches_sessions() -> None:
    assert plan({"a": "s1"}, {}) == ([], [("a", "s1")])
    assert plan({}, {"a": "s1"}) == (["a"], [])
    assert plan({"a": "s2"}, {"a": "s1"}) == (["a"], [("a", "s2")])
    assert plan({"a": "s1"}, {"a": "s1"}) == ([], [])
