"""One contract, every store: MemoryStore and RedisStore (real Redis).

`nodes(n)` gives n handles that share state: n RedisStores on one Redis
(n nodes), or the one MemoryStore n times (the embedded store is one
node, so "two nodes" are two callers of it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from rooms.chat import ChatKind, ChatMessage
from rooms.errors import RoomError
from rooms.events import ProgramChanged, ViewerCountChanged
from rooms.memory_store import MemoryStore
from rooms.models import MediaSource, Participant, ProgramState, Role, SourceKind, SourceMedia, SourceState
from rooms.store import Admission, BusRequest, Counts, JsonObject, Store
from tests.eventually import eventually

Nodes = Callable[..., Awaitable[list[Store]]]
DEADLINE_S = 20.0  # generous: a loaded machine waits longer, never fails


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


# --- participants and capacity -----------------------------------------------


async def test_200_concurrent_joins_admit_exactly_capacity(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    results = await asyncio.gather(*(store.admit(viewer(f"v{i}"), 150) for i in range(200)))
    assert sum(map(bool, results)) == 150
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
    assert sum(map(bool, results)) == 150
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


# --- seats per holder (issue 8, item 3) ----------------------------------------------


def held(pid: str, holder: str, node: str = "node-0", role: Role = Role.VIEWER) -> Participant:
    return dataclasses.replace(viewer(pid, node=node, role=role), holder=holder)


async def test_35_concurrent_joins_of_one_token_take_at_most_its_seats(nodes: Nodes) -> None:
    a, b = await nodes(2)
    # 35 connections of one invite, split over two nodes, against 30 seats
    results = await asyncio.gather(*(
        (a if i % 2 else b).admit(held(f"t{i}", "tok-1", node=(a if i % 2 else b).node_id), 30, 2)
        for i in range(35)))
    assert sum(map(bool, results)) == 2
    assert set(results) == {Admission.ADMITTED, Admission.HOLDER_FULL}
    assert await a.counts("f1") == Counts(2, 2)
    # a second guest still gets in, and the forum still fills to exactly its capacity
    more = await asyncio.gather(*(a.admit(held(f"g{i}", f"guest-{i}"), 30, 2) for i in range(40)))
    assert sum(map(bool, more)) == 28 and Admission.FULL in more
    assert await b.counts("f1") == Counts(30, 30)


async def test_a_holders_seat_comes_back_when_it_leaves_or_its_node_is_reaped(nodes: Nodes) -> None:
    a, b = await nodes(2)
    assert await a.admit(held("x1", "tok"), 10, 2)
    assert await b.admit(held("x2", "tok", node="node-1"), 10, 2)
    assert await a.admit(held("x3", "tok"), 10, 2) is Admission.HOLDER_FULL
    # joining again with a seated id keeps that seat (no second one taken)
    assert await a.admit(held("x1", "tok"), 10, 2) is Admission.ADMITTED
    assert await a.remove_participant("f1", "x1") is not None
    assert await a.admit(held("x3", "tok"), 10, 2) is Admission.ADMITTED
    await a.reap_node("node-1")  # x2 was held there
    assert await a.admit(held("x4", "tok"), 10, 2) is Admission.ADMITTED
    assert await a.admit(held("x5", "tok"), 10, 2) is Admission.HOLDER_FULL
    # the bound is per forum, and 0 lifts it
    assert await a.admit(dataclasses.replace(held("y1", "tok"), forum_id="f2"), 10, 2)
    assert await a.admit(held("x5", "tok"), 10, 0) is Admission.ADMITTED


async def test_staff_and_holderless_participants_are_not_bounded_per_holder(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    for i in range(5):
        assert await store.admit(held(f"op{i}", "ops", role=Role.OPERATOR), 10, 1)
        assert await store.admit(held(f"anon{i}", ""), 10, 1)
    # a seat handed to staff (same id, new role) no longer counts for its holder
    assert await store.admit(held("v", "tok"), 10, 1)
    assert await store.admit(held("v", "tok", role=Role.SPEAKER), 10, 1)
    assert await store.admit(held("w", "tok"), 10, 1) is Admission.ADMITTED


# --- sources per holder and per forum (issue 8, item 4) -------------------------------


def owned(sid: str, holder: str, kind: SourceKind = SourceKind.LIVE, node: str = "node-0") -> MediaSource:
    return dataclasses.replace(source(sid, node=node), kind=kind, holder=holder)


async def test_100_concurrent_sources_of_one_token_stop_at_its_bound(nodes: Nodes) -> None:
    a, b = await nodes(2)
    results = await asyncio.gather(*(
        (a if i % 2 else b).add_source(owned(f"s{i}", "spk", node=(a if i % 2 else b).node_id), 32, 4)
        for i in range(100)))
    assert sum(map(bool, results)) == 4 and set(results) == {Admission.ADMITTED, Admission.HOLDER_FULL}
    # others fill the forum to exactly its bound, across nodes
    more = await asyncio.gather(*(
        (a if i % 2 else b).add_source(owned(f"o{i}", f"spk-{i % 20}", node=(a if i % 2 else b).node_id), 32, 4)
        for i in range(60)))
    assert sum(map(bool, more)) == 28 and Admission.FULL in more
    assert len(await a.sources("f1")) == 32


async def test_source_bounds_spare_the_forums_own_inputs_and_replacements(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    assert await store.add_source(owned("s1", "spk"), 1, 1)
    assert await store.add_source(owned("s2", "other"), 1, 1) is Admission.FULL
    assert await store.add_source(owned("s3", "spk"), 1, 1) is Admission.HOLDER_FULL
    # the slate and the venue feed always get in, and count for nothing
    assert await store.add_source(owned("slate-f1", "system", SourceKind.SLATE), 1, 1)
    assert await store.add_source(owned("venue-f1", "system", SourceKind.VENUE), 1, 1)
    # re-registering a source (a reconnect, a state change) is not a new one
    moved = dataclasses.replace(owned("s1", "spk", node="node-9"), state=SourceState.LOST)
    assert await store.add_source(moved, 1, 1)
    assert await store.get_source("f1", "s1") == moved
    # a recorded playout is bounded like a live source; removal frees the place
    assert await store.add_source(owned("rec", "op", SourceKind.RECORDED), 1, 0) is Admission.FULL
    await store.remove_source("f1", "s1")
    assert await store.add_source(owned("rec", "op", SourceKind.RECORDED), 1, 0)
    assert {s.id for s in await store.sources("f1")} == {"rec", "slate-f1", "venue-f1"}


async def test_participant_round_trips_exactly(nodes: Nodes) -> None:
    (store,) = await nodes(1)
    p = Participant("p-ü", "f1", Role.SPEAKER, "李 雷", "node-0", 1764255799.123456, holder="sub-ü:1")
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

    await eventually(dead_gone, timeout=DEADLINE_S, what="node-dead to expire")  # only time changes a TTL
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


async def test_a_name_restarted_after_a_crash_finds_its_previous_instances(nodes: Nodes) -> None:
    """Liveness is keyed by the instance id (name@run), not the name: the
    crashed run of "hall" is still within its TTL (its key has not expired),
    yet a new run of "hall" finds it, live or expired, and reaps it."""
    crashed, fresh = await nodes(2)
    await crashed.heartbeat("hall@00000001", {}, ttl_s=30)  # crashed a moment ago: still "live"
    await crashed.heartbeat("hall@00000000", {}, ttl_s=0.05)  # an older crash, expired
    await crashed.heartbeat("hall-2@00000001", {}, ttl_s=30)  # another node whose name starts alike
    await crashed.heartbeat("hall@00000002", {}, ttl_s=30)  # the new run itself
    for pid in ("v1", "v2", "v3"):
        assert await crashed.admit(viewer(pid, node="hall@00000001"), 10)
    assert await crashed.admit(viewer("v4", node="hall-2@00000001"), 10)
    await crashed.put_source(source("venue", node="hall@00000001"))

    async def older_expired() -> bool:
        return "hall@00000000" in await fresh.dead_nodes()

    await eventually(older_expired, timeout=DEADLINE_S, what="the older run to expire")
    previous = await fresh.previous_instances("hall@00000002")
    assert previous == ["hall@00000000", "hall@00000001"]
    for node_id in previous:
        await fresh.reap_node(node_id)
    assert await fresh.counts("f1") == Counts(viewers=1, total=1)
    assert await fresh.sources("f1") == []
    assert {n.node_id for n in await fresh.nodes()} == {"hall-2@00000001", "hall@00000002"}


async def test_a_heartbeat_carries_the_nodes_public_url(nodes: Nodes) -> None:
    a, b = await nodes(2)
    await a.heartbeat("hall@00000001", {"viewers": 1}, ttl_s=30, public_url="http://127.0.0.1:8081")
    await a.heartbeat("hall@00000002", {}, ttl_s=30)
    found = {n.node_id: n.public_url for n in await b.nodes()}
    assert found == {"hall@00000001": "http://127.0.0.1:8081", "hall@00000002": ""}


# --- forum leases ----------------------------------------------------------------


async def test_a_forums_lease_has_one_owner_among_concurrent_takers(nodes: Nodes) -> None:
    a, b = await nodes(2)
    owners = [f"n{i}@0000000{i % 10}" for i in range(20)]
    taken = await asyncio.gather(
        *((a if i % 2 else b).acquire_lease("f1", owner, 30_000) for i, owner in enumerate(owners))
    )
    assert sum(taken) == 1
    winner = owners[taken.index(True)]
    assert await a.lease_owner("f1") == winner == await b.lease_owner("f1")
    assert await a.lease_owner("f2") is None  # one lease per forum


async def test_only_the_owner_renews_or_releases_its_lease(nodes: Nodes) -> None:
    a, b = await nodes(2)
    assert await a.acquire_lease("f1", "x", 30_000)
    assert await a.acquire_lease("f1", "x", 30_000)  # already ours: true, renewed
    assert not await b.acquire_lease("f1", "y", 30_000)
    assert not await b.renew_lease("f1", "y", 30_000)
    assert not await b.release_lease("f1", "y")
    assert await b.lease_owner("f1") == "x"
    assert await a.renew_lease("f1", "x", 30_000)
    assert await a.release_lease("f1", "x")
    assert not await a.release_lease("f1", "x")  # gone already
    assert await b.lease_owner("f1") is None
    assert await b.acquire_lease("f1", "y", 30_000)
    assert await a.lease_owner("f1") == "y"
    for call in (a.acquire_lease("f2", "x", 0), a.renew_lease("f1", "y", -5)):
        with pytest.raises(RoomError) as bad:
            await call
        assert bad.value.code == "invalid"


async def test_an_expired_lease_goes_to_the_next_taker(nodes: Nodes) -> None:
    a, b = await nodes(2)
    assert await a.acquire_lease("f1", "x", 100)

    async def expired() -> bool:
        return await b.lease_owner("f1") is None

    await eventually(expired, timeout=DEADLINE_S, what="the 100 ms lease to expire")  # only time ends a lease
    assert not await a.renew_lease("f1", "x", 30_000)  # too late: an expired lease is not renewed
    assert await b.acquire_lease("f1", "y", 30_000)
    assert not await a.acquire_lease("f1", "x", 30_000)
    assert await a.lease_owner("f1") == "y"


# --- request/reply -----------------------------------------------------------------


async def test_a_request_reaches_its_node_and_the_answer_comes_back(nodes: Nodes) -> None:
    a, b = await nodes(2)
    seen: list[BusRequest] = []

    async def answer(request: BusRequest) -> JsonObject:
        seen.append(request)
        return {"took": request.body.get("source"), "on": b.node_id}

    b.serve(answer)
    answers = await asyncio.gather(
        *(a.request(b.node_id, "take", {"source": f"cam{i}"}, timeout_s=DEADLINE_S) for i in range(5))
    )
    assert answers == [{"took": f"cam{i}", "on": b.node_id} for i in range(5)]
    assert sorted(str(r.body["source"]) for r in seen) == [f"cam{i}" for i in range(5)]
    assert {(r.kind, r.sender) for r in seen} == {("take", a.node_id)}


async def test_a_refusal_comes_back_as_the_same_room_error(nodes: Nodes) -> None:
    a, b = await nodes(2)

    async def refuse(request: BusRequest) -> JsonObject:
        if request.kind == "take":
            raise RoomError("conflict", "source cam is not live")
        raise ValueError("a bug of ours")

    b.serve(refuse)
    with pytest.raises(RoomError) as refused:
        await a.request(b.node_id, "take", {}, timeout_s=DEADLINE_S)
    assert (refused.value.code, refused.value.message) == ("conflict", "source cam is not live")
    with pytest.raises(RoomError) as failed:
        await a.request(b.node_id, "crash", {}, timeout_s=DEADLINE_S)
    assert failed.value.code == "internal"


async def test_a_node_that_does_not_answer_is_unavailable(nodes: Nodes) -> None:
    a, b = await nodes(2)
    never = asyncio.Event()

    async def hang(request: BusRequest) -> JsonObject:
        await never.wait()
        return {}

    b.serve(hang)
    with pytest.raises(RoomError) as late:
        await a.request(b.node_id, "take", {}, timeout_s=0.2)
    assert late.value.code == "unavailable" and "did not answer" in late.value.message
    with pytest.raises(RoomError) as nobody:
        await a.request("gone@00000000", "take", {}, timeout_s=DEADLINE_S)
    assert nobody.value.code == "unavailable"
    b.serve(None)
    with pytest.raises(RoomError) as closed:
        await a.request(b.node_id, "take", {}, timeout_s=DEADLINE_S)
    assert closed.value.code == "unavailable"
    never.set()
