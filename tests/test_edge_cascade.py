"""Three forumcast nodes on one real Redis: edges pulling from edges (a
tree, rooms/edge_tree.py) and viewers of a killed edge watching again
through another node (tests/cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from streaming.forum_host import SLATE_SIZE
from tests.cluster import Cluster, start_cluster
from tests.eventually import eventually
from tests.operator_app import RecordingViewer, SizedPublisher
from tests.server_process import ServerProcess

FORUM = "digital-economy"
SPEAKER_SIZE = (320, 240)


@pytest.fixture
def tree_cluster(redis_url: str) -> Iterator[Cluster]:
    """a, b, c; each node serves one edge link per forum before it sends
    the next edge on (edge_fanout=1)."""
    started = start_cluster(redis_url, ("a", "b", "c"), extra_env={"FORUMCAST_EDGE_FANOUT": "1"})
    try:
        yield started
    finally:
        started.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def edges(node: ServerProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    response = await http.get(f"{node.url}/api/edges", headers=auth(node.token(Role.ADMIN)))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def pull_of(node: ServerProcess, http: aiohttp.ClientSession) -> dict[str, Any] | None:
    """The node's pull of FORUM when it is live (None otherwise)."""
    pulls = [p for p in (await edges(node, http))["pulls"] if p["forum_id"] == FORUM and p["state"] == "live"]
    return pulls[0] if pulls else None


async def watch_whep(http: aiohttp.ClientSession, node: ServerProcess, viewer: RecordingViewer, name: str) -> str:
    """A WHEP viewer served by `node` itself (201, no redirect); its session URL."""
    token = node.token(Role.VIEWER, [FORUM], name)
    response = await http.post(f"{node.url}/whep/{FORUM}", data=await viewer.offer(), allow_redirects=False,
                               headers={**auth(token), "Content-Type": "application/sdp"})
    assert response.status == 201, await response.text()
    await viewer.accept(await response.text())
    return node.url + response.headers["Location"]


async def live_speaker(http: aiohttp.ClientSession, origin: ServerProcess, speaker: SizedPublisher) -> str:
    """The speaker on `origin` (it owns the forum then), on the program."""
    created = await http.post(f"{origin.url}/whip/{FORUM}", data=await speaker.offer(), allow_redirects=False,
                              headers={**auth(origin.token(Role.SPEAKER, [FORUM], "Speaker")),
                                       "Content-Type": "application/sdp"})
    assert created.status == 201, await created.text()
    await speaker.accept(await created.text())

    async def live() -> list[str]:
        response = await http.get(f"{origin.url}/api/forums/{FORUM}")
        return [s["id"] for s in (await response.json()).get("sources", [])
                if s["kind"] == "live" and s["state"] == "live"]

    source_id = (await eventually(live, timeout=30, what="the speaker live"))[0]
    taken = await http.post(f"{origin.url}/api/forums/{FORUM}/program", json={"source": source_id},
                            headers=auth(origin.token(Role.OPERATOR, [FORUM], "Ops")))
    assert taken.status == 200, await taken.text()
    return source_id


@pytest.mark.slow
async def test_an_edge_pulls_from_an_edge_when_the_origin_is_full_takes_reach_depth_2_and_it_reparents_when_its_parent_dies(
    tree_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    cluster = tree_cluster
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    a_id, b_id = cluster.node_id("a"), cluster.node_id("b")
    speaker = SizedPublisher(*SPEAKER_SIZE)
    on_b, on_c = RecordingViewer(), RecordingViewer()
    try:
        source_id = await live_speaker(http, a, speaker)
        await watch_whep(http, b, on_b, "Guest on b")
        await on_b.wait_size(SPEAKER_SIZE, timeout=30)
        pull_b = await eventually(lambda: pull_of(b, http), timeout=30, what="b's pull live")
        assert (pull_b["parent"], pull_b["depth"]) == (a_id, 1)

        def a_sees_b_as_an_edge() -> bool:  # the origin decides from b's heartbeat
            nodes = {n["node_id"]: n for n in cluster.cluster_view("a")["nodes"]}
            place = nodes[b_id]["load"].get("tree", {}).get(FORUM)
            return place == {"parent": a_id, "depth": 1, "links": 0, "live": True}

        await eventually(a_sees_b_as_an_edge, timeout=30, what="b's heartbeat to show its pull")

        # a serves one edge link (b's): c's pull is sent to b, c is at depth 2
        await watch_whep(http, c, on_c, "Guest on c")
        await on_c.wait_size(SPEAKER_SIZE, timeout=30)
        pull_c = await eventually(lambda: pull_of(c, http), timeout=30, what="c's pull live")
        assert (pull_c["parent"], pull_c["depth"], pull_c["whep_url"]) == (b_id, 2, f"{a.url}/whep/{FORUM}")
        assert (await edges(a, http))["served"] == {FORUM: 1}
        assert (await edges(b, http))["served"] == {FORUM: 1}

        # a cut and a take at the origin reach the viewer at depth 2 (printed, not asserted: shared machine)
        ops = auth(a.token(Role.OPERATOR, [FORUM], "Ops"))
        asked = time.monotonic()
        cut = await http.post(f"{a.url}/api/forums/{FORUM}/program", json={"slate": True}, headers=ops)
        assert cut.status == 200, await cut.text()
        depth1 = (await on_b.wait_size(SLATE_SIZE, timeout=30, after=asked)).at - asked
        depth2 = (await on_c.wait_size(SLATE_SIZE, timeout=30, after=asked)).at - asked
        print(f"cut to the slate -> first slate frame: depth 1 {depth1 * 1000:.0f} ms, depth 2 {depth2 * 1000:.0f} ms")
        asked = time.monotonic()
        taken = await http.post(f"{a.url}/api/forums/{FORUM}/program", json={"source": source_id}, headers=ops)
        assert taken.status == 200, await taken.text()
        await on_c.wait_size(SPEAKER_SIZE, timeout=30, after=asked)

        # b dies: c re-parents (to a: the only live node with a place in the tree) and its viewer watches on
        killed = time.monotonic()
        cluster.kill("b")
        again = await on_c.wait_size(SPEAKER_SIZE, timeout=60, after=killed + 0.5)
        print(f"SIGKILL of the parent edge -> the depth-2 viewer's next frame: {again.at - killed:.2f} s")

        async def reparented() -> dict[str, Any] | None:
            pull = await pull_of(c, http)
            return pull if pull is not None and pull["parent"] == a_id else None

        pull_c = await eventually(reparented, timeout=30, what="c to pull from a")
        assert pull_c["depth"] == 1
    finally:
        for peer in (on_b, on_c, speaker):
            await peer.close()
