"""The node's edge links (streaming/edge_links.py) against two real origin
processes (tests/server_process.py, same secret): the pull follows the
forum to its new owner, stops when the node hosts the forum itself, and
stops after the linger once the last local viewer left. The origins count
the edge links they serve (`GET /api/edges`), each a node grant
(`issue_edge_link`, minted per request) that takes no seat.

`locate` (where the forum is hosted) is the links' injected seam; in a
node it asks the forum's lease (signaling/edges.py)."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from rooms.models import Role
from rooms.tokens import TokenService
from streaming.edge_links import EdgeLinks
from streaming.media_plane import MediaPlane
from tests.aiortc_peers import TestViewer, connect_viewer
from tests.eventually import eventually
from tests.server_process import ServerProcess, start_server

pytestmark = pytest.mark.timeout(300)

FORUM = "digital-economy"


def decoded(viewer: TestViewer) -> int:
    return len(viewer.received.numbers) + viewer.received.unreadable


async def served(http: aiohttp.ClientSession, origin: ServerProcess) -> dict[str, int]:
    """The edge links `origin` serves, by forum."""
    headers = {"Authorization": f"Bearer {origin.token(Role.ADMIN)}"}
    async with http.get(origin.url + "/api/edges", headers=headers) as response:
        body = await response.json()
    assert response.status == 200, body
    counts: dict[str, int] = body["served"]
    return counts


@pytest.fixture
def edge(plane: MediaPlane) -> MediaPlane:
    """The edge node's media plane (tests/streaming/conftest.py's `plane`)."""
    return plane


async def test_the_pull_follows_the_owner_ends_when_hosted_here_and_after_the_last_viewer(
    edge: MediaPlane,
) -> None:
    secret = secrets.token_urlsafe(48)
    first, second = start_server(secret=secret), start_server(secret=secret)
    first_url, second_url = f"{first.url}/whep/{FORUM}", f"{second.url}/whep/{FORUM}"
    where: dict[str, str | None] = {"url": first_url}

    async def locate(forum_id: str) -> str | None:
        return where["url"]

    tokens = TokenService(secret)
    links = EdgeLinks(edge, locate, lambda forum_id: tokens.issue_edge_link(forum_id, "edge-test"),
                      linger_s=1.0, check_interval_s=0.2)
    viewer = TestViewer(audio=True)

    def pulling(url: str | None, state: str = "live") -> bool:
        now = links.links()
        return (now == []) if url is None else [(i.whep_url, i.state) for i in now] == [(url, state)]

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await links.start()
            await links.serve(FORUM, first_url)
            await links.serve(FORUM, first_url)  # a second viewer: the same one pull
            await connect_viewer(edge, FORUM, "edge-viewer", viewer, timeout=20)
            await eventually(lambda: pulling(first_url), timeout=30, what="the pull of the first origin live")
            await eventually(lambda: decoded(viewer) >= 5, timeout=30, what="frames at the edge viewer")
            assert await served(http, first) == {FORUM: 1}
            assert edge.program(FORUM) == "edge:" + FORUM  # the pull is the edge's program

            # a takeover: the forum is hosted by the second origin now; the pull follows it
            where["url"] = second_url
            await eventually(lambda: pulling(second_url), timeout=30, what="the pull re-pointed and live")
            before = decoded(viewer)
            await eventually(lambda: decoded(viewer) >= before + 5, timeout=30,
                             what="frames from the second origin at the edge viewer")

            async def moved_over() -> bool:
                return await served(http, first) == {} and await served(http, second) == {FORUM: 1}

            await eventually(moved_over, timeout=20, what="the first origin's edge link ended, the second's begun")

            # this node took the forum: the pull ends (the host's switcher has the program)
            where["url"] = None
            await eventually(lambda: pulling(None), timeout=20, what="the pull ended once hosted here")

            async def none_served() -> bool:
                return await served(http, second) == {}

            await eventually(none_served, timeout=20, what="the second origin's edge link ended")

            # pulled again; the last viewer leaves: the pull ends after the linger
            where["url"] = first_url
            await links.serve(FORUM, first_url)
            await eventually(lambda: pulling(first_url), timeout=30, what="the pull live again")
            await edge.leave("edge-viewer")
            await eventually(lambda: pulling(None), timeout=20, what="the pull ended after the last viewer")

            async def first_free() -> bool:
                return await served(http, first) == {}

            await eventually(first_free, timeout=20, what="the first origin's edge link ended")
    finally:
        await links.stop()
        await viewer.close()
        first.cleanup()
        second.cleanup()
