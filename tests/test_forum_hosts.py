"""ForumHosts and ForumHost on one node, in-process: a real MediaPlane
(watched through a subclass that logs what the hosts tell it), a real
MediaBridge, media library and program outputs, real ffmpeg for the
slates, a MemoryStore room service. The room events are the only input
of the pump: writes by "another node" reach the switcher through them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from config.settings import Settings, ffmpeg_path
from rooms.errors import RoomError
from rooms.forum_control import ForumControl, JsonObject
from rooms.memory_store import MemoryStore
from rooms.models import (Event, Forum, ForumKind, MediaSource, ProgramState, RestreamDestination, Role,
                          SourceKind, SourceState, Text)
from rooms.service import RoomService
from rooms.tokens import Grant
from streaming.forum_host import ForumHost, HostSettings, HostState, slate_id
from streaming.forum_hosts import ForumHosts, NotHostedHere
from streaming.forum_outputs import OutputProfile, ProgramOutputs
from streaming.media_bridge import MediaBridge
from streaming.media_config import MediaConfig
from streaming.media_library import MediaLibrary
from streaming.media_plane import MediaPlane
from streaming.program_switcher import Phase
from streaming.rtp_source import SourceFeed
from tests.eventually import eventually
from tests.processes import free_port_block

pytestmark = pytest.mark.timeout(120)

FORUM = "ai"
OTHER = "web"
EVENT = Event(id="summit", name=Text("Summit"), timezone="UTC", days=(),
              forums=(Forum(FORUM, Text("AI"), ForumKind.SUB, capacity=10),
                      Forum(OTHER, Text("Web"), ForumKind.SUB, capacity=10,
                    restreams=(RestreamDestination("yt", "YouTube", "rtmp://127.0.0.1:1/live", "FC_TEST_KEY"),))))
OPERATOR = Grant(role=Role.OPERATOR, forums=None, name="Op", subject="op", expires_at=time.time() + 3600)
VIEWER = Grant(role=Role.VIEWER, forums=None, name="V", subject="v", expires_at=time.time() + 3600)


class WatchedPlane(MediaPlane):
    """The real plane; `log` keeps what it was told, in order."""

    def __init__(self, config: MediaConfig) -> None:
        super().__init__(config)
        self.log: list[tuple[str, str, str | None]] = []

    def add_feed(self, forum_id: str, feed: SourceFeed) -> None:
        self.log.append(("add", forum_id, feed.source_id))
        super().add_feed(forum_id, feed)

    def remove_feed(self, forum_id: str, source_id: str) -> None:
        self.log.append(("remove", forum_id, source_id))
        super().remove_feed(forum_id, source_id)

    def set_program(self, forum_id: str, source_id: str | None) -> None:
        self.log.append(("program", forum_id, source_id))
        super().set_program(forum_id, source_id)

    def cuts(self, forum_id: str) -> list[str | None]:
        return [source for kind, forum, source in self.log if kind == "program" and forum == forum_id]


class Pushes:
    """The ForumNotifier side: what would go to socket.io."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, JsonObject]] = []

    def playouts(self, forum_id: str, body: JsonObject) -> None:
        self.log.append(("playouts", forum_id, body))

    def restreams(self, forum_id: str, body: JsonObject) -> None:
        self.log.append(("restreams", forum_id, body))

    def recording(self, forum_id: str, body: JsonObject) -> None:
        self.log.append(("recording", forum_id, body))

    def media_job(self, forum_id: str, body: JsonObject, finished: bool) -> None:
        self.log.append(("media_job", forum_id, body))


