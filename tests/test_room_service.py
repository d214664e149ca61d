"""RoomService on the MemoryStore: authorization, capacity, preview/take,
sources, chat limits and moderation, node reaping, and the events each
change publishes. No network: the memory store delivers events as they
are published, so `drain()` after a call sees all of them."""

from __future__ import annotations

import dataclasses

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rooms.chat import ChatKind, RateLimiter
from rooms.errors import RoomError
from rooms.events import (
    EVENT_TYPES,
    ChatPosted,
    ChatUpdated,
    NodeLost,
    ParticipantJoined,
    ParticipantLeft,
    PreviewChanged,
    ProgramChanged,
    SourceAdded,
    SourceRemoved,
    SourceUpdated,
    ViewerCountChanged,
    event_from_json,
    event_to_json,
)
from rooms.memory_store import MemoryStore
from rooms.models import (
    Event,
    Forum,
    ForumKind,
    MediaSource,
    Participant,
    ProgramState,
    Role,
    SourceKind,
    SourceState,
    Text,
)
from rooms.service import RoomService
from rooms.store import Counts, Subscription
from rooms.tokens import Grant


class Clock:
    def __init__(self, t: float = 1_764_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


EVENT = Event(
    id="summit",
    name=Text("Summit"),
    timezone="Asia/Shanghai",
    days=(dt.date(2026, 11, 27),),
    forums=(
        Forum("main", Text("Main hall"), ForumKind.MAIN, capacity=2),
        Forum("f2", Text("Forum 2"), ForumKind.SUB, capacity=100),
    ),
)


def grant(role: Role, forums: set[str] | None = None, name: str = "", ttl: float = 3600) -> Grant:
    return Grant(
        role=role,
        forums=None if forums is None else frozenset(forums),
        name=name or role.value.title(),
        subject=f"sub-{role.value}",
        expires_at=1_764_000_000.0 + ttl,
    )


VIEWER, SPEAKER, OPERATOR = grant(Role.VIEWER), grant(Role.SPEAKER), grant(Role.OPERATOR, name="Ops")
OTHER_VIEWER = dataclasses.replace(VIEWER, subject="sub-viewer-2")  # a second invite


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore("node-a")
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
def service(store: MemoryStore, clock: Clock) -> RoomService:
    return RoomService(EVENT, store, "node-a", now=clock, chat_max_length=20, chat_rate_per_minute=3)


@pytest.fixture
def events(service: RoomService) -> Subscription:
    return service.events()


def source(sid: str, kind: SourceKind = SourceKind.LIVE, state: SourceState = SourceState.LIVE) -> MediaSource:
    return MediaSource(sid, "main", kind, f"Source {sid}", state)


async def refused(code: str, call: object) -> RoomError:
    with pytest.raises(RoomError) as err:
        await call  # type: ignore[misc]
    assert err.value.code == code, err.value.message
    return err.value


# --- join / leave ----------------------------------------------------------------


async def test_join_admits_and_announces(service: RoomService, events: Subscription, clock: Clock) -> None:
    p = await service.join("main", VIEWER, "sid-1", name="  Ann ")
    assert p == Participant("sid-1", "main", Role.VIEWER, "Ann", "node-a", clock.t, holder="sub-viewer")
    assert events.drain() == [
        ParticipantJoined(p, node_id="node-a"),
        ViewerCountChanged("main", 1, 1, node_id="node-a"),
    ]
    assert await service.presence("main") == [p]
    assert (await service.join("main", SPEAKER, "sid-2")).name == "Speaker"  # the grant's name


async def test_join_refusals(service: RoomService, clock: Clock) -> None:
    assert "summit" in (await refused("not_found", service.join("nowhere", VIEWER, "s1"))).message
    err = await refused("forbidden", service.join("main", grant(Role.OPERATOR, {"f2"}), "s1"))
    assert "f2" in err.message
    await refused("token_expired", service.join("main", grant(Role.VIEWER, ttl=-1), "s1"))
    await refused("token_missing", service.join("main", None, "s1"))  # type: ignore[arg-type]
    for bad_id in ("", 7, "x" * 200, "a\nb"):
        await refused("invalid", service.join("main", VIEWER, bad_id))  # type: ignore[arg-type]
    await refused("invalid", service.join("main", VIEWER, "s1", name="   "))
    assert await service.viewer_count("main") == Counts(0, 0)


async def test_full_forum_refuses_viewers_but_not_staff(service: RoomService, events: Subscription) -> None:
    await service.join("main", VIEWER, "v1")
    await service.join("main", VIEWER, "v2")
    err = await refused("full", service.join("main", OTHER_VIEWER, "v3"))
    assert "2" in err.message and "Main hall" in err.message
    await service.join("main", OPERATOR, "op")
    assert await service.viewer_count("main") == Counts(viewers=2, total=3)
    left = await service.leave("main", "v1")
    assert left is not None and left.id == "v1"
    assert events.drain()[-2:] == [
        ParticipantLeft(left, node_id="node-a"),
        ViewerCountChanged("main", 1, 2, node_id="node-a"),
    ]
    assert await service.leave("main", "v1") is None
    assert events.drain() == []  # leaving twice announces nothing
    await service.join("main", VIEWER, "v3")


# --- sources ---------------------------------------------------------------------


async def test_who_may_register_which_source(service: RoomService, events: Subscription) -> None:
    await refused("forbidden", service.register_source("main", VIEWER, source("cam")))
    await refused("forbidden", service.register_source("main", SPEAKER, source("venue", SourceKind.VENUE)))
    live = await service.register_source("main", SPEAKER, source("cam"))
    assert live.node_id == "node-a"  # filled in with the registering node
    venue = await service.register_source("main", OPERATOR, source("venue", SourceKind.VENUE))
    assert events.drain() == [SourceAdded(live, node_id="node-a"), SourceAdded(venue, node_id="node-a")]
    await refused("invalid", service.register_source("f2", OPERATOR, source("x")))  # belongs to main
    await refused("conflict", service.register_source("main", OPERATOR, source("cam", SourceKind.RECORDED)))
    again = await service.register_source("main", SPEAKER, source("cam", state=SourceState.CONNECTING))
    assert events.drain() == [SourceUpdated(again, node_id="node-a")]
    await refused("invalid", service.register_source("main", OPERATOR, "cam"))  # type: ignore[arg-type]


async def test_source_state_and_removal(service: RoomService, events: Subscription) -> None:
    await service.register_source("main", SPEAKER, source("cam", state=SourceState.CONNECTING))
    lost = await service.update_source_state("main", "cam", "lost")
    assert lost.state is SourceState.LOST
    await refused("invalid", service.update_source_state("main", "cam", "exploded"))
    await refused("not_found", service.update_source_state("main", "nope", SourceState.LIVE))
    events.drain()
    removed = await service.unregister_source("main", "cam")
    assert removed == lost and events.drain() == [SourceRemoved(lost, node_id="node-a")]
    assert await service.unregister_source("main", "cam") is None
    assert await service.sources("main") == []


# --- preview / take ----------------------------------------------------------------


async def test_only_operators_take(service: RoomService, events: Subscription) -> None:
    await service.register_source("main", SPEAKER, source("cam"))
    await refused("forbidden", service.take("main", VIEWER, "cam"))
    await refused("forbidden", service.take("main", SPEAKER, "cam"))
    await refused("forbidden", service.take("main", grant(Role.OPERATOR, {"f2"}), "cam"))
    events.drain()
    state = await service.take("main", OPERATOR, "cam")
    assert (state.program, state.slate, state.version) == ("cam", False, 1)
    assert events.drain() == [ProgramChanged("main", state, "Ops", node_id="node-a")]
    assert await service.program("main") == state
    admin = await service.take("main", grant(Role.ADMIN), slate=True)
    assert (admin.program, admin.slate, admin.version) == (None, True, 2)


async def test_take_refusals(service: RoomService) -> None:
    await service.register_source("main", SPEAKER, source("cam", state=SourceState.CONNECTING))
    await refused("not_found", service.take("main", OPERATOR, "ghost"))
    assert "connecting" in (await refused("conflict", service.take("main", OPERATOR, "cam"))).message
    await refused("invalid", service.take("main", OPERATOR))  # nothing in preview
    await service.update_source_state("main", "cam", SourceState.LIVE)
    await service.take("main", OPERATOR, "cam", expected_version=0)
    await refused("conflict", service.take("main", OPERATOR, slate=True, expected_version=0))
    await refused("invalid", service.take("main", OPERATOR, slate=True, expected_version="1"))  # type: ignore[arg-type]
    await refused("invalid", service.take("main", OPERATOR, slate="yes"))  # type: ignore[arg-type]
    assert (await service.program("main")).program == "cam"


async def test_preview_then_take(service: RoomService, events: Subscription) -> None:
    await service.register_source("main", OPERATOR, source("venue", SourceKind.VENUE))
    await refused("forbidden", service.set_preview("main", SPEAKER, "venue"))
    await refused("not_found", service.set_preview("main", OPERATOR, "ghost"))
    events.drain()
    preview = await service.set_preview("main", OPERATOR, "venue")
    assert events.drain() == [PreviewChanged("main", preview, "Ops", node_id="node-a")]
    assert (preview.preview, preview.program) == ("venue", None)
    assert (await service.set_preview("main", OPERATOR, "venue")).version == preview.version
    assert events.drain() == []  # no change, no event
    taken = await service.take("main", OPERATOR)
    assert (taken.program, taken.preview, taken.slate) == ("venue", "venue", False)


async def test_system_program_manual_mode_and_source_loss(service: RoomService, events: Subscription) -> None:
    await service.register_source("main", OPERATOR, source("talk", SourceKind.RECORDED, SourceState.CONNECTING))
    await refused("not_found", service.set_program_system("main", "ghost"))
    events.drain()
    state = await service.set_program_system("main", "talk", by="agenda")
    assert state.program == "talk"  # the system need not wait for "live"
    assert events.drain() == [ProgramChanged("main", state, "agenda", node_id="node-a")]
    await refused("forbidden", service.set_manual("main", VIEWER, True))
    await refused("invalid", service.set_manual("main", OPERATOR, "yes"))  # type: ignore[arg-type]
    manual = await service.set_manual("main", OPERATOR, True)
    assert manual.manual and manual.program == "talk"
    events.drain()
    await service.unregister_source("main", "talk")
    after = await service.program("main")
    assert (after.program, after.slate, after.manual) == (None, True, True)
    assert events.drain()[-1] == ProgramChanged("main", after, "system", node_id="node-a")


# --- chat --------------------------------------------------------------------------


async def test_chat_posts_and_limits(service: RoomService, events: Subscription, clock: Clock) -> None:
    await refused("forbidden", service.post_message("main", VIEWER, "v1", "hi"))  # not joined
    await service.join("main", VIEWER, "v1", name="Ann")
    events.drain()
    msg = await service.post_message("main", VIEWER, "v1", "  hello  ")
    assert (msg.text, msg.name, msg.kind, msg.ts) == ("hello", "Ann", ChatKind.CHAT, clock.t)
    assert events.drain() == [ChatPosted(msg, node_id="node-a")]
    await refused("invalid", service.post_message("main", VIEWER, "v1", "   "))
    await refused("invalid", service.post_message("main", VIEWER, "v1", "bell\x07"))
    await refused("invalid", service.post_message("main", VIEWER, "v1", "hi", kind="shout"))
    assert "20" in (await refused("too_large", service.post_message("main", VIEWER, "v1", "x" * 21))).message
    question = await service.post_message("main", VIEWER, "v1", "why?", kind="question")
    assert question.kind is ChatKind.QUESTION
    await service.post_message("main", VIEWER, "v1", "third")
    clock.t += 15
    err = await refused("rate_limited", service.post_message("main", VIEWER, "v1", "fourth"))
    assert "3 messages a minute" in err.message and "45 s" in err.message
    clock.t += 45
    await service.post_message("main", VIEWER, "v1", "fourth")
    await service.join("main", OPERATOR, "op")
    for i in range(5):  # moderators are not rate-limited
        await service.post_message("main", OPERATOR, "op", f"note {i}")
    assert len(await service.messages("main", OPERATOR)) == 9
    assert len(await service.messages("main", VIEWER)) == 8  # the question waits for approval


async def test_moderation(service: RoomService, events: Subscription) -> None:
    await service.join("main", VIEWER, "v1")
    msg = await service.post_message("main", VIEWER, "v1", "spam")
    await refused("forbidden", service.moderate("main", VIEWER, msg.id, "hide"))
    await refused("forbidden", service.moderate("main", grant(Role.OPERATOR, {"f2"}), msg.id, "hide"))
    await refused("invalid", service.moderate("main", OPERATOR, msg.id, "delete"))
    await refused("not_found", service.moderate("main", OPERATOR, "nope", "hide"))
    events.drain()
    hidden = await service.moderate("main", OPERATOR, msg.id, "hide")
    assert hidden.hidden and events.drain() == [ChatUpdated(hidden, "Ops", node_id="node-a")]
    assert await service.messages("main", VIEWER) == []
    assert await service.messages("main", OPERATOR) == [hidden]
    pinned = await service.moderate("main", OPERATOR, msg.id, "pin")
    assert pinned.pinned and pinned.hidden
    shown = await service.moderate("main", OPERATOR, msg.id, "show")
    assert await service.messages("main", VIEWER) == [shown]


async def test_a_question_is_the_operators_until_approved(service: RoomService) -> None:
    """Guests see chat messages and approved questions; a new question is
    only in the operators' queue, and a dismissed (hidden) one leaves again."""
    await service.join("main", VIEWER, "v1")
    chat = await service.post_message("main", VIEWER, "v1", "hello")
    question = await service.post_message("main", VIEWER, "v1", "why?", kind="question")
    assert not question.public and chat.public
    assert await service.messages("main", VIEWER) == [chat]
    assert await service.messages("main", OPERATOR) == [chat, question]
    approved = await service.moderate("main", OPERATOR, question.id, "approve")
    assert approved.approved and approved.public
    assert await service.messages("main", VIEWER) == [chat, approved]
    answered = await service.moderate("main", OPERATOR, question.id, "answer")
    assert answered.answered and answered.public
    dismissed = await service.moderate("main", OPERATOR, question.id, "hide")
    assert not dismissed.public and await service.messages("main", VIEWER) == [chat]


async def test_backstage_is_between_speakers_and_operators(service: RoomService) -> None:
    """The speakers' channel to the operators: a speaker posts, operators
    answer; guests never see it (not even approved), and cannot post to it."""
    await service.join("main", VIEWER, "v1")
    await service.join("main", SPEAKER, "s1")
    await service.join("main", OPERATOR, "o1")
    with pytest.raises(RoomError) as refused:
        await service.post_message("main", VIEWER, "v1", "let me in", kind="backstage")
    assert refused.value.code == "forbidden"
    asked = await service.post_message("main", SPEAKER, "s1", "can you hear me?", kind="backstage")
    answer = await service.post_message("main", OPERATOR, "o1", "yes, you are next", kind="backstage")
    assert asked.kind is ChatKind.BACKSTAGE and not asked.public
    assert await service.messages("main", VIEWER) == []
    assert await service.messages("main", SPEAKER) == [asked, answer]
    assert await service.messages("main", OPERATOR) == [asked, answer]
    approved = await service.moderate("main", OPERATOR, asked.id, "approve")
    assert not approved.public and await service.messages("main", VIEWER) == []
    await service.moderate("main", OPERATOR, answer.id, "hide")
    assert await service.messages("main", SPEAKER) == [approved]
    for _ in range(2):  # speakers are rate-limited like everyone (3 a minute here)
        await service.post_message("main", SPEAKER, "s1", "again", kind="backstage")
    with pytest.raises(RoomError) as limited:
        await service.post_message("main", SPEAKER, "s1", "again", kind="backstage")
    assert limited.value.code == "rate_limited"


def test_rate_limiter_is_a_sliding_window() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(2, 10.0, clock=clock)
    assert limiter.hit("a") == 0.0
    clock.t = 4.0
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == pytest.approx(6.0)
    assert limiter.hit("b") == 0.0  # per key
    clock.t = 10.0
    assert limiter.hit("a") == 0.0  # the first hit slid out
    limiter.forget("a")
    assert len(limiter) == 1


# --- nodes ---------------------------------------------------------------------------


async def test_a_lost_nodes_guests_and_sources_are_reaped(clock: Clock) -> None:
    mono = Clock(0.0)
    store = MemoryStore("node-a", clock=mono)  # one store stands in for the shared one
    a = RoomService(EVENT, store, "node-a", now=clock, heartbeat_ttl_s=1.0)
    b = RoomService(EVENT, store, "node-b", now=clock, heartbeat_ttl_s=1.0)
    await b.start()  # beats once at mono 0
    await b.stop()  # then falls silent (a crash leaves its state behind)
    await b.stop()
    guest = await b.join("main", VIEWER, "v1")
    await b.join("main", VIEWER, "v2")
    cam = await b.register_source("main", SPEAKER, source("cam"))
    await a.take("main", OPERATOR, "cam")
    await refused("full", a.join("main", OTHER_VIEWER, "v3"))
    sub = a.events()
    assert await a.reap_dead_nodes() == []  # node-b is still within its TTL
    mono.t = 1.5
    reaped = await a.reap_dead_nodes()
    assert [r.node_id for r in reaped] == ["node-b"] and len(reaped[0].participants) == 2
    got = sub.drain()
    assert ParticipantLeft(guest, reason="node_lost", node_id="node-a") in got
    assert SourceRemoved(cam, node_id="node-a") in got
    assert ViewerCountChanged("main", 0, 0, node_id="node-a") in got
    assert got[-1] == NodeLost("node-b", participants=2, sources=1, node_id="node-a")
    assert (await a.program("main")).program is None  # the slate covers the lost source
    await a.join("main", VIEWER, "v3")
    await store.stop()


async def test_a_run_restarted_under_the_same_name_reaps_the_crashed_run_at_start(clock: Clock) -> None:
    """2 viewers and a live source held by run 1 of "hall", which crashed
    (no goodbye) a moment ago, well within its TTL: run 2 of "hall" frees
    them as it starts, not after a TTL and not never (reaping used to skip
    the node's own id, and a restart kept the id)."""
    store = MemoryStore("hall@run1", clock=Clock(0.0))
    crashed = RoomService(EVENT, store, "hall@run1", now=clock, heartbeat_ttl_s=30.0)
    await crashed.start()
    for pid in ("v1", "v2"):  # the hall is full (capacity 2)
        await crashed.join("main", VIEWER, pid)
    cam = await crashed.register_source("main", SPEAKER, source("cam"))
    await crashed.take("main", OPERATOR, "cam")
    assert await store.acquire_lease("main", "hall@run1", 30_000)  # it hosted the forum
    assert await store.acquire_lease("ai", "other@run1", 30_000)  # another node's forum
    await crashed.stop()  # the crash: nothing left, nothing expired
    assert await store.counts("main") == Counts(2, 2)
    restarted = RoomService(EVENT, store, "hall@run2", now=clock, heartbeat_ttl_s=30.0)
    sub = restarted.events()
    await restarted.start()
    try:
        assert await store.counts("main") == Counts(0, 0)
        assert await store.sources("main") == []
        assert (await restarted.program("main")).program is None
        got = sub.drain()
        assert [e.source for e in got if isinstance(e, SourceRemoved)] == [cam]
        assert [(e.lost_node_id, e.participants, e.sources) for e in got if isinstance(e, NodeLost)] == [
            ("hall@run1", 2, 1)]
        await restarted.join("main", VIEWER, "v3")  # the seats are free again
        assert await store.lease_owner("main") is None  # its forum is free to take now, not after the TTL
        assert await store.lease_owner("ai") == "other@run1"
        assert [n.node_id for n in await store.nodes()] == ["hall@run2"]
    finally:
        await restarted.stop()
        await store.stop()


async def test_start_registers_the_node_and_stop_is_idempotent(service: RoomService, store: MemoryStore) -> None:
    await service.start()
    await service.start()
    try:
        nodes = await store.nodes()
        assert [(n.node_id, n.load) for n in nodes] == [("node-a", {"participants": 0})]
    finally:
        await service.stop()
        await service.stop()


# --- event codec ----------------------------------------------------------------------


def test_every_event_type_round_trips_through_json() -> None:
    p = Participant("p1", "main", Role.SPEAKER, "李", "node-a", 12.5)
    s = source("cam")
    state = ProgramState("main", "cam", None, False, True, 3)
    from rooms.chat import ChatMessage

    m = ChatMessage("m1", "main", "p1", "李", "你好", ChatKind.QUESTION, 1.25, pinned=True)
    samples = [
        ParticipantJoined(p), ParticipantLeft(p, "node_lost"), ViewerCountChanged("main", 1, 2),
        SourceAdded(s), SourceUpdated(s), SourceRemoved(s), ProgramChanged("main", state, "Ops"),
        PreviewChanged("main", state, "Ops"), ChatPosted(m), ChatUpdated(m, "Ops"), NodeLost("n2", 3, 1),
    ]
    assert {type(e).__name__ for e in samples} == set(EVENT_TYPES)
    for event in samples:
        envelope = event_to_json(event)
        assert event_from_json(envelope) == event
    for bad in ([], {"type": "Nope"}, {"type": "ViewerCountChanged", "data": {"forum_id": "x"}},
                {"type": "ViewerCountChanged", "data": {"forum_id": "x", "viewers": "1", "total": 1}}):
        with pytest.raises(RoomError) as err:
            event_from_json(bad)
        assert err.value.code == "invalid"


async def test_a_slow_subscriber_loses_its_oldest_events_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore("node-a", queue_size=3)
    slow, fast = store.subscribe(), store.subscribe()
    for i in range(5):
        await store.publish(ViewerCountChanged("main", i, i))
        assert [e.viewers for e in fast.drain()] == [i]  # keeps up, loses nothing
    assert [e.viewers for e in slow.drain()] == [2, 3, 4]
    assert slow.dropped == 2 and fast.dropped == 0
    assert any("dropped 1 events" in r.getMessage() for r in caplog.records)
    await store.stop()
    assert [e async for e in slow] == []


class CountingStore(MemoryStore):
    """A real MemoryStore that also counts heartbeats and says when the
    n-th arrives (so the test awaits an event, not a sleep)."""

    def __init__(self, beats_wanted: int) -> None:
        super().__init__("node-a")
        self.beats = 0
        self._wanted = beats_wanted
        self.enough = asyncio.Event()

    async def heartbeat(self, node_id: str, load: dict[str, Any], ttl_s: float, public_url: str = "") -> None:
        await super().heartbeat(node_id, load, ttl_s, public_url)
        self.beats += 1
        if self.beats >= self._wanted:
            self.enough.set()


async def test_the_heartbeat_follows_its_configured_interval() -> None:
    store = CountingStore(beats_wanted=4)
    rooms = RoomService(EVENT, store, "node-a", heartbeat_ttl_s=30.0, heartbeat_interval_s=0.05)
    await rooms.start()
    try:
        # at the default (ttl/3 = 10 s) the fourth beat would take 30 s
        await asyncio.wait_for(store.enough.wait(), 20.0)
    finally:
        await rooms.stop()
    with pytest.raises(ValueError, match="shorter than its TTL"):
        RoomService(EVENT, store, "node-a", heartbeat_ttl_s=1.0, heartbeat_interval_s=1.0)


# --- bounds (issue 8, items 3 and 4) ----------------------------------------------


async def test_one_token_holds_at_most_its_seats(store: MemoryStore, clock: Clock) -> None:
    service = RoomService(EVENT, store, "node-a", now=clock, seats_per_token=2)
    await service.join("f2", VIEWER, "phone")
    await service.join("f2", VIEWER, "laptop")
    err = await refused("too_many_seats", service.join("f2", VIEWER, "tablet"))
    assert err.http_status == 429 and "2 devices" in err.message
    await service.join("f2", OTHER_VIEWER, "someone-else")  # another invite is not affected
    await service.join("f2", OPERATOR, "op-1")
    await service.join("f2", OPERATOR, "op-2")
    await service.join("f2", OPERATOR, "op-3")  # staff take no seat, so no bound
    await service.leave("f2", "phone")
    await service.join("f2", VIEWER, "tablet")


async def test_sources_are_bounded_per_token_and_per_forum(store: MemoryStore, clock: Clock) -> None:
    service = RoomService(EVENT, store, "node-a", now=clock, sources_per_token=2, sources_per_forum=3)
    await service.register_source("main", SPEAKER, source("a"))
    await service.register_source("main", SPEAKER, source("b"))
    err = await refused("too_many_sources", service.register_source("main", SPEAKER, source("c")))
    assert err.http_status == 429 and "this token" in err.message
    other = dataclasses.replace(SPEAKER, subject="sub-speaker-2")
    await service.register_source("main", other, source("c"))
    err = await refused("too_many_sources", service.register_source("main", OPERATOR, source("d", SourceKind.RECORDED)))
    assert "already has 3 sources" in err.message
    await service.register_source("main", OPERATOR, source("slate-main", SourceKind.SLATE))  # not counted
    await service.register_source("main", SPEAKER, source("a"))  # a reconnect is no new source
    await service.unregister_source("main", "a")
    await service.register_source("main", OPERATOR, source("d", SourceKind.RECORDED))
    assert {s.holder for s in await service.sources("main")} == {"sub-speaker", "sub-speaker-2", "sub-operator"}
