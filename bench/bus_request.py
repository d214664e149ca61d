"""What forwarding a forum command costs: one request/reply over the
store's bus (rooms/store.py `request` / `serve`) between two nodes on a
real redis-server on loopback, against the same call answered on the
asking node itself (no transport).

    python -m bench.bus_request [--requests 500]

Prints p50 / p95 / max in ms. The request carries a take's worth of
plain data (a Grant and two arguments), as a forwarded operator command does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from rooms.store import BusRequest, JsonObject, Store
from signaling.redis_store import RedisStore
from tests.processes import start_redis

BODY: JsonObject = {
    "grant": {"role": "operator", "forums": ["ai"], "name": "Ops", "subject": "ops-1",
              "expires_at": 2e9, "language": ""},
    "args": {"source_id": "cam-1", "expected_version": 7},
}


async def answer(request: BusRequest) -> JsonObject:
    return {"program": {"forum_id": "ai", "program": "cam-1", "preview": None, "slate": False,
                        "manual": False, "version": 8}}


async def timed(asker: Store, node_id: str, count: int) -> list[float]:
    took: list[float] = []
    for _ in range(count):
        began = time.perf_counter()
        await asker.request(node_id, "forum_command", BODY, timeout_s=10)
        took.append((time.perf_counter() - began) * 1000)
    return took


def summary(name: str, took: list[float]) -> str:
    ordered = sorted(took)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"{name:<26} p50 {statistics.median(took):6.3f} ms   p95 {p95:6.3f} ms   max {max(took):6.3f} ms"


async def main(count: int) -> None:
    server = start_redis()
    owner = RedisStore(server.url, "owner@1", prefix="bench")
    asker = RedisStore(server.url, "asker@1", prefix="bench")
    try:
        await owner.start()
        await asker.start()
        owner.serve(answer)
        asker.serve(answer)
        await timed(asker, owner.node_id, 50)  # warm the pools
        remote = await timed(asker, owner.node_id, count)
        local = await timed(asker, asker.node_id, count)
        print(f"{count} requests, Redis on loopback")
        print(summary("forwarded to another node", remote))
        print(summary("answered on this node", local))
    finally:
        await asker.stop()
        await owner.stop()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))
