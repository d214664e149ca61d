"""ProgramSwitcher's policy without a network: a MemoryStore RoomService,
a recording stand-in for the media plane and a hand-moved timer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from rooms.errors import RoomError
from rooms.memory_store import MemoryStore
from rooms.models import Event, Forum, ForumKind, MediaSource, Role, SourceKind, SourceState, Text
from rooms.service import RoomService
from rooms.tokens import Grant
from streaming.program_switcher import Phase, ProgramSwitcher

FORUM = "ai"
EVENT = Event(id="summit", name=Text("Summit"), timezone="UTC", days=(),
              forums=(Forum(FORUM, Text("AI"), ForumKind.SUB, capacity=10),))
OPERATOR = Grant(role=Role.OPERATOR, forums=None, name="Op", subject="op", expires_at=time.time() + 3600)
SPEAKER = Grant(role=Role.SPEAKER, forums=None, name="Sp", subject="sp", expires_at=time.time() + 3600)
VIEWER = Grant(role=Role.VIEWER, forums=None, name="V", subject="v", expires_at=time.time() + 3600)


class FakeTimers:
    """call_later that fires only when the test says time has passed."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[list[object]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> "FakeTimers.Handle":
        entry: list[object] = [self.now + delay, callback, False]
        self.pending.append(entry)
        return FakeTimers.Handle(entry)

    class Handle:
        def __init__(self, entry: list[object]) -> None:
            self.entry = entry

        def cancel(self) -> None:
            self.entry[2] = True

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [e for e in self.pending if not e[2] and float(e[0]) <= self.now]  # type: ignore[arg-type]
        self.pending = [e for e in self.pending if e not in due and not e[2]]
        for entry in due:
            entry[1]()  # type: ignore[operator]


class FakeMedia:
    def __init__(self) -> None:
        self.calls: list[str | None] = []

    def set_program(self, forum_id: str, source_id: str | None) -> None:
        assert forum_id == FORUM
        self.calls.append(source_id)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[RoomService, ProgramSwitcher, FakeMedia, FakeTimers]]:
    store = MemoryStore(node_id="n1")
    await store.start()
    rooms = RoomService(EVENT, store, "n1")
    media = FakeMedia()
    timers = FakeTimers()
    switcher = ProgramSwitcher(FORUM, rooms, media, slate_grace=1.0, call_later=timers.call_later)
    await switcher.start()
    yield rooms, switcher, media, timers
    await switcher.stop()
    await store.stop()


async def add_source(rooms: RoomService, switcher: ProgramSwitcher, source_id: str,
                     state: SourceState = SourceState.LIVE, kind: SourceKind = SourceKind.VENUE) -> None:
    source = MediaSource(source_id, FORUM, kind, source_id.upper(), state=state)
    await rooms.register_source(FORUM, OPERATOR, source)
    switcher.on_source(source)


async def set_state(rooms: RoomService, switcher: ProgramSwitcher, source_id: str, state: SourceState) -> None:
    await rooms.update_source_state(FORUM, source_id, state)
    switcher.on_source_state(source_id, state)
    await switcher.idle()


async def test_take_drives_media_and_rooms(rig: tuple) -> None:
    rooms, switcher, media, _ = rig
    await add_source(rooms, switcher, "a")
    await add_source(rooms, switcher, "b")
    state = await switcher.take(OPERATOR, "a")
    assert state.program == "a" and not state.slate
    assert switcher.phase is Phase.ON_AIR and media.calls[-1] == "a"
    await switcher.set_preview(OPERATOR, "b")
    await switcher.take_preview(OPERATOR)
    program = await rooms.program(FORUM)
    assert program.program == "b" and media.calls[-1] == "b"
    assert program.preview == "a", "program and preview swap, as on a vision mixer"
    await switcher.cut_to_slate(OPERATOR)
    assert switcher.phase is Phase.SLATE and media.calls[-1] is None
    assert (await rooms.program(FORUM)).slate


async def test_viewer_and_speaker_cannot_take_and_unknown_source_is_not_found(rig: tuple) -> None:
    rooms, switcher, media, _ = rig
    await add_source(rooms, switcher, "a", kind=SourceKind.RECORDED)  # not followed: waits for a take
    for grant in (VIEWER, SPEAKER):
        with pytest.raises(RoomError) as refused:
            await switcher.take(grant, "a")
        assert refused.value.code == "forbidden"
    with pytest.raises(RoomError) as missing:
        await switcher.take(OPERATOR, "nope")
    assert missing.value.code == "not_found"
    assert media.calls == [None]  # only start() told the media plane anything
    assert switcher.phase is Phase.SLATE


async def test_lost_program_is_covered_after_grace_and_returns(rig: tuple) -> None:
    rooms, switcher, media, timers = rig
    await add_source(rooms, switcher, "a")
    await switcher.take(OPERATOR, "a")
    await set_state(rooms, switcher, "a", SourceState.LOST)
    assert switcher.phase is Phase.GRACE
    timers.advance(0.9)
    assert switcher.phase is Phase.GRACE and (await rooms.program(FORUM)).program == "a"
    timers.advance(0.2)
    await switcher.idle()
    assert switcher.phase is Phase.COVERED and switcher.held == "a"
    assert (await rooms.program(FORUM)).slate
    await set_state(rooms, switcher, "a", SourceState.LIVE)
    assert switcher.phase is Phase.ON_AIR
    program = await rooms.program(FORUM)
    assert program.program == "a" and not program.slate
    assert media.calls[-1] == "a"


