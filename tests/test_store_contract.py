"""One contract, every store: MemoryStore and RedisStore (real Redis).

`nodes(n)` gives n handles that share state: n RedisStores on one Redis
(n nodes), or the one MemoryStore n times (the embedded store is one
node, so "two nodes" are two callers of it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from rooms.chat import ChatKind, ChatMessage
from rooms.errors import RoomError
from rooms.events import ProgramChanged, ViewerCountChanged
from rooms.memory_store import MemoryStore
from rooms.models import MediaSource, Participant, ProgramState, Role, SourceKind, SourceMedia, SourceState
from rooms.store import Counts, Store

Nodes = Callable[..., Awaitable[list[Store]]]
DEADLINE_S = 5.0


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    created: list[Store] = []

    async def make(n: int = 1, **options: Any) -> list[Store]:
        if not redis_url:
            store: Store = MemoryStore("node-0", **options)
            await store.start()
            created.append(store)
            return [store] * n
        from signaling.redis_store import RedisStore

        made = [RedisStore(redis_url, f"node-{i}", prefix="contract", **options) for i in range(n)]
        for store in made:
            await store.start()
        created.extend(made)
        return list(made)

    yield make
    for store in created:
        await store.stop()


def viewer(pid: str, node: str = "node-0", forum: str = "f1", role: Role = Role.VIEWER) -> Participant:
    return Participant(pid, forum, role, f"Guest {pid}", node, time.time())


def source(sid: str, node: str = "node-0", forum: str = "f1") -> MediaSource:
    return MediaSource(sid, forum, SourceKind.LIVE, f"Speaker {sid}", SourceState.LIVE, node)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll a condition that only time changes (a TTL), with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- participants and capacity -----------------------------------------------


async def test_200_concurrent_joins_admit_exactly_capacity(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    results = await asyncio.gather(*(store.admit(viewer(f"v{i}"), 150) for i in range(200)))
    assert sum(results) == 150
    assert await store.counts("f1") == Counts(viewers=150, total=150)
    assert len(await store.participants("f1")) == 150


async def test_200_joins_split_over_two_nodes_admit_exactly_capacity(nodes: Nodes) -> None:
    a, b = await nodes(2)
    results = await asyncio.gather(
        *(
            (a if i % 2 else b).admit(viewer(f"v{i}", node=(a if i % 2 else b).node_id), 150)
            for i in range(200)
        )
    )
    assert sum(results) == 150
    assert await a.counts("f1") == await b.counts("f1") == Counts(150, 150)
    admitted = {f"v{i}" for i, ok in enumerate(results) if ok}
    assert {p.id for p in await b.participants("f1")} == admitted


async def test_staff_are_never_locked_out_and_take_no_seat(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    assert await store.admit(viewer("v1"), 1)
    assert not await store.admit(viewer("v2"), 1)
    for role in (Role.SPEAKER, Role.OPERATOR, Role.ADMIN):
        assert await store.admit(viewer(f"staff-{role}", role=role), 1)
    assert await store.counts("f1") == Counts(viewers=1, total=4)
    # a viewer already seated who joins again keeps the seat, even when full
    assert await store.admit(viewer("v1"), 1)
    assert await store.counts("f1") == Counts(1, 4)
    # the other forum is untouched
    assert await store.counts("f2") == Counts(0, 0)


async def test_leave_frees_a_seat(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    assert await store.admit(viewer("v1"), 1)
    assert not await store.admit(viewer("v2"), 1)
    removed = await store.remove_participant("f1", "v1")
    assert removed is not None and removed.id == "v1"
    assert await store.remove_participant("f1", "v1") is None
    assert await store.get_participant("f1", "v1") is None
    assert await store.admit(viewer("v2"), 1)
    assert [p.id for p in await store.participants("f1")] == ["v2"]


async def test_participant_round_trips_exactly(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    p = Participant("p-ü", "f1", Role.SPEAKER, "李 雷", "node-0", 1764255799.123456)
    assert await store.admit(p, 10)
    assert await store.get_participant("f1", "p-ü") == p
    assert await store.participants("f1") == [p]


# --- sources -------------------------------------------------------------------


async def test_sources_put_replace_remove(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    s = source("cam")
    assert await store.put_source(s) is None
    live = MediaSource("cam", "f1", SourceKind.LIVE, "Speaker cam", SourceState.LOST, "node-0")
    assert await store.put_source(live) == s
    assert await store.get_source("f1", "cam") == live
    assert await store.sources("f1") == [live]
    assert await store.remove_source("f1", "cam") == live
    assert await store.remove_source("f1", "cam") is None
    assert await store.sources("f1") == []



async def test_a_source_keeps_its_media(nodes: Nodes) -> None:
    """What a source sends and how it is handled survives the store (JSON in Redis)."""
    (store,) = await nodes(1)
    media = SourceMedia(video_codec="h264", profile="high", profile_level_id="64001f", width=1280, height=720,
                        frame_rate=29.97, b_frames=True, handling="transcode", reason="B-frames",
                        sent_profile_level_id="42c01f")
    venue = MediaSource("venue-f1", "f1", SourceKind.VENUE, "Venue", SourceState.LIVE, "node-0", media=media)
    await store.put_source(venue)
    assert await store.get_source("f1", "venue-f1") == venue
    audio_only = MediaSource("a", "f1", SourceKind.LIVE, "Audio", media=SourceMedia(video_codec=None))
    await store.put_source(audio_only)
    assert (await store.get_source("f1", "a")) == audio_only


# --- program state -------------------------------------------------------------


async def test_program_starts_on_slate_at_version_0(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    assert await store.get_program("f1") == ProgramState("f1")


async def test_concurrent_takes_never_lose_a_version(nodes: Nodes) -> None:
    a, b = await nodes(2)
    states = await asyncio.gather(
        *((a if i % 2 else b).update_program("f1", None, program=f"s{i}") for i in range(40))
    )
    assert sorted(s.version for s in states) == list(range(1, 41))
    final = await a.get_program("f1")
    assert final.version == 40
    assert final == max(states, key=lambda s: s.version)
    assert final.slate is False


async def test_concurrent_takes_on_one_version_let_exactly_one_win(nodes: Nodes) -> None:
    a, b = await nodes(2)
    results = await asyncio.gather(
        *((a if i % 2 else b).update_program("f1", 0, program=f"s{i}") for i in range(20)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, ProgramState)]
    conflicts = [r for r in results if isinstance(r, RoomError) and r.code == "conflict"]
    assert len(wins) == 1 and len(conflicts) == 19
    assert await b.get_program("f1") == wins[0]


async def test_program_update_rules(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    state = await store.update_program("f1", 0, program="cam", preview="cam2")
    assert (state.program, state.preview, state.slate, state.version) == ("cam", "cam2", False, 1)
    assert await store.update_program("f1", 1, program="cam") == state  # no change, no bump
    with pytest.raises(RoomError) as stale:
        await store.update_program("f1", 0, program=None)
    assert stale.value.code == "conflict" and "version 1" in stale.value.message
    back = await store.update_program("f1", None, program=None)
    assert (back.program, back.slate, back.version) == (None, True, 2)
    for bad in ({"version": 9}, {"program": 3}, {"manual": "yes"}):
        with pytest.raises(RoomError) as err:
            await store.update_program("f1", None, **bad)
        assert err.value.code == "invalid"


# --- chat ----------------------------------------------------------------------


def message(mid: str, forum: str = "f1") -> ChatMessage:
    return ChatMessage(mid, forum, "v1", "Guest", f"hello {mid}", ChatKind.CHAT, 1764255799.5)


async def test_chat_history_is_ordered_and_bounded(nodes: Nodes) -> None:
    (store,) = await nodes(1, chat_keep=5)
    for i in range(8):
        await store.append_message(message(f"m{i}"))
    assert [m.id for m in await store.messages("f1", 50)] == ["m3", "m4", "m5", "m6", "m7"]
    assert [m.id for m in await store.messages("f1", 2)] == ["m6", "m7"]
    assert await store.messages("f2", 10) == []
    with pytest.raises(RoomError) as gone:
        await store.update_message("f1", "m0", hidden=True)  # trimmed away
    assert gone.value.code == "not_found"


async def test_chat_moderation_updates(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    await store.append_message(message("m1"))
    hidden = await store.update_message("f1", "m1", hidden=True, pinned=True)
    assert hidden.hidden and hidden.pinned and not hidden.answered
    assert (await store.messages("f1"))[0] == hidden
    with pytest.raises(RoomError) as bad:
        await store.update_message("f1", "m1", text="rewritten")  # type: ignore[arg-type]
    assert bad.value.code == "invalid"
    results = await asyncio.gather(
        store.update_message("f1", "m1", answered=True), store.update_message("f1", "m1", hidden=False)
    )
    final = (await store.messages("f1"))[0]
    assert final.answered and not final.hidden and final.pinned  # neither update lost
    assert all(r.id == "m1" for r in results)


# --- pub/sub -------------------------------------------------------------------


async def test_events_reach_subscribers_on_both_nodes(nodes: Nodes) -> None:
    a, b = await nodes(2)
    sub_a, sub_b = a.subscribe(), b.subscribe()
    first = ViewerCountChanged("f1", 3, 4)
    second = ProgramChanged("f1", ProgramState("f1", program="cam", slate=False, version=1), by="Ops")
    await a.publish(first)
    await b.publish(second)
    for sub in (sub_a, sub_b):
        got = [await sub.get(DEADLINE_S), await sub.get(DEADLINE_S)]
        assert got == [
            ViewerCountChanged("f1", 3, 4, node_id=a.node_id),
            ProgramChanged("f1", second.state, "Ops", node_id=b.node_id),
        ]
    sub_a.close()
    with pytest.raises(StopAsyncIteration):
        await sub_a.get(DEADLINE_S)


async def test_stop_ends_subscriptions_and_is_idempotent(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    sub = store.subscribe()
    await store.stop()
    await store.stop()
    received = [event async for event in sub]
    assert received == [] and sub.closed


# --- nodes ---------------------------------------------------------------------


async def test_silent_node_expires_and_reaping_frees_its_seats(nodes: Nodes) -> None:
    a, b = await nodes(2)
    await a.heartbeat("node-live", {"viewers": 0}, ttl_s=30)
    await a.heartbeat("node-dead", {"viewers": 2}, ttl_s=1.0)
    assert {n.node_id for n in await b.nodes()} == {"node-live", "node-dead"}
    assert await a.admit(viewer("v1", node="node-dead"), 3)
    assert await a.admit(viewer("v2", node="node-dead", forum="f2"), 3)
    assert await a.admit(viewer("v3", node="node-live"), 3)
    assert await a.admit(viewer("v4", node="node-dead"), 3)
    await a.put_source(source("cam", node="node-dead"))
    await a.put_source(source("cam2", node="node-live"))
    assert not await a.admit(viewer("v5", node="node-live"), 3)  # f1 is full (v1, v3, v4)

    async def dead_gone() -> bool:
        return [n.node_id for n in await b.nodes()] == ["node-live"]

    await wait_until(dead_gone, "node-dead to expire")
    assert await b.dead_nodes() == ["node-dead"]
    reaped = await b.reap_node("node-dead")
    assert sorted(p.id for p in reaped.participants) == ["v1", "v2", "v4"]
    assert [s.id for s in reaped.sources] == ["cam"] and reaped.registered
    again = await a.reap_node("node-dead")  # reaped once only
    assert (again.participants, again.sources, again.registered) == ([], [], False)
    assert await b.dead_nodes() == []
    assert await a.counts("f1") == Counts(1, 1) and await a.counts("f2") == Counts(0, 0)
    assert [s.id for s in await a.sources("f1")] == ["cam2"]
    assert await a.admit(viewer("v5", node="node-live"), 3)
    live = await a.nodes()
    assert [(n.node_id, n.load) for n in live] == [("node-live", {"viewers": 0})]


async def test_reap_keeps_what_moved_to_another_node(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    assert await store.admit(viewer("v1", node="node-old"), 5)
    assert await store.admit(viewer("v1", node="node-new"), 5)  # the guest reconnected elsewhere
    reaped = await store.reap_node("node-old")
    assert reaped.participants == []
    assert [p.node_id for p in await store.participants("f1")] == ["node-new"]
    assert [p.id for p in (await store.reap_node("node-new")).participants] == ["v1"]
