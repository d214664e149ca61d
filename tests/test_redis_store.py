"""What only RedisStore has: the transport (listener retries, bad
messages, key prefixes, an unreachable Redis). The behaviour every store
shares is in test_store_contract.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from rooms.errors import RoomError
from rooms.events import ViewerCountChanged
from rooms.models import Participant, Role
from rooms.store import BusRequest, JsonObject
from signaling.redis_store import RedisStore
from tests.processes import free_port, start_redis

DEADLINE_S = 5.0


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, "node-a", prefix="t", retry_min_s=0.05, retry_max_s=0.2)
    await store.start()
    yield store
    await store.stop()


async def test_a_bad_message_is_logged_and_the_listener_goes_on(
    store: RedisStore, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sub = store.subscribe()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.publish(store.channel, b"not json")
        await raw.publish(store.channel, json.dumps({"type": "Nope", "node_id": "x", "data": {}}))
        await raw.publish(store.channel, json.dumps({"type": "ViewerCountChanged", "node_id": "x", "data": {}}))
    finally:
        await raw.aclose()
    await store.publish(ViewerCountChanged("f1", 1, 2))
    assert await sub.get(DEADLINE_S) == ViewerCountChanged("f1", 1, 2, node_id="node-a")
    bad = [r for r in caplog.records if "ignored a bad message" in r.getMessage()]
    assert len(bad) == 3


async def test_listener_resubscribes_after_losing_its_connection(store: RedisStore, redis_url: str) -> None:
    sub = store.subscribe()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        killed = await admin.client_kill_filter(_type="pubsub")
        assert killed >= 1
    finally:
        await admin.aclose()
    # events published while the listener reconnects are lost (pub/sub has
    # no history): publish until one arrives, within a deadline
    deadline = time.monotonic() + DEADLINE_S
    while True:
        await store.publish(ViewerCountChanged("f1", 7, 7))
        try:
            got = await sub.get(0.1)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the listener never came back"
    assert got == ViewerCountChanged("f1", 7, 7, node_id="node-a")


async def test_prefixes_isolate_deployments(store: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url, "node-b", prefix="other")
    await other.start()
    try:
        sub = other.subscribe()
        guest = Participant("v1", "f1", Role.VIEWER, "Guest", "node-a", 1.0)
        assert await store.admit(guest, 1)
        assert await other.admit(Participant("v2", "f1", Role.VIEWER, "Guest", "node-b", 1.0), 1)
        assert await other.participants("f1") != await store.participants("f1")
        await store.publish(ViewerCountChanged("f1", 1, 1))
        await other.publish(ViewerCountChanged("f1", 9, 9))
        assert (await sub.get(DEADLINE_S)).viewers == 9  # never saw the other prefix's event
    finally:
        await other.stop()


async def test_unreachable_redis_and_unstarted_store_are_clear_errors() -> None:
    nowhere = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "node-x")
    with pytest.raises(RoomError) as down:
        await nowhere.start()
    assert down.value.code == "unavailable" and "cannot reach Redis" in down.value.message
    with pytest.raises(RoomError) as idle:
        await nowhere.counts("f1")
    assert idle.value.code == "unavailable"
    await nowhere.stop()
    await nowhere.stop()


async def test_losing_redis_mid_flight_is_unavailable_not_a_crash() -> None:
    server = start_redis()
    store = RedisStore(server.url, "node-a", retry_min_s=0.05, retry_max_s=0.1)
    try:
        await store.start()
        assert await store.admit(Participant("v1", "f1", Role.VIEWER, "Guest", "node-a", 1.0), 5)
        server.stop()
        for call in (store.counts("f1"), store.update_program("f1", None, program="cam"), store.nodes()):
            with pytest.raises(RoomError) as err:
                await call
            assert err.value.code == "unavailable"
        with pytest.raises(RoomError) as lost:
            await store.publish(ViewerCountChanged("f1", 1, 1))
        assert lost.value.code == "unavailable"
    finally:
        await store.stop()
        server.stop()


async def test_bad_messages_in_a_nodes_inbox_are_ignored_and_requests_go_on(
    store: RedisStore, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(request: BusRequest) -> JsonObject:
        return {"ok": request.kind}

    store.serve(answer)
    asker = RedisStore(redis_url, "node-b", prefix="t")
    raw = aioredis.Redis.from_url(redis_url)
    await asker.start()
    try:
        for junk in (b"not json", b"[1, 2]", json.dumps({"kind": "take"}).encode(),  # a request missing its id
                     json.dumps({"id": "nobody-asked", "result": {}}).encode()):  # a reply to no request
            await raw.publish(store.inbox, junk)
        assert await asker.request(store.node_id, "take", {}, timeout_s=DEADLINE_S) == {"ok": "take"}
        assert [r for r in caplog.records if "ignored a" in r.getMessage()]
    finally:
        await raw.aclose()
        await asker.stop()


async def test_a_lease_lives_in_redis_with_its_ttl(store: RedisStore, redis_url: str) -> None:
    """SET NX PX: the key holds the owner and expires by Redis's own clock."""
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await store.acquire_lease("f1", "node-a@1", 4000)
        assert await raw.get("t:lease:f1") == "node-a@1"
        assert 0 < await raw.pttl("t:lease:f1") <= 4000
        assert await store.renew_lease("f1", "node-a@1", 60_000)
        assert 4000 < await raw.pttl("t:lease:f1") <= 60_000
        with pytest.raises(RoomError) as bad:
            await store.acquire_lease("f1", "node-a@1", 0)
        assert bad.value.code == "invalid"
    finally:
        await raw.aclose()