async def test_back_inside_grace_never_shows_slate(rig: tuple) -> None:
    rooms, switcher, _, timers = rig
    await add_source(rooms, switcher, "a")
    await switcher.take(OPERATOR, "a")
    version = (await rooms.program(FORUM)).version
    await set_state(rooms, switcher, "a", SourceState.LOST)
    timers.advance(0.5)
    await set_state(rooms, switcher, "a", SourceState.LIVE)
    timers.advance(5)
    await switcher.idle()
    assert switcher.phase is Phase.ON_AIR
    assert (await rooms.program(FORUM)).version == version  # nobody wrote a cover


async def test_operator_take_while_covered_wins(rig: tuple) -> None:
    rooms, switcher, media, timers = rig
    await add_source(rooms, switcher, "a")
    await add_source(rooms, switcher, "b")
    await switcher.take(OPERATOR, "a")
    await set_state(rooms, switcher, "a", SourceState.LOST)
    timers.advance(1.1)
    await switcher.idle()
    await switcher.take(OPERATOR, "b")
    await set_state(rooms, switcher, "a", SourceState.LIVE)
    assert switcher.held == "b" and (await rooms.program(FORUM)).program == "b"
    assert media.calls[-1] == "b"


async def test_take_during_grace_cancels_the_cover(rig: tuple) -> None:
    rooms, switcher, _, timers = rig
    await add_source(rooms, switcher, "a")
    await add_source(rooms, switcher, "b")
    await switcher.take(OPERATOR, "a")
    await set_state(rooms, switcher, "a", SourceState.LOST)
    await switcher.take(OPERATOR, "b")
    timers.advance(2)
    await switcher.idle()
    assert switcher.phase is Phase.ON_AIR and (await rooms.program(FORUM)).program == "b"


async def test_manual_mode_refuses_agenda_takes(rig: tuple) -> None:
    rooms, switcher, media, _ = rig
    await add_source(rooms, switcher, "rec", kind=SourceKind.RECORDED)
    await switcher.set_manual(OPERATOR, True)
    assert await switcher.take_system("rec", "agenda") is None
    assert (await rooms.program(FORUM)).program is None
    await switcher.set_manual(OPERATOR, False)
    state = await switcher.take_system("rec", "agenda")
    assert state is not None and state.program == "rec" and media.calls[-1] == "rec"


async def test_unattended_forum_follows_a_new_speaker_but_not_after_a_cut(rig: tuple) -> None:
    rooms, switcher, _, _ = rig
    await add_source(rooms, switcher, "sp", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "sp", SourceState.LIVE)
    assert (await rooms.program(FORUM)).program == "sp"
    await switcher.cut_to_slate(OPERATOR)
    await add_source(rooms, switcher, "sp2", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "sp2", SourceState.LIVE)
    assert (await rooms.program(FORUM)).program is None


async def test_source_removed_while_covered_leaves_the_slate(rig: tuple) -> None:
    rooms, switcher, media, timers = rig
    await add_source(rooms, switcher, "a")
    await switcher.take(OPERATOR, "a")
    await set_state(rooms, switcher, "a", SourceState.LOST)
    timers.advance(1.5)
    await switcher.idle()
    await rooms.unregister_source(FORUM, "a")
    switcher.on_source_removed("a")
    assert switcher.phase is Phase.SLATE and media.calls[-1] is None


# the room-event pump's test (other writers' takes and covers) is in test_forum_hosts.py


async def test_only_the_node_holding_the_source_covers_it(rig: tuple) -> None:
    rooms, _, _, _ = rig
    timers = FakeTimers()
    other = ProgramSwitcher(FORUM, rooms, FakeMedia(), slate_grace=1.0, call_later=timers.call_later,
                            node_id="n2")
    await other.start()
    source = MediaSource("a", FORUM, SourceKind.VENUE, "A", state=SourceState.LIVE, node_id="n1")
    await rooms.register_source(FORUM, OPERATOR, source)
    other.on_source(source)
    state = await rooms.take(FORUM, OPERATOR, "a")
    other.on_program_changed(state, "Op")
    other.on_source_state("a", SourceState.LOST)
    assert other.phase is Phase.GRACE and timers.pending == []  # n1 covers it, not n2
    await other.stop()


async def test_a_take_of_what_is_on_air_makes_it_the_operators_choice(rig: tuple) -> None:
    """The unattended forum follows its newest live speaker; an operator's take
    of that same source changes no version but is a choice that stands."""
    rooms, switcher, media, _ = rig
    await add_source(rooms, switcher, "a", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "a", SourceState.LIVE)
    assert (await rooms.program(FORUM)).program == "a" and switcher.claim.value == "nobody"
    await switcher.take(OPERATOR, "a")
    assert switcher.claim.value == "operator"
    await add_source(rooms, switcher, "b", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "b", SourceState.LIVE)
    assert (await rooms.program(FORUM)).program == "a" and media.calls[-1] == "a"


async def test_from_every_phase_the_newest_live_source_goes_on_air(rig: tuple) -> None:
    """Issue 14 item 2 through the applier: covered (A killed), then B live."""
    rooms, switcher, media, timers = rig
    await add_source(rooms, switcher, "a", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "a", SourceState.LIVE)
    await set_state(rooms, switcher, "a", SourceState.LOST)
    timers.advance(1.5)
    await switcher.idle()
    assert switcher.phase is Phase.COVERED and (await rooms.program(FORUM)).slate
    await add_source(rooms, switcher, "b", state=SourceState.CONNECTING, kind=SourceKind.LIVE)
    await set_state(rooms, switcher, "b", SourceState.LIVE)
    assert (await rooms.program(FORUM)).program == "b" and media.calls[-1] == "b"
    await rooms.unregister_source(FORUM, "a")
    switcher.on_source_removed("a")
    assert switcher.held == "b" and media.calls[-1] == "b"
