"""An edge pulls a forum's program from a real origin process over WHEP
(streaming/edge_pull.py) and fans it out to its own viewers: real
processes, real aiortc peers on loopback.

The origin is `forumcast serve` (tests/server_process.py) whose forum has
its slate on air; the edge is an in-process MediaPlane, as an edge node's
would be, with the EdgePull as the source of the forum's program."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import aiohttp
from aiohttp import web
import pytest

from rooms.models import Role
from streaming.edge_pull import EdgePull, EdgeState
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests.aiortc_peers import TestPublisher, TestViewer, connect_viewer
from tests.eventually import eventually
from tests.processes import free_port
from tests.server_process import ServerProcess, start_server

pytestmark = pytest.mark.timeout(300)

FORUM = "digital-economy"
EDGE_VIEWERS = 5


def decoded(viewer: TestViewer) -> int:
    """Video frames this viewer decoded (the slate carries no number)."""
    return len(viewer.received.numbers) + viewer.received.unreadable


async def whep_viewers(http: aiohttp.ClientSession, origin: ServerProcess) -> int:
    """The origin's WebRTC viewers of FORUM, from its /metrics."""
    headers = {"Authorization": f"Bearer {origin.token(Role.ADMIN)}"}
    async with http.get(origin.url + "/metrics", headers=headers) as response:
        text = await response.text()
    assert response.status == 200, text
    found = re.search(r'^forumcast_viewers\{forum="%s"\} (\S+)$' % re.escape(FORUM), text, re.M)
    return int(float(found.group(1))) if found else 0


@pytest.fixture
def edge(plane: MediaPlane) -> MediaPlane:
    """The edge node's media plane (tests/streaming/conftest.py's `plane`)."""
    return plane