@dataclasses.dataclass
class Rig:
    rooms: RoomService
    plane: WatchedPlane
    hosts: ForumHosts
    pushes: Pushes
    bridge: MediaBridge
    settings_for: Callable[[str], HostSettings]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = MemoryStore(node_id="n1")
    await store.start()
    rooms = RoomService(EVENT, store, "n1")
    plane = WatchedPlane(MediaConfig(ice_addresses=("127.0.0.1",), slate_grace=0.05))
    await plane.start()
    bridge = MediaBridge(plane, rooms, "n1")
    await bridge.start()
    ffmpeg = ffmpeg_path(Settings())
    library = MediaLibrary(tmp_path / "media", ffmpeg=ffmpeg)
    outputs = ProgramOutputs(plane.program_bus, OutputProfile(), ffmpeg_path=ffmpeg)
    rtmp, srt = free_port_block(4), free_port_block(4)

    def settings_for(forum_id: str) -> HostSettings:
        index = [f.id for f in EVENT.forums].index(forum_id)
        return HostSettings(ffmpeg=ffmpeg, slate_grace=0.05, ingest_host="127.0.0.1", public_host="127.0.0.1",
                            rtmp_port=rtmp + 1 + index, srt_port=srt + 1 + index, venue_secret="test-secret",
                            secrets_dir=tmp_path / "secrets")

    pushes = Pushes()
    hosts = ForumHosts(rooms, plane, bridge, library, outputs, settings_for, pushes,
                       environ={"FC_TEST_KEY": "event-file-key"})
    await hosts.start()
    try:
        yield Rig(rooms, plane, hosts, pushes, bridge, settings_for)
    finally:
        await hosts.stop()
        await library.stop()
        await outputs.close()
        await bridge.stop()
        await plane.stop()
        await store.stop()


def test_forum_hosts_is_the_forum_control_facade() -> None:
    hosts: ForumControl = ForumHosts.__new__(ForumHosts)  # mypy checks the Protocol; here the names
    members = {name for name in ForumControl.__dict__ if not name.startswith("_")}
    assert members and all(callable(getattr(hosts, name)) for name in members)


async def test_a_host_starts_with_its_slate_and_stops_in_reverse_once(rig: Rig) -> None:
    host = await rig.hosts.host(FORUM)
    assert host.state is HostState.RUNNING and host.started.is_set() and not host.exited.is_set()
    assert rig.hosts.hosted() == [FORUM]
    # the slate joins the plane before the switcher's first cut (the program is never empty)
    first = [entry for entry in rig.plane.log if entry[1] == FORUM][:2]
    assert first == [("add", FORUM, slate_id(FORUM)), ("program", FORUM, None)]
    assert rig.plane.feed(slate_id(FORUM)) is not None
    # every concurrent stop awaits the same one
    await asyncio.gather(host.stop(), host.stop(), rig.hosts.release(FORUM), host.stop())
    assert host.state is HostState.STOPPED and host.exited.is_set()
    assert rig.plane.feed(slate_id(FORUM)) is None
    assert [e for e in rig.plane.log if e[0] == "remove"] == [("remove", FORUM, slate_id(FORUM))]
    assert rig.hosts.hosted() == []
    await host.stop()  # idempotent after the fact too
    with pytest.raises(RoomError) as refused:
        await host.take(OPERATOR, None, None)
    assert refused.value.code == "unavailable"
    again = await rig.hosts.host(FORUM)  # the next need starts a new host
    assert again is not host and again.state is HostState.RUNNING


async def test_concurrent_first_needs_start_one_host(rig: Rig) -> None:
    first, second, third = await asyncio.gather(rig.hosts.host(FORUM), rig.hosts.host(FORUM),
                                                rig.hosts.host(FORUM))
    assert first is second is third
    assert [e for e in rig.plane.log if e == ("add", FORUM, slate_id(FORUM))] == [("add", FORUM, slate_id(FORUM))]
    with pytest.raises(RoomError) as unknown:
        await rig.hosts.host("nope")
    assert unknown.value.code == "not_found"


