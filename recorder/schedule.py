"""Which forum sessions should be recording now: a pure function of the
event (forums marked `recorded`, their sessions) and the agenda clock.
No I/O; the recorder's scheduler applies it."""

from __future__ import annotations

from rooms.agenda import AgendaClock
from rooms.models import Event


def due_recordings(event: Event, agenda: AgendaClock) -> dict[str, str]:
    """{forum_id: session_id} for every recorded forum with a session live now."""
    due: dict[str, str] = {}
    for forum in event.forums:
        if not forum.recorded:
            continue
        session = agenda.live_session(forum.id)
        if session is not None:
            due[forum.id] = session.id
    return due


def plan(due: dict[str, str], running: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
    """What to change: (forums to stop, (forum, session) to start), given
    what should record (`due`) and what the scheduler runs (`running`,
    forum -> session). A session change is a stop then a start."""
    stop = [f for f, s in running.items() if due.get(f) != s]
    start = [(f, s) for f, s in due.items() if running.get(f) != s]
    return stop, start