async def test_an_edge_pulls_once_serves_its_viewers_and_survives_an_origin_restart(
        edge: MediaPlane) -> None:
    origin = start_server()
    secret, port = origin.secret, origin.port
    viewers = [TestViewer(audio=True) for _ in range(EDGE_VIEWERS)]
    states: list[EdgeState] = []
    pull = EdgePull(
        FORUM, f"{origin.url}/whep/{FORUM}", origin.token(Role.VIEWER, [FORUM], "Edge node"),
        edge, edge.config, edge.decoders,
        on_state=lambda _, state: states.append(state), media_timeout=3.0,
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await pull.start()
            edge.set_program(FORUM, pull.source_id)  # what the edge's forum carries: the pull
            await eventually(lambda: pull.state == EdgeState.LIVE, timeout=30,
                             what=f"the pull live (state {pull.state}, {pull.reason!r})")
            for index, viewer in enumerate(viewers):
                await connect_viewer(edge, FORUM, f"edge-viewer-{index}", viewer, timeout=20)
            for viewer in viewers:
                await eventually(lambda v=viewer: decoded(v) >= 5, timeout=30,  # type: ignore[misc]
                                 what="decoded frames at an edge viewer")
            # the origin serves the edge once, whatever the edge's audience
            assert await whep_viewers(http, origin) == 1
            assert edge.stats()["decoders_created"] == 0  # the pull never decodes
            stats = await pull.stats()
            assert stats.connections == 1 and stats.packets_received > 0 and stats.kbps_in > 0

            # the origin dies: the pull says why and keeps trying
            origin.process.send_signal(signal.SIGKILL)
            origin.process.wait()
            await eventually(lambda: pull.state == EdgeState.RETRYING, timeout=30,
                             what="the pull retrying after the origin died")
            assert pull.reason, "a retrying pull says why"
            before = [decoded(v) for v in viewers]

            # the origin is back on the same port: the pull is live again, viewers see frames
            origin.cleanup()
            origin = start_server(secret=secret, port=port)
            await eventually(lambda: pull.state == EdgeState.LIVE, timeout=60,
                             what=f"the pull live again (state {pull.state}, {pull.reason!r})")
            for viewer, count in zip(viewers, before):
                await eventually(lambda v=viewer, c=count: decoded(v) >= c + 5, timeout=30,  # type: ignore[misc]
                                 what="frames at an edge viewer after the origin restarted")
            assert await whep_viewers(http, origin) == 1
            assert (await pull.stats()).connections >= 2
            assert states[:2] == [EdgeState.LIVE, EdgeState.RETRYING] and states[-1] == EdgeState.LIVE

            await pull.stop()
            await asyncio.gather(pull.stop(), pull.stop())  # idempotent, concurrent callers too
            assert pull.state == EdgeState.STOPPED
            # stop() DELETEd the WHEP session: the origin's viewer is gone
            await eventually(lambda: _zero(http, origin), timeout=20, what="the origin's WHEP viewer gone")
    finally:
        await pull.stop()
        for viewer in viewers:
            await viewer.close()
        origin.cleanup()


async def _zero(http: aiohttp.ClientSession, origin: ServerProcess) -> bool:
    return await whep_viewers(http, origin) == 0


async def test_a_refused_pull_retries_with_backoff_and_says_why(edge: MediaPlane) -> None:
    """A token the origin refuses: the pull never goes live, keeps trying
    (1 s, then 2 s...) and its reason carries the origin's answer."""
    origin = start_server()
    pull = EdgePull(FORUM, f"{origin.url}/whep/{FORUM}", "not-a-token", edge, edge.config,
                    edge.decoders)
    try:
        await pull.start()
        await eventually(lambda: pull.state == EdgeState.RETRYING, timeout=20, what="retrying")
        assert "refused" in pull.reason and "401" in pull.reason, pull.reason
        assert "next try in 1 s" in pull.reason
        await eventually(lambda: "next try in 2 s" in pull.reason, timeout=20, what="the backoff doubling")
        assert pull.feed is None
    finally:
        await pull.stop()
        origin.cleanup()



async def test_a_speaker_on_the_origin_reaches_edge_viewers_and_their_keyframe_requests_reach_the_speaker(
        edge: MediaPlane) -> None:
    """A real publisher (WHIP) on the origin goes on air; edge viewers read
    its numbered frames. A viewer joining the edge later needs a keyframe:
    the edge asks the origin (PLI), the origin asks the speaker, and aiortc's
    encoder (no periodic keyframe to wait for soon) makes one."""
    origin = start_server()
    publisher = TestPublisher()
    first, late = TestViewer(), TestViewer()
    pull = EdgePull(FORUM, f"{origin.url}/whep/{FORUM}", origin.token(Role.VIEWER, [FORUM], "Edge node"),
                    edge, edge.config, edge.decoders)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            speaker = origin.token(Role.SPEAKER, [FORUM], "Speaker")
            async with http.post(f"{origin.url}/whip/{FORUM}", data=await publisher.offer(),
                                 headers={"Authorization": f"Bearer {speaker}",
                                          "Content-Type": "application/sdp"}) as response:
                answer = await response.text()
                assert response.status == 201, answer
            await publisher.accept(answer)
            await asyncio.wait_for(publisher.connected.wait(), 20)
            await pull.start()
            edge.set_program(FORUM, pull.source_id)
            await connect_viewer(edge, FORUM, "edge-first", first, timeout=20)
            await first.wait_frames(10, timeout=40)  # the speaker's numbered picture, through the edge
            feed = pull.feed
            assert feed is not None and feed.video is not None
            requests_at_origin = publisher.keyframe_requests
            sent_by_edge = feed.video.keyframe_requests_sent
            await connect_viewer(edge, FORUM, "edge-late", late, timeout=20)
            await eventually(lambda: publisher.keyframe_requests > requests_at_origin, timeout=20,
                             what="the speaker asked for a keyframe")
            assert feed.video.keyframe_requests_sent > sent_by_edge  # the late viewer's want went upstream
            await late.wait_frames(5, timeout=40)
            assert edge.stats()["decoders_created"] == 0
    finally:
        await pull.stop()
        for peer in (first, late):
            await peer.close()
        await publisher.close()
        origin.cleanup()


async def test_the_pull_gathers_with_the_ice_servers_the_origin_lists(edge: MediaPlane) -> None:
    """RFC 9725 s4.6: the origin's OPTIONS (with the token) lists STUN/TURN
    servers as Link headers, TURN with coturn REST-API credentials; the
    pull reads them (quoted values included) and gathers with them. Nothing
    listens on those ports here: gathering gives up on them and the host
    pair still connects."""
    stun_port, turn_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    origin = start_server(extra_env={
        "FORUMCAST_ICE_SERVERS": f"stun:127.0.0.1:{stun_port},turn:127.0.0.1:{turn_port}?transport=udp",
        "FORUMCAST_TURN_SECRET": "edge-test-secret",
    })
    pull = EdgePull(FORUM, f"{origin.url}/whep/{FORUM}", origin.token(Role.VIEWER, [FORUM], "Edge node"),
                    edge, edge.config, edge.decoders)
    try:
        await pull.start()
        await eventually(lambda: pull.state == EdgeState.LIVE, timeout=60,
                         what=f"the pull live (state {pull.state}, {pull.reason!r})")
        servers = {s.urls: s for s in pull.ice_servers}
        assert set(servers) == {f"stun:127.0.0.1:{stun_port}", f"turn:127.0.0.1:{turn_port}?transport=udp"}
        turn = servers[f"turn:127.0.0.1:{turn_port}?transport=udp"]
        assert turn.username and turn.credential
        expiry, _, holder = turn.username.partition(":")
        assert int(expiry) > time.time() and holder
    finally:
        await pull.stop()
        origin.cleanup()


async def test_the_pull_follows_a_307_and_deletes_its_session_at_the_origin(edge: MediaPlane) -> None:
    """RFC 9725 s4.5: the URL the edge is given may redirect (placement
    answers a 307 to the forum's origin); the offer is POSTed again there,
    and the session's relative Location is the origin's, so stop()'s
    DELETE reaches the origin and frees its viewer."""
    origin = start_server()
    redirects = 0

    async def redirect(request: web.Request) -> web.Response:
        nonlocal redirects
        redirects += 1
        raise web.HTTPTemporaryRedirect(f"{origin.url}/whep/{request.match_info['forum']}")

    app = web.Application()
    app.router.add_post("/whep/{forum}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    minted = 0

    def fresh_token() -> str:  # a token per request, as a node minting its own would
        nonlocal minted
        minted += 1
        return origin.token(Role.VIEWER, [FORUM], "Edge node", ttl_seconds=60)

    pull = EdgePull(FORUM, f"http://127.0.0.1:{port}/whep/{FORUM}", fresh_token, edge, edge.config,
                    edge.decoders)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await pull.start()
            await eventually(lambda: pull.state == EdgeState.LIVE, timeout=30,
                             what=f"the pull live through the redirect ({pull.reason!r})")
            assert redirects == 1
            assert minted >= 2  # OPTIONS and each POST asked for one
            assert await whep_viewers(http, origin) == 1
            session = pull.session_url
            assert session is not None and session.startswith(origin.url + f"/whep/{FORUM}/"), session
            async with http.get(session) as response:
                assert response.status == 200
            await pull.stop()
            # 404, not 410 "connection_lost": the session was DELETEd, not dropped
            async with http.get(session) as response:
                assert response.status == 404, await response.text()
            await eventually(lambda: _zero(http, origin), timeout=20, what="the origin's WHEP viewer gone")
    finally:
        await pull.stop()
        await runner.cleanup()
        origin.cleanup()


async def test_an_unusable_answer_or_unreachable_candidates_mean_a_retry_with_the_reason(
        edge: MediaPlane) -> None:
    """Between the edge and the origin, an HTTP proxy spoils the origin's
    answers: first a body that is not SDP, then an answer whose candidates
    point at a closed port (ICE cannot connect). Each attempt fails with
    its reason in words; the next one, passed through untouched, is live."""
    origin = start_server()
    closed = free_port(socket.SOCK_DGRAM)
    spoil = ["garbage", "candidates"]
    reasons: list[str] = []

    def unreachable(sdp: str) -> str:
        return re.sub(r"(a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 )\d+", rf"\g<1>{closed}", sdp)

    async def proxy(request: web.Request) -> web.Response:
        offer = await request.text()
        if spoil and spoil[0] == "candidates":
            offer = unreachable(offer)  # both ways, or ICE learns the real address from the other's checks
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{origin.url}/whep/{FORUM}", data=offer,
                                 headers={k: v for k, v in request.headers.items()
                                          if k in ("Authorization", "Content-Type")}) as response:
                body = await response.text()
                location = origin.url + response.headers.get("Location", "")
                status = response.status
        how = spoil.pop(0) if spoil else "pass"
        if how == "garbage":
            body = "this is not an answer"
        elif how == "candidates":
            body = unreachable(body)
        return web.Response(status=status, text=body, headers={"Location": location},
                            content_type="application/sdp")

    app = web.Application()
    app.router.add_post("/whep/{forum}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    config = MediaConfig(ice_addresses=("127.0.0.1",), connect_timeout=3.0)
    pull = EdgePull(FORUM, f"http://127.0.0.1:{port}/whep/{FORUM}",
                    origin.token(Role.VIEWER, [FORUM], "Edge node"), edge, config, edge.decoders,
                    backoff_initial=0.2, backoff_max=0.4)
    try:
        await pull.start()
        await eventually(lambda: pull.state == EdgeState.LIVE, timeout=60,
                         what=f"the pull live after two spoilt answers ({pull.reason!r})")
        await eventually(lambda: not spoil, timeout=1, what="both spoilt answers used")
        assert pull.connections == 2  # the garbage never made a connection; the bad candidates did
    finally:
        await pull.stop()
        await runner.cleanup()
        origin.cleanup()
    reasons = list(pull.recent_reasons)
    assert any(r.startswith("the origin's answer is unusable") for r in reasons), reasons
    assert any(r.startswith("not connected to the origin within 3 s") or r.startswith("ICE/DTLS with the origin failed")
               for r in reasons), reasons