async def test_the_pump_follows_room_events_from_other_writers(rig: Rig) -> None:
    """Moved from the Switchboard's test: a source appears and another
    node's operator takes it; only the room events tell this node."""
    await rig.rooms.register_source(FORUM, OPERATOR, MediaSource("a", FORUM, SourceKind.VENUE, "A",
                                                                 state=SourceState.LIVE))
    await eventually(lambda: rig.hosts.get(FORUM) is not None, timeout=60, what="the forum hosted by its event")
    await rig.rooms.take(FORUM, OPERATOR, "a")
    await eventually(lambda: rig.plane.cuts(FORUM)[-1:] == ["a"], timeout=20, interval=0.01, what="the cut to a")
    await rig.rooms.update_source_state(FORUM, "a", SourceState.LOST)

    async def slate_on_air() -> bool:
        return (await rig.rooms.program(FORUM)).slate

    await eventually(slate_on_air, timeout=20, interval=0.02, what="the slate covering a")
    host = rig.hosts.get(FORUM)
    assert host is not None and host.switcher.phase is Phase.COVERED
    assert rig.hosts.get(OTHER) is None, "only the forum that had an event is hosted"


async def test_the_facade_answers_plain_data_and_room_errors(rig: Rig) -> None:
    await rig.rooms.register_source(FORUM, OPERATOR, MediaSource("a", FORUM, SourceKind.VENUE, "A",
                                                                 state=SourceState.LIVE))
    state = await rig.hosts.take(FORUM, OPERATOR, "a")
    assert isinstance(state, ProgramState) and state.program == "a"
    assert ProgramState(**dataclasses.asdict(state)) == state  # what a forwarder carries round-trips
    assert (await rig.hosts.set_manual(FORUM, OPERATOR, True)).manual is True
    assert (await rig.hosts.cut_to_slate(FORUM, OPERATOR)).slate is True
    assert await rig.hosts.playouts(FORUM, OPERATOR) == {"forum_id": FORUM, "playouts": []}
    assert await rig.hosts.restreams(FORUM, OPERATOR) == {"forum_id": FORUM, "restreams": []}
    refusals = {
        "viewer take": rig.hosts.take(FORUM, VIEWER, "a"),
        "viewer ingest": rig.hosts.ingest(FORUM, VIEWER),
        "unknown media": rig.hosts.start_playout(FORUM, OPERATOR, "no-such-item"),
        "unknown playout": rig.hosts.stop_playout(FORUM, OPERATOR, "rec-nope"),
        "unknown restream": rig.hosts.start_restream(FORUM, OPERATOR, "nope"),
        "bad restream": rig.hosts.add_restream(FORUM, OPERATOR, "", "rtmp://127.0.0.1/x", "key"),
        "no recorder": rig.hosts.start_recording(FORUM, OPERATOR),
        "unknown forum": rig.hosts.take("nope", OPERATOR, "a"),
    }
    codes = {}
    for what, call in refusals.items():
        with pytest.raises(RoomError) as refused:
            await call
        codes[what] = refused.value.code
    assert codes == {"viewer take": "forbidden", "viewer ingest": "forbidden", "unknown media": "not_found",
                     "unknown playout": "not_found", "unknown restream": "not_found", "bad restream": "invalid",
                     "no recorder": "unavailable", "unknown forum": "not_found"}


async def test_a_restream_added_through_the_facade_is_pushed_without_its_key(rig: Rig) -> None:
    status = await rig.hosts.add_restream(FORUM, OPERATOR, "Platform", "rtmp://127.0.0.1:1/live", "s3cret-key")
    assert status["name"] == "Platform" and "s3cret-key" not in repr(status)
    [(kind, forum_id, body)] = [p for p in rig.pushes.log if p[0] == "restreams"]
    assert forum_id == FORUM and "s3cret-key" not in repr(body)
    assert all("url" not in item for item in body["restreams"])  # type: ignore[union-attr]
    await rig.hosts.remove_restream(FORUM, OPERATOR, str(status["id"]))
    assert (await rig.hosts.restreams(FORUM, OPERATOR))["restreams"] == []


