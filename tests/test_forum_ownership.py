"""ForumOwnership without a network and without a clock: two or three
"nodes" share one MemoryStore's leases, and time moves only by hand."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from config.settings import SAMPLE_EVENT
from rooms.agenda import AgendaClock
from rooms.errors import RoomError
from rooms.event_file import load_event
from rooms.forum_ownership import (
    ForumOwnership, Owner, OwnershipChange, note_event, resolve_owner, scheduled_forums,
)
from rooms.memory_store import MemoryStore

TTL_MS = 5000
TTL_S = TTL_MS / 1000


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingLeases:
    """The real MemoryStore's leases, counting the calls and able to fail
    like an unreachable Redis."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.calls: list[tuple[str, str]] = []
        self.down = False

    def _check(self, name: str, forum_id: str) -> None:
        self.calls.append((name, forum_id))
        if self.down:
            raise RoomError("unavailable", "the shared state store (Redis) failed: connection refused")

    async def acquire_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        self._check("acquire", forum_id)
        return await self.store.acquire_lease(forum_id, owner, ttl_ms)

    async def renew_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        self._check("renew", forum_id)
        return await self.store.renew_lease(forum_id, owner, ttl_ms)

    async def release_lease(self, forum_id: str, owner: str) -> bool:
        self._check("release", forum_id)
        return await self.store.release_lease(forum_id, owner)

    async def lease_owner(self, forum_id: str) -> str | None:
        return await self.store.lease_owner(forum_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore("shared", clock=clock)


def node(store: MemoryStore, clock: Clock, name: str, idle_ms: int = 60_000) -> tuple[ForumOwnership, CountingLeases]:
    leases = CountingLeases(store)
    return ForumOwnership(leases, name, TTL_MS, clock, idle_ms=idle_ms), leases


async def test_a_needed_forum_gets_exactly_one_owner(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1")
    b, _ = node(store, clock, "b@1")
    a.hold("f1", "source:cam")
    b.hold("f1", "source:venue")
    assert await a.tick() == OwnershipChange(acquired=("f1",))
    assert await b.tick() == OwnershipChange()
    assert a.owns("f1") and not b.owns("f1")
    assert await store.lease_owner("f1") == "a@1"
    assert a.owned() == ["f1"] and b.owned() == []


async def test_the_owner_renews_at_a_third_of_the_ttl_and_keeps_the_forum(store: MemoryStore, clock: Clock) -> None:
    a, leases = node(store, clock, "a@1")
    b, _ = node(store, clock, "b@1")
    a.hold("f1", "viewer:v1")
    b.hold("f1", "viewer:v2")
    await a.tick()
    for _ in range(30):  # three TTLs in steps of a tenth
        clock.advance(a.tick_interval_s)
        assert await a.tick() == OwnershipChange()
        assert await b.tick() == OwnershipChange()
        assert await store.lease_owner("f1") == "a@1"
    renewals = [c for c in leases.calls if c[0] == "renew"]
    assert len(renewals) == 7  # at the first tick after each ttl/3 (every 4th tenth), never more often


async def test_a_dead_owners_forum_is_taken_within_its_ttl_and_one_tick(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1")
    b, _ = node(store, clock, "b@1")
    a.hold("f1", "source:cam")
    b.hold("f1", "viewer:v2")
    await a.tick()
    clock.advance(1.7)
    await a.tick()  # renewed at 1.7 s: its lease now ends at 6.7 s
    died_at = clock.now  # a stops ticking: SIGKILL
    waited = 0.0
    while not b.owns("f1"):
        clock.advance(b.tick_interval_s)
        waited += b.tick_interval_s
        change = await b.tick()
        assert waited <= TTL_S + b.tick_interval_s + 1e-9, "b waited longer than the lease and one tick"
    assert change == OwnershipChange(acquired=("f1",))
    assert TTL_S <= clock.now - died_at <= TTL_S + b.tick_interval_s + 1e-9
    # a comes back (it was only paused): it learns it lost the forum, and does not take it back
    assert not a.owns("f1")  # its own clock says its lease ran out
    assert await a.tick() == OwnershipChange(lost=("f1",))
    assert await a.tick() == OwnershipChange()
    assert await store.lease_owner("f1") == "b@1"


async def test_a_renewal_refused_means_the_forum_is_lost(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1")
    a.hold("f1", "source:cam")
    await a.tick()
    # an operator's tool (or a split brain) moved the lease: a's next renewal is refused
    assert await store.release_lease("f1", "a@1")
    assert await store.acquire_lease("f1", "b@1", TTL_MS)
    clock.advance(2.0)  # past ttl/3: a renews
    assert await a.tick() == OwnershipChange(lost=("f1",))
    assert not a.owns("f1")


async def test_a_store_outage_keeps_the_lease_until_it_would_expire_then_loses_it(
    store: MemoryStore, clock: Clock
) -> None:
    a, leases = node(store, clock, "a@1")
    a.hold("f1", "source:cam")
    await a.tick()
    leases.down = True
    clock.advance(2.0)  # past ttl/3
    assert await a.tick() == OwnershipChange()  # renewal failed; the lease still stands
    assert ("renew", "f1") in leases.calls and a.owns("f1")
    clock.advance(2.75)
    assert a.owns("f1")
    clock.advance(0.25)  # exactly TTL after the last successful acquire was sent
    assert not a.owns("f1")
    assert await a.tick() == OwnershipChange(lost=("f1",))
    leases.down = False
    clock.advance(a.tick_interval_s)
    assert await a.tick() == OwnershipChange(acquired=("f1",))  # nobody took it meanwhile


async def test_an_operators_touch_needs_the_forum_for_the_idle_time_then_it_is_released(
    store: MemoryStore, clock: Clock
) -> None:
    a, _ = node(store, clock, "a@1", idle_ms=20_000)
    a.touch("f1")
    assert await a.tick() == OwnershipChange(acquired=("f1",))
    steps = 0
    while True:
        clock.advance(a.tick_interval_s)
        steps += 1
        change = await a.tick()
        if change:
            break
    assert change == OwnershipChange(released=("f1",))
    # needed for 20 s after the touch, then kept idle for 20 s more before it is given up
    assert 40.0 <= steps * a.tick_interval_s <= 40.0 + a.tick_interval_s + 1e-9
    assert await store.lease_owner("f1") is None


async def test_held_needs_keep_a_forum_until_the_last_is_dropped(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1", idle_ms=3000)
    a.hold("f1", "source:cam")
    a.hold("f1", "viewer:v1")
    await a.tick()
    a.drop("f1", "source:cam")
    clock.advance(10 * TTL_S)  # ticks as they come
    for _ in range(3):
        await a.tick()
    assert a.owns("f1") and a.needed() == {"f1"}
    a.drop("f1", "viewer:v1")
    a.drop("f1", "viewer:unknown")  # dropping what was never held is harmless
    assert a.needed() == set()
    await a.tick()  # idle from now
    clock.advance(1.0)
    assert await a.tick() == OwnershipChange()  # 1 s idle: kept
    a.hold("f1", "viewer:v3")  # needed again before the idle time: nothing changes
    clock.advance(2.5)
    assert await a.tick() == OwnershipChange()
    a.drop("f1", "viewer:v3")
    await a.tick()
    clock.advance(3.0)
    assert await a.tick() == OwnershipChange(released=("f1",))


async def test_scheduled_forums_are_taken_and_a_graceful_stop_releases_all(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1")
    b, _ = node(store, clock, "b@1")
    a.set_scheduled({"f1", "f2"})
    b.set_scheduled({"f1", "f2"})
    assert await a.tick() == OwnershipChange(acquired=("f1", "f2"))
    assert await a.release_all() == ["f1", "f2"]
    assert a.owned() == []
    clock.advance(b.tick_interval_s)  # at b's next tick, not after the TTL
    assert await b.tick() == OwnershipChange(acquired=("f1", "f2"))


async def test_resolve_owner_gives_the_owners_public_url(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1")
    a.hold("f1", "source:cam")
    await a.tick()
    assert await resolve_owner("f1", store, store) == Owner("a@1", "")  # no heartbeat yet: no address
    await store.heartbeat("a@1", {}, 6.0, public_url="http://127.0.0.1:8081")
    await store.heartbeat("b@1", {}, 6.0, public_url="http://127.0.0.1:8082")
    assert await resolve_owner("f1", store, store) == Owner("a@1", "http://127.0.0.1:8081")
    assert await resolve_owner("f2", store, store) is None


def test_scheduled_forums_are_those_with_a_recorded_slot_soon_or_under_way() -> None:
    event = load_event(SAMPLE_EVENT)
    agenda = AgendaClock(event)
    playouts = agenda.recorded_starts(dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                                      dt.datetime.max.replace(tzinfo=dt.timezone.utc))
    assert playouts, "the sample event has recorded speakers"
    first = playouts[0]
    assert first.until is not None
    lead = dt.timedelta(minutes=15)

    def at(when: dt.datetime) -> set[str]:
        return scheduled_forums(AgendaClock(event, now=lambda: when), lead)

    assert first.forum_id not in at(first.at - lead - dt.timedelta(seconds=1))
    assert first.forum_id in at(first.at - lead + dt.timedelta(seconds=1))
    assert first.forum_id in at(first.at + (first.until - first.at) / 2)  # under way
    assert first.forum_id not in at(first.until + dt.timedelta(hours=13))


def test_a_ttl_too_short_to_renew_is_refused(store: MemoryStore, clock: Clock) -> None:
    with pytest.raises(ValueError):
        ForumOwnership(store, "a@1", 10, clock)


def test_room_events_about_this_nodes_connections_hold_and_drop_needs(store: MemoryStore, clock: Clock) -> None:
    from rooms.events import ParticipantJoined, ParticipantLeft, ProgramChanged, SourceAdded, SourceRemoved, SourceUpdated
    from rooms.models import MediaSource, Participant, ProgramState, Role, SourceKind, SourceState

    a, _ = node(store, clock, "a@1", idle_ms=1000)
    guest = Participant("p1", "f1", Role.VIEWER, "Guest", "a@1", 0.0)
    elsewhere = Participant("p2", "f2", Role.VIEWER, "Guest", "b@1", 0.0)
    speaker = MediaSource("cam", "f3", SourceKind.LIVE, "Speaker", SourceState.LIVE, "a@1")
    slate = MediaSource("slate", "f4", SourceKind.SLATE, "Slate", SourceState.LIVE, "a@1")
    assert note_event(a, ParticipantJoined(guest))
    assert not note_event(a, ParticipantJoined(elsewhere))  # another node's guest: not our need
    assert note_event(a, SourceAdded(speaker))
    assert not note_event(a, SourceAdded(slate))  # the host's own slate never keeps a forum
    assert not note_event(a, ProgramChanged("f5", ProgramState("f5"), "ops"))
    assert a.needed() == {"f1", "f3"}
    assert note_event(a, ParticipantLeft(guest))
    assert note_event(a, SourceUpdated(dataclasses.replace(speaker, state=SourceState.ENDED)))
    assert a.needed() == set()
    assert note_event(a, SourceAdded(speaker))
    assert note_event(a, SourceRemoved(speaker))
    assert a.needed() == set()


async def test_a_busy_forum_is_never_given_up_for_idleness(store: MemoryStore, clock: Clock) -> None:
    a, _ = node(store, clock, "a@1", idle_ms=1000)
    running = {"f1"}  # a restream still runs in f1 after everyone left
    a.busy = lambda forum_id: forum_id in running
    a.touch("f1")
    a.touch("f2")
    assert await a.tick() == OwnershipChange(acquired=("f1", "f2"))
    for _ in range(10):
        clock.advance(1.0)
        change = await a.tick()
        if change:
            assert change == OwnershipChange(released=("f2",))
    assert a.owned() == ["f1"]
    running.clear()  # the restream stopped
    await a.tick()
    clock.advance(1.0)
    assert await a.tick() == OwnershipChange(released=("f1",))
