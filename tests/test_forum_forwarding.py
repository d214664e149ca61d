"""Forum commands run where the forum is hosted: on real Redis, two
nodes (two RedisStores) with their lease keepers and routers; on the
memory store, the one node. The lease TTL is short here so takeovers
happen within the test; the clock is the real one (the pure logic's
timing is tested clock-free in test_forum_ownership.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from rooms.errors import RoomError
from rooms.forum_forwarding import ForumRouter
from rooms.forum_ownership import ForumOwnership, Owner
from rooms.lease_keeper import LeaseKeeper
from rooms.memory_store import MemoryStore
from rooms.store import JsonObject, Store
from tests.eventually import eventually

DEADLINE_S = 20.0


@dataclass
class Node:
    store: Store
    keeper: LeaseKeeper
    router: ForumRouter
    ran: list[tuple[str, str, JsonObject]] = field(default_factory=list)
    hang: asyncio.Event | None = None

    async def local(self, forum_id: str, kind: str, body: JsonObject) -> JsonObject:
        self.ran.append((forum_id, kind, body))
        if kind == "refuse":
            raise RoomError("conflict", f"source {body.get('source')} is not live")
        if self.hang is not None:
            await self.hang.wait()
        return {"ran_on": self.store.node_id, "source": body.get("source")}


async def make_node(store: Store, ttl_ms: int = 5000, timeout_s: float = DEADLINE_S) -> Node:
    await store.start()
    await store.heartbeat(store.node_id, {}, 30.0, public_url=f"http://127.0.0.1/{store.node_id}")
    keeper = LeaseKeeper(ForumOwnership(store, store.node_id, ttl_ms, time.monotonic))
    router = ForumRouter(keeper, store, store, store, timeout_s=timeout_s)
    node = Node(store, keeper, router)
    router.set_local(node.local)
    router.serve()
    await keeper.start()
    return node


@pytest.fixture
async def made() -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        if node.hang is not None:
            node.hang.set()
        await node.keeper.stop()
        await node.store.stop()


async def redis_nodes(redis_url: str, made: list[Node], ttl_ms: int = 5000,
                      timeout_s: float = DEADLINE_S) -> tuple[Node, Node]:
    from signaling.redis_store import RedisStore

    for name in ("a@00000001", "b@00000001"):
        made.append(await make_node(RedisStore(redis_url, name, prefix="fwd"), ttl_ms, timeout_s))
    return made[0], made[1]


async def test_a_command_on_another_nodes_forum_runs_there(redis_url: str, made: list[Node]) -> None:
    a, b = await redis_nodes(redis_url, made)
    assert await a.router.call("f1", "take", {"source": "cam"}) == {"ran_on": a.store.node_id, "source": "cam"}
    assert await b.router.where("f1") == Owner(a.store.node_id, f"http://127.0.0.1/{a.store.node_id}")
    answers = await asyncio.gather(*(b.router.call("f1", "take", {"source": f"cam{i}"}) for i in range(5)))
    assert answers == [{"ran_on": a.store.node_id, "source": f"cam{i}"} for i in range(5)]
    assert b.ran == [] and len(a.ran) == 6
    assert await b.router.where("f2") is None  # nobody hosted f2: b takes it
    assert await a.router.call("f2", "take", {"source": "x"}) == {"ran_on": b.store.node_id, "source": "x"}


async def test_a_refusal_on_the_owner_comes_back_with_its_code(redis_url: str, made: list[Node]) -> None:
    a, b = await redis_nodes(redis_url, made)
    assert await a.router.where("f1") is None
    with pytest.raises(RoomError) as refused:
        await b.router.call("f1", "refuse", {"source": "cam"})
    assert (refused.value.code, refused.value.message) == ("conflict", "source cam is not live")


async def test_an_owner_that_does_not_answer_is_unavailable(redis_url: str, made: list[Node]) -> None:
    a, b = await redis_nodes(redis_url, made, timeout_s=0.3)
    assert await a.router.where("f1") is None
    a.hang = asyncio.Event()
    with pytest.raises(RoomError) as late:
        await b.router.call("f1", "take", {"source": "cam"})
    assert late.value.code == "unavailable" and "did not answer" in late.value.message


async def test_a_dead_owners_forum_is_unavailable_until_its_lease_expires_then_taken_over(
    redis_url: str, made: list[Node]
) -> None:
    a, b = await redis_nodes(redis_url, made, ttl_ms=500)
    assert await a.router.where("f1") is None
    await a.store.stop()  # a crashes: its inbox is gone, its lease still runs
    with pytest.raises(RoomError) as gone:
        await b.router.call("f1", "take", {"source": "cam"})
    assert gone.value.code == "unavailable"

    async def taken_over() -> bool:
        return await b.router.where("f1") is None

    await eventually(taken_over, timeout=DEADLINE_S, what="b to take f1 once a's 500 ms lease expired")
    assert await b.router.call("f1", "take", {"source": "cam"}) == {"ran_on": b.store.node_id, "source": "cam"}


async def test_the_memory_store_runs_every_command_on_its_one_node(made: list[Node]) -> None:
    node = await make_node(MemoryStore("solo@00000001"))
    made.append(node)
    assert await node.router.call("f1", "take", {"source": "cam"}) == {"ran_on": "solo@00000001", "source": "cam"}
    with pytest.raises(RoomError) as refused:
        await node.router.call("f1", "refuse", {"source": "cam"})
    assert refused.value.code == "conflict"
    # a lease another instance holds (a previous run's, say) cannot be reached: unavailable, not a hang
    assert await node.store.acquire_lease("f2", "crashed@00000000", 30_000)
    with pytest.raises(RoomError) as elsewhere:
        await node.router.call("f2", "take", {"source": "cam"})
    assert elsewhere.value.code == "unavailable"


async def test_a_forwarded_command_that_does_not_fit_is_refused_before_it_runs() -> None:
    from rooms.routed_control import run_command

    class Untouched:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"{name} must not run")

    grant = {"role": "operator", "forums": ["f1"], "name": "Ops", "subject": "ops", "expires_at": 2e9}
    cases: list[tuple[str, JsonObject]] = [
        ("drop_database", {"grant": grant, "args": {}}),  # not a ForumControl command
        ("take", {"grant": grant, "args": {"source_id": "cam", "sudo": True}}),  # an argument take has not
        ("take", {"grant": {"role": "god"}, "args": {}}),  # not a grant
        ("take", {"args": {}}),  # no grant at all
    ]
    for command, body in cases:
        with pytest.raises(RoomError) as refused:
            await run_command(Untouched(), "f1", command, body)  # type: ignore[arg-type]
        assert refused.value.code == "invalid", (command, body)


async def test_the_keeper_tells_its_listener_and_a_stop_gives_every_lease_up() -> None:
    store = MemoryStore("solo@00000001")
    await store.start()
    told: list[tuple[str, str]] = []

    class Listener:
        async def acquired(self, forum_id: str) -> None:
            told.append(("acquired", forum_id))

        async def lost(self, forum_id: str) -> None:
            told.append(("lost", forum_id))

    keeper = LeaseKeeper(ForumOwnership(store, store.node_id, 5000, time.monotonic), Listener())
    await keeper.start()
    try:
        assert await keeper.claim("f1") and await keeper.claim("f2")
        assert await keeper.claim("f1")  # already ours: nothing new to tell
        assert told == [("acquired", "f1"), ("acquired", "f2")]
        assert await store.acquire_lease("f3", "other@00000001", 30_000)
        assert not await keeper.claim("f3")  # another's: not ours, nothing told
    finally:
        await asyncio.gather(keeper.stop(), keeper.stop())  # concurrent stops: one release
        await store.stop()
    assert told == [("acquired", "f1"), ("acquired", "f2"), ("lost", "f1"), ("lost", "f2")]
    assert await store.lease_owner("f1") is None and await store.lease_owner("f2") is None
    assert await store.lease_owner("f3") == "other@00000001"
