"""signaling/node_liveness.py on a real Redis: a node is there while its
bus inbox has a listener that answers, whatever it answers; a stopped
node (a killed one's connection closes alike) is not, at once, though
its heartbeat would live on."""

from __future__ import annotations

import asyncio

from rooms.errors import RoomError
from rooms.store import BusRequest, JsonObject
from signaling.node_liveness import answering
from signaling.redis_store import RedisStore


async def test_a_listening_node_answers_a_stopped_or_silent_one_does_not(redis_url: str) -> None:
    asker = RedisStore(redis_url, "asker@1", prefix="live")
    other = RedisStore(redis_url, "other@1", prefix="live")
    await asker.start()
    await other.start()
    try:
        async def refuse(request: BusRequest) -> JsonObject:  # as ForumRouter answers a kind it does not know
            raise RoomError("invalid", f"no {request.kind}")

        other.serve(refuse)
        await other.heartbeat(other.node_id, {}, ttl_s=60, public_url="http://other.test")
        assert await answering(asker, other.node_id)
        assert await answering(asker, asker.node_id)  # itself, without the bus

        async def hang(request: BusRequest) -> JsonObject:
            await asyncio.sleep(30)
            return {}

        other.serve(hang)
        assert not await answering(asker, other.node_id, timeout_s=0.2)

        await other.stop()
        assert [n.node_id for n in await asker.nodes()] == [other.node_id]  # its heartbeat lives on
        assert not await answering(asker, other.node_id)  # nobody listens: at once, no timeout
        assert not await answering(asker, "never-started@1")
    finally:
        await asker.stop()
        await other.stop()
