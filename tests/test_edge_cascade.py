"""Three forumcast nodes on one real Redis: edges pulling from edges (a
tree, rooms/edge_tree.py) and viewers of a killed edge watching again
through another node (tests/cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from streaming.forum_host import SLATE_SIZE
from tests.cluster import Cluster, start_cluster
from tests.eventually import eventually
from tests.operator_app import Frame, RecordingViewer, SizedPublisher
from tests.server_process import ServerProcess

FORUM = "digital-economy"
SPEAKER_SIZE = (320, 240)


@pytest.fixture
def tree_cluster(redis_url: str) -> Iterator[Cluster]:
    """a, b, c; each node serves one edge link per forum before it sends
    the next edge on (edge_fanout=1)."""
    with start_cluster(redis_url, ("a", "b", "c"), extra_env={"FORUMCAST_EDGE_FANOUT": "1"}) as started:
        yield started


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

        def after_the_gap() -> Frame | None:
            """The first frame after the picture stalled (0.5 s without a frame) since the kill."""
            frames = list(on_c.frames)
            return next((f for before, f in zip(frames, frames[1:])
                         if f.at >= killed and f.at - before.at > 0.5), None)

        again = await eventually(after_the_gap, timeout=60, what="c's viewer to see frames after the gap")
        print(f"SIGKILL of the parent edge -> the depth-2 viewer's next frame: {again.at - killed:.2f} s")

        async def reparented() -> dict[str, Any] | None:
            pull = await pull_of(c, http)
            return pull if pull is not None and pull["parent"] == a_id else None

        pull_c = await eventually(reparented, timeout=30, what="c to pull from a")
        assert pull_c["depth"] == 1
        # c re-pulled because b stopped answering on the bus, not after its pull's 5 s media timeout
        assert "stopped answering" in c.log_path.read_text(errors="replace")
    finally:
        for peer in (on_b, on_c, speaker):
            await peer.close()


class WhepPlayer:
    """A WHEP player as a viewer's app would be: POSTs at an entry node,
    follows the 307s (RFC 9725 s4.5: placement), and when its picture
    stalls `stall_s` (its node died) drops the session and POSTs again at
    the entry. `attempts`: (monotonic time, node URL that answered 201 or
    the error) of every POST after the first."""

    def __init__(self, http: aiohttp.ClientSession, entry: str, token: str, stall_s: float = 1.0) -> None:
        self._http = http
        self.entry = entry
        self._token = token
        self._stall_s = stall_s
        self.viewer = RecordingViewer()
        self.node = ""
        self.attempts: list[tuple[float, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._post()
        self._task = asyncio.create_task(self._watchdog())

    async def _post(self) -> None:
        offer = await self.viewer.offer()
        url = self.entry
        for _ in range(5):
            response = await self._http.post(url, data=offer, allow_redirects=False,
                                             headers={**auth(self._token), "Content-Type": "application/sdp"})
            if response.status == 307:
                url = response.headers["Location"]
                continue
            assert response.status == 201, await response.text()
            await self.viewer.accept(await response.text())
            self.node = url.split("/whep/")[0]
            return
        raise AssertionError("too many redirects")

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            frames = self.viewer.frames
            if not frames or time.monotonic() - frames[-1].at < self._stall_s:
                continue
            await self.viewer.close()  # a real player DELETEs too; its node is gone
            self.viewer = RecordingViewer()
            try:
                await self._post()
                self.attempts.append((time.monotonic(), self.node))
            except (aiohttp.ClientError, OSError, AssertionError) as exc:
                self.attempts.append((time.monotonic(), f"failed: {exc!r}"))
                await asyncio.sleep(0.5)

    def frame_after(self, after: float) -> Frame | None:
        """The first speaker frame the current viewer decoded after `after`."""
        return next((f for f in self.viewer.frames if (f.width, f.height) == SPEAKER_SIZE and f.at >= after), None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.viewer.close()


@pytest.fixture
def small_cluster(redis_url: str) -> Iterator[Cluster]:
    """a, b, c, each full at two WebRTC viewers (edge links count)."""
    with start_cluster(redis_url, ("a", "b", "c"), extra_env={"FORUMCAST_NODE_MAX_VIEWERS": "2"}) as started:
        yield started


@pytest.mark.slow
async def test_whep_viewers_of_a_killed_edge_are_sent_by_placement_to_a_live_node_and_watch_again(
    small_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """b's viewer re-POSTs at its entry (a, the origin, full with b's and
    c's edge links): placement's 307 must name c at once, though b's
    heartbeat lives on for up to node_ttl_s after the SIGKILL."""
    cluster = small_cluster
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    b_id, c_id = cluster.node_id("b"), cluster.node_id("c")
    speaker = SizedPublisher(*SPEAKER_SIZE)
    on_c = RecordingViewer()
    token = a.token(Role.VIEWER, [FORUM], "Guest")
    player = WhepPlayer(http, f"{b.url}/whep/{FORUM}", token)  # placed on b first (its entry, then a's)
    try:
        await live_speaker(http, a, speaker)
        await player.start()
        await player.viewer.wait_size(SPEAKER_SIZE, timeout=30)
        assert player.node == b.url
        await watch_whep(http, c, on_c, "Guest on c")
        await on_c.wait_size(SPEAKER_SIZE, timeout=30)

        async def placement() -> dict[str, Any]:
            response = await http.get(f"{a.url}/api/forums/{FORUM}/placement", headers=auth(token))
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

        async def placed_on_b() -> bool:  # a full (two edge links), b and c one viewer each: b by id
            return (await placement())["node_id"] == b_id

        await eventually(placed_on_b, timeout=30, what="placement to answer b")
        player.entry = f"{a.url}/whep/{FORUM}"  # from now on the player asks the entry node, a

        killed = time.monotonic()
        cluster.kill("b")
        after_kill = await placement()
        b_listed = b_id in {n["node_id"] for n in cluster.cluster_view("a")["nodes"]}
        assert after_kill["node_id"] == c_id, after_kill  # not the node that just died
        # a frame of the viewer the player made after the kill (b's last packets may still be decoded
        # just after it, by the viewer it had there)
        again = await eventually(lambda: player.attempts and player.frame_after(killed), timeout=60,
                                 what="frames again, through another node")
        through = {a.url: "a", c.url: "c"}.get(player.node, player.node)
        print(f"SIGKILL of the edge -> its WHEP viewer's first frame through {through}: "
              f"{again.at - killed:.2f} s (the player's stall detection 1 s included; b's heartbeat "
              f"{'still' if b_listed else 'no longer'} listed when placement was asked)")
        assert player.node in (a.url, c.url)
        assert player.attempts and player.attempts[0][1] in (a.url, c.url), player.attempts  # no try at b
    finally:
        await player.close()
        for peer in (on_c, speaker):
            await peer.close()
