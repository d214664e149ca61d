"""MediaBridge in-process: a fake media plane (the seam is its public
API), the real RoomService on a MemoryStore. Publishers become sources,
their states reach the rooms (the bridge never decides the program),
media refusals become RoomErrors, and a source lost for too long
is ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config.settings import SAMPLE_EVENT
from rooms import events as room_events
from rooms.errors import RoomError
from rooms.event_file import load_event
from rooms.memory_store import MemoryStore
from rooms.models import Role, SourceKind, SourceState
from rooms.service import RoomService
from rooms.store import Subscription
from rooms.tokens import TokenService
from streaming.media_bridge import MediaBridge
from streaming.media_error import MediaError
from streaming.media_plane import SourceChange

pytestmark = pytest.mark.timeout(30)

FORUM = "ai"


class FakePlane:
    """Records calls; `fail_with` makes the next publish refuse."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.programs: list[tuple[str, str | None]] = []
        self.unpublished: list[str] = []
        self.fail_with: MediaError | None = None

    async def publish(self, forum_id: str, source_id: str, offer_sdp: str) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        return "v=0\r\nanswer"

    async def unpublish(self, source_id: str) -> None:
        self.unpublished.append(source_id)

    async def watch(self, forum_id: str, viewer_id: str, offer_sdp: str, source_id: str | None = None) -> str:
        return "v=0\r\nviewer answer"

    async def leave(self, viewer_id: str) -> None:
        pass

    def set_program(self, forum_id: str, source_id: str | None) -> None:
        self.programs.append((forum_id, source_id))

    def add_source_listener(self, listener: Any) -> Any:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def add_media_listener(self, listener: Any) -> Any:
        self.listeners.append(listener)  # MediaReports share the bridge's queue
        return lambda: self.listeners.remove(listener)

    def change(self, source_id: str, state: SourceState) -> None:
        for listener in list(self.listeners):
            listener(SourceChange(FORUM, source_id, state))


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakePlane, RoomService, MediaBridge, Subscription]]:
    store = MemoryStore(node_id="n1")
    await store.start()
    rooms = RoomService(load_event(SAMPLE_EVENT), store, "n1")
    plane = FakePlane()
    bridge = MediaBridge(plane, rooms, "n1", lost_timeout=0.2)
    await bridge.start()
    events = rooms.events()
    try:
        yield plane, rooms, bridge, events
    finally:
        events.close()
        await bridge.stop()
        await store.stop()


def grant(role: Role = Role.SPEAKER) -> Any:
    tokens = TokenService("x" * 40)
    return tokens.verify(tokens.issue(role, [FORUM], "Zhang Min"))


async def next_event(events: Subscription, kind: type, predicate: Any = lambda e: True) -> Any:
    async def find() -> Any:
        async for event in events:
            if isinstance(event, kind) and predicate(event):
                return event
    return await asyncio.wait_for(find(), 20)


async def test_states_reach_the_rooms_and_the_bridge_never_decides_the_program(setup: Any) -> None:
    """The program policy is the switcher's alone (rooms/program_policy.py):
    the bridge only translates media states into the rooms."""
    plane, rooms, bridge, events = setup
    first = await bridge.publish(FORUM, grant(), "Zhang Min", "p1", "v=0")
    [source] = await rooms.sources(FORUM)
    assert (source.id, source.kind, source.state, source.node_id) == (
        first.source_id, SourceKind.LIVE, SourceState.CONNECTING, "n1")

    plane.change(first.source_id, SourceState.LIVE)
    await next_event(events, room_events.SourceUpdated, lambda e: e.source.state is SourceState.LIVE)
    assert (await rooms.sources(FORUM))[0].state is SourceState.LIVE
    second = await bridge.publish(FORUM, grant(), "Li Wei", "p2", "v=0")
    plane.change(second.source_id, SourceState.LIVE)
    await next_event(events, room_events.SourceUpdated,
                     lambda e: e.source.id == second.source_id and e.source.state is SourceState.LIVE)
    await bridge.unpublish(second.source_id)
    await bridge.unpublish(first.source_id)
    assert plane.programs == []
    assert (await rooms.program(FORUM)).version == 0, "the bridge wrote no program"
    assert plane.unpublished == [second.source_id, first.source_id]
    assert await rooms.sources(FORUM) == []


async def test_a_media_refusal_is_a_room_error_and_leaves_no_source(setup: Any) -> None:
    plane, rooms, bridge, _ = setup
    plane.fail_with = MediaError("unsupported_codec", "video must be H.264 or VP8")
    with pytest.raises(RoomError) as refused:
        await bridge.publish(FORUM, grant(), "Zhang Min", "p1", "v=0")
    assert refused.value.code == "unsupported_codec" and "H.264" in refused.value.message
    assert await rooms.sources(FORUM) == []
    plane.fail_with = MediaError("weird", "?")  # an unknown code is not passed through
    with pytest.raises(RoomError) as odd:
        await bridge.publish(FORUM, grant(), "Zhang Min", "p1", "v=0")
    assert odd.value.code == "unavailable"


async def test_a_viewer_grant_cannot_publish(setup: Any) -> None:
    plane, rooms, bridge, _ = setup
    with pytest.raises(RoomError) as refused:
        await bridge.publish(FORUM, grant(Role.VIEWER), "Guest", "p1", "v=0")
    assert refused.value.code == "forbidden"
    assert await rooms.sources(FORUM) == []


async def test_a_source_lost_too_long_is_ended_and_its_edge_told(setup: Any) -> None:
    plane, rooms, bridge, events = setup
    ended: asyncio.Queue[str] = asyncio.Queue()

    async def on_ended(source_id: str) -> None:
        ended.put_nowait(source_id)

    bridge.on_source_ended(on_ended)
    back = await bridge.publish(FORUM, grant(), "Comes back", "p1", "v=0")
    gone = await bridge.publish(FORUM, grant(), "Goes away", "p2", "v=0")
    for source in (back, gone):
        plane.change(source.source_id, SourceState.LIVE)
        plane.change(source.source_id, SourceState.LOST)
    plane.change(back.source_id, SourceState.LIVE)  # back within the timeout: kept
    assert await asyncio.wait_for(ended.get(), 20) == gone.source_id
    assert plane.unpublished == [gone.source_id]
    assert [s.id for s in await rooms.sources(FORUM)] == [back.source_id]
    assert ended.empty()