async def test_host_state_changes_are_logged_and_told(rig: Rig) -> None:
    told: list[tuple[str, HostState]] = []
    host = ForumHost(EVENT.forums[1], rig.rooms, rig.plane, rig.bridge, rig.hosts.library,
                     rig.hosts.outputs.forum(OTHER), rig.settings_for(OTHER),
                     on_state=lambda forum_id, state: told.append((forum_id, state)))
    await host.start()
    with pytest.raises(RuntimeError):
        await host.start()  # once
    await asyncio.gather(host.stop(), host.stop())
    assert [s for _, s in told] == [HostState.STARTING, HostState.RUNNING, HostState.STOPPING, HostState.STOPPED]


async def test_event_destinations_load_when_an_output_came_first(rig: Rig) -> None:
    """The recorder or HLS may make a forum's outputs before its host:
    the host still adds the event file's destinations, once."""
    rig.hosts.outputs.forum(OTHER)  # what Recorder.start's acquire does first
    listed = await rig.hosts.restreams(OTHER, OPERATOR)
    assert [r["id"] for r in listed["restreams"]] == ["yt"]  # type: ignore[index, union-attr]
    await rig.hosts.release(OTHER)
    assert OTHER not in rig.hosts.outputs.forums, "released with its host"
    again = await rig.hosts.restreams(OTHER, OPERATOR)
    assert [r["id"] for r in again["restreams"]] == ["yt"]  # type: ignore[index, union-attr]
    assert "event-file-key" not in repr(again) and "event-file-key" not in repr(rig.pushes.log)


async def test_a_forum_another_node_hosts_is_not_hosted_here(rig: Rig) -> None:
    asked: list[str] = []

    async def only_ai(forum_id: str) -> bool:
        asked.append(forum_id)
        return forum_id == FORUM

    rig.hosts.may_host = only_ai
    with pytest.raises(NotHostedHere) as refused:
        await rig.hosts.take(OTHER, OPERATOR, None)
    assert refused.value.code == "unavailable" and refused.value.forum_id == OTHER
    assert await rig.hosts.slot_host(OTHER) is None
    # its room events are left to the node that hosts it; ours still host ours
    await rig.rooms.register_source(OTHER, OPERATOR, MediaSource("w", OTHER, SourceKind.VENUE, "W",
                                                                 state=SourceState.LIVE))
    await rig.rooms.register_source(FORUM, OPERATOR, MediaSource("a", FORUM, SourceKind.VENUE, "A",
                                                                 state=SourceState.LIVE))
    await eventually(lambda: rig.hosts.get(FORUM) is not None, timeout=60, what="our forum hosted")
    assert rig.hosts.hosted() == [FORUM] and asked.count(OTHER) >= 3
    assert rig.plane.cuts(OTHER) == [], "nothing of the other node's forum on this plane"


async def test_stopping_the_node_while_a_host_starts_leaves_none_running(rig: Rig) -> None:
    starting = asyncio.ensure_future(rig.hosts.host(FORUM))
    await eventually(lambda: FORUM in rig.hosts._starting, timeout=20, interval=0.001, what="the start under way")
    await rig.hosts.stop()
    with pytest.raises(RoomError) as refused:
        await starting
    assert refused.value.code == "unavailable"
    assert rig.hosts.hosted() == [] and rig.plane.feed(slate_id(FORUM)) is None
    with pytest.raises(RoomError):
        await rig.hosts.host(FORUM)  # a stopped registry hosts nothing more


async def test_a_host_released_while_it_starts_is_stopped(rig: Rig) -> None:
    starting = asyncio.ensure_future(rig.hosts.host(FORUM))
    await eventually(lambda: FORUM in rig.hosts._starting, timeout=20, interval=0.001, what="the start under way")
    await rig.hosts.release(FORUM)
    host = await starting
    assert host.state is HostState.STOPPED and rig.hosts.hosted() == []
    assert rig.plane.feed(slate_id(FORUM)) is None
