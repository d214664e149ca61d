from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from config.settings import SAMPLE_EVENT
from rooms.agenda import AgendaClock, ScheduledPlayout
from rooms.errors import RoomError
from rooms.event_file import load_event
from rooms.models import Event

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def local(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI)


class MovableClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture(scope="module")
def event() -> Event:
    return load_event(SAMPLE_EVENT)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(local(8, 7))


@pytest.fixture
def agenda(event: Event, clock: MovableClock) -> AgendaClock:
    return AgendaClock(event, now=clock)


def test_live_and_next_as_time_moves(agenda: AgendaClock, clock: MovableClock) -> None:
    # before the event: nothing live, the opening is next
    assert agenda.live_session("main") is None
    next_ = agenda.next_session("main")
    assert next_ is not None and next_.id == "opening-ceremony"

    clock.at = local(8, 9, 10)
    live = agenda.live_session("main")
    assert live is not None and live.id == "opening-ceremony"
    next_ = agenda.next_session("main")
    assert next_ is not None and next_.id == "keynote-1"

    clock.at = local(8, 9, 40)  # a boundary: the next session starts exactly now
    status = agenda.status("main")
    assert status.live is not None and status.live.id == "keynote-1"
    assert status.next is not None and status.next.id == "keynote-2"

    clock.at = local(8, 12, 0)  # the main forum is over
    assert agenda.status("main").live is None and agenda.status("main").next is None


def test_same_instant_in_utc_is_the_same_answer(agenda: AgendaClock, clock: MovableClock) -> None:
    clock.at = local(8, 14, 5).astimezone(dt.timezone.utc)  # 06:05 UTC
    live = agenda.live_session("ai")
    assert live is not None and live.id == "ai-keynote"


def test_gap_between_sessions(agenda: AgendaClock, clock: MovableClock) -> None:
    clock.at = local(8, 14, 55)  # between the keynote (-14:50) and the talk (15:00-)
    assert agenda.live_session("ai") is None
    next_ = agenda.next_session("ai")
    assert next_ is not None and next_.id == "ai-talk"
    assert agenda.status("ai").to_json()["next"]["id"] == "ai-talk"  # type: ignore[index]


def test_day_two_forum_not_live_on_day_one(agenda: AgendaClock, clock: MovableClock) -> None:
    clock.at = local(8, 14, 30)
    assert agenda.live_session("digital-economy") is None
    next_ = agenda.next_session("digital-economy")
    assert next_ is not None and next_.start.date() == dt.date(2026, 11, 9)


def test_unknown_forum(agenda: AgendaClock) -> None:
    with pytest.raises(RoomError) as caught:
        agenda.live_session("nope")
    assert caught.value.code == "not_found" and "'nope'" in caught.value.message


def test_recorded_starts_in_a_window(agenda: AgendaClock, event: Event) -> None:
    day_one = agenda.recorded_starts(local(8, 0), local(9, 0))
    assert [(p.forum_id, p.session_id, p.speaker_id, p.at) for p in day_one] == [
        ("main", "keynote-2", "sofia-lindqvist", local(8, 10, 20)),
        ("ai", "ai-keynote", "chen-jing", local(8, 14, 0)),
        ("belt-road", "belt-road-talk", "omar-haddad", local(8, 15, 0)),
    ]
    assert all(p.video == event.speakers[p.speaker_id].video and p.video.is_file() for p in day_one)
    assert day_one[0].until == local(8, 11, 0)
    # the window is half-open: [start, end)
    assert agenda.recorded_starts(local(8, 10, 20), local(8, 10, 21))[0].session_id == "keynote-2"
    assert agenda.recorded_starts(local(8, 10, 0), local(8, 10, 20)) == []
    everything = agenda.recorded_starts(local(1, 0), local(30, 0))
    assert len(everything) > len(day_one)
    assert everything == sorted(everything, key=lambda p: p.at)


def test_due_playouts_sees_each_once(agenda: AgendaClock, clock: MovableClock) -> None:
    seen: list[ScheduledPlayout] = []
    last = clock.at = local(8, 10, 0)
    # a scheduler waking every 7 minutes through the first afternoon
    for _ in range(60):
        clock.at = clock.at + dt.timedelta(minutes=7)
        seen.extend(agenda.due_playouts(last))
        last = clock.at
    ids = [p.session_id for p in seen]
    assert ids == ["keynote-2", "ai-keynote", "belt-road-talk"]
    assert agenda.due_playouts(last) == []


def test_naive_times_are_refused(agenda: AgendaClock) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        agenda.due_playouts(dt.datetime(2026, 11, 8, 9, 0))


def test_a_recorded_talk_is_labelled_by_its_session_and_speaker(agenda: AgendaClock, event: Event) -> None:
    playouts = agenda.recorded_starts(dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                                      dt.datetime.max.replace(tzinfo=dt.timezone.utc))
    assert playouts, "the sample event has recorded talks"
    for playout in playouts:
        label = agenda.playout_label(playout)
        forum = event.forum(playout.forum_id)
        assert forum is not None
        session = next(s for s in forum.sessions if s.id == playout.session_id)
        speaker = event.speakers[playout.speaker_id].name.en
        assert label.endswith(" — " + speaker) and len(label) <= 64, label
        assert label.startswith(session.title.en[:20]), (label, session.title.en)
        assert playout.video.name not in label
        assert agenda.label_for_video(playout.forum_id, playout.video.name) == label
    assert agenda.label_for_video(playouts[0].forum_id, "someone-elses-upload.mp4") is None


def test_a_long_title_is_shortened_never_the_speaker() -> None:
    from pathlib import Path

    from rooms.models import Forum, ForumKind, Session, Speaker, SpeakerMode, Text

    start = dt.datetime(2026, 11, 27, 9, tzinfo=dt.timezone.utc)
    session = Session("s", Text("A very long session title " * 4), start, start + dt.timedelta(hours=1), ("sp",))
    event = Event("e", Text("E"), "UTC", (start.date(),), (Forum("f", Text("F"), ForumKind.SUB, 10, (session,)),),
                  {"sp": Speaker("sp", Text("Zhang Min"), SpeakerMode.RECORDED, video=Path("talk.mp4"))})
    label = AgendaClock(event).playout_label(ScheduledPlayout("f", "s", "sp", Path("talk.mp4"), start))
    assert len(label) <= 64 and label.endswith("… — Zhang Min") and label.startswith("A very long"), label
