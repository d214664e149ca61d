"""Two forumcast nodes (two server processes) on one real Redis: one
owner per forum, publishers sent to it, program viewers elsewhere served
through an edge pull (tests/cluster.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import socketio

from rooms.models import Role
from streaming.forum_host import SLATE_SIZE
from tests.cluster import LEASE_TTL_MS, Cluster, start_cluster
from tests.eventually import eventually
from tests.operator_app import RecordingViewer, SizedPublisher
from tests.server_process import ServerProcess
from tests.signaling_peers import PublisherPeer, ViewerPeer

FORUM = "digital-economy"
ACK_TIMEOUT = 20.0
SPEAKER_SIZE = (320, 240)


async def whip_post(http: aiohttp.ClientSession, url: str, token: str, offer: str) -> aiohttp.ClientResponse:
    return await http.post(url, data=offer, allow_redirects=False,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})


async def test_both_nodes_come_up_see_each_other_and_a_forum_gets_one_owner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    view = cluster.cluster_view("b")
    by_id = {n["node_id"]: n["public_url"] for n in view["nodes"]}
    assert by_id[cluster.node_id("a")] == a.url and by_id[cluster.node_id("b")] == b.url
    assert view["owners"][FORUM] is None  # nobody needed it yet
    refused = await http.get(f"{a.url}/api/cluster", headers={"Authorization": f"Bearer {a.token(Role.OPERATOR)}"})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "forbidden"

    # a speaker publishes on both nodes at once: one node takes the forum, the other redirects to it
    peers = [PublisherPeer(), PublisherPeer()]
    try:
        offers = [await peer.offer() for peer in peers]
        token = a.token(Role.SPEAKER, [FORUM], "Speaker")
        responses = await asyncio.gather(*(
            whip_post(http, f"{node.url}/whip/{FORUM}", token, offer) for node, offer in zip((a, b), offers)))
        statuses = sorted(r.status for r in responses)
        assert statuses == [201, 307], [await r.text() for r in responses]
        hosting, redirecting = (a, b) if responses[0].status == 201 else (b, a)
        moved = next(r for r in responses if r.status == 307)
        assert moved.headers["Location"] == f"{hosting.url}/whip/{FORUM}"
        owner = cluster.owner(FORUM, "a")
        assert owner == cluster.owner(FORUM, "b") == cluster.node_id("a" if hosting is a else "b")
        # the redirect followed: the second publish lands on the owner too
        again = await whip_post(http, moved.headers["Location"], token, offers[1 if responses[1].status == 307 else 0])
        assert again.status == 201, await again.text()
    finally:
        for peer in peers:
            await peer.close()


async def test_a_socketio_publish_on_the_other_node_is_answered_with_the_owners_url(cluster: Cluster) -> None:
    a, b = cluster["a"], cluster["b"]
    sio_a, sio_b = socketio.AsyncClient(reconnection=False), socketio.AsyncClient(reconnection=False)
    peer = PublisherPeer()
    try:
        token = a.token(Role.SPEAKER, [FORUM], "Speaker")
        await sio_a.connect(a.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_a.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        offer = await peer.offer()
        published = await sio_a.call("publish", {"forum_id": FORUM, "sdp": offer}, timeout=ACK_TIMEOUT)
        assert "source_id" in published, published
        assert cluster.owner(FORUM, "b") == cluster.node_id("a")

        await sio_b.connect(b.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_b.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        moved = await sio_b.call("publish", {"forum_id": FORUM, "sdp": offer}, timeout=ACK_TIMEOUT)
        assert moved["error"]["code"] == "moved" and moved["error"]["url"] == a.url + "/", moved
    finally:
        await peer.close()
        for client in (sio_a, sio_b):
            if client.connected:
                await client.disconnect()


async def edges(node: ServerProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    """`GET /api/edges` of `node`: its pulls (as an edge) and the edge links it serves (as an origin)."""
    response = await http.get(f"{node.url}/api/edges", headers={"Authorization": f"Bearer {node.token(Role.ADMIN)}"})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def live_sources(node: ServerProcess, http: aiohttp.ClientSession) -> list[str]:
    response = await http.get(f"{node.url}/api/forums/{FORUM}")
    return [s["id"] for s in (await response.json()).get("sources", []) if s["kind"] == "live" and s["state"] == "live"]


@pytest.mark.slow
async def test_program_viewers_on_the_other_node_are_served_through_one_edge_pull(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A speaker on a (the owner), viewers on b: b pulls the program from a
    once (an edge link, no seat) and serves them itself; an operator's cut
    on b reaches b's viewers; their leaving ends the pull."""
    a, b = cluster["a"], cluster["b"]
    speaker = SizedPublisher(*SPEAKER_SIZE)
    viewer, whep_viewer, origin_viewer = RecordingViewer(), RecordingViewer(), RecordingViewer()
    sio_b, ops_a = socketio.AsyncClient(reconnection=False), socketio.AsyncClient(reconnection=False)
    try:
        created = await whip_post(http, f"{a.url}/whip/{FORUM}", a.token(Role.SPEAKER, [FORUM], "Speaker"),
                                  await speaker.offer())
        assert created.status == 201, await created.text()  # a owns the forum now
        await speaker.accept(await created.text())
        source_id = (await eventually(lambda: live_sources(a, http), timeout=30, what="the speaker live"))[0]
        ops = b.token(Role.OPERATOR, [FORUM], "Ops on B")
        operator = {"Authorization": f"Bearer {ops}"}
        taken = await http.post(f"{b.url}/api/forums/{FORUM}/program", json={"source": source_id}, headers=operator)
        assert taken.status == 200, await taken.text()

        # a socket.io program viewer on b: answered by b, not moved
        token = b.token(Role.VIEWER, [FORUM], "Guest")
        await sio_b.connect(b.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_b.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        watched = await sio_b.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()}, timeout=ACK_TIMEOUT)
        assert "sdp" in watched, watched
        await viewer.accept(watched["sdp"])
        await viewer.wait_size(SPEAKER_SIZE, timeout=30)
        # a WHEP viewer on b too: 201 from b (no redirect), through the same pull
        whep = await http.post(f"{b.url}/whep/{FORUM}", data=await whep_viewer.offer(), allow_redirects=False,
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        assert whep.status == 201, await whep.text()
        await whep_viewer.accept(await whep.text())
        await whep_viewer.wait_size(SPEAKER_SIZE, timeout=30)

        pulls = (await edges(b, http))["pulls"]
        assert [(p["forum_id"], p["whep_url"], p["state"]) for p in pulls] == [(FORUM, f"{a.url}/whep/{FORUM}", "live")]
        assert (await edges(a, http))["served"] == {FORUM: 1}  # one edge link for both viewers
        assert FORUM not in cluster.cluster_view("b")["hosted"]  # b serves, it does not host
        await ops_a.connect(a.url, auth={"token": a.token(Role.OPERATOR, [FORUM], "Ops on A")},
                            transports=["websocket"], wait_timeout=10)
        joined = await ops_a.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        assert joined["viewers"]["viewers"] == 2  # b's two guests took seats; the edge link took none
        # a viewer on the origin too, to compare how soon a cut reaches each (printed, not asserted)
        direct = await http.post(f"{a.url}/whep/{FORUM}", data=await origin_viewer.offer(), allow_redirects=False,
                                 headers={"Authorization": f"Bearer {a.token(Role.VIEWER, [FORUM], 'On A')}",
                                          "Content-Type": "application/sdp"})
        assert direct.status == 201, await direct.text()
        await origin_viewer.accept(await direct.text())
        await origin_viewer.wait_size(SPEAKER_SIZE, timeout=30)

        # an operator's cut on b (run on a, the owner) reaches b's viewers through the pull
        asked = time.monotonic()
        cut = await http.post(f"{b.url}/api/forums/{FORUM}/program", json={"slate": True}, headers=operator)
        assert cut.status == 200, await cut.text()
        on_edge = (await viewer.wait_size(SLATE_SIZE, timeout=30, after=asked)).at - asked
        on_origin = (await origin_viewer.wait_size(SLATE_SIZE, timeout=30, after=asked)).at - asked
        print(f"cut to the slate asked on b -> first slate frame: origin viewer {on_origin * 1000:.0f} ms, "
              f"edge viewer {on_edge * 1000:.0f} ms")
        asked = time.monotonic()
        taken = await http.post(f"{b.url}/api/forums/{FORUM}/program", json={"source": source_id}, headers=operator)
        assert taken.status == 200, await taken.text()
        await viewer.wait_size(SPEAKER_SIZE, timeout=30, after=asked)
        await whep_viewer.wait_size(SPEAKER_SIZE, timeout=30, after=asked)

        # b's viewers leave: b ends its pull (after the linger), a its edge link
        assert (await sio_b.call("unwatch", {"viewer_id": watched["viewer_id"]}, timeout=ACK_TIMEOUT)) == {"ok": True}
        ended = await http.delete(b.url + whep.headers["Location"], headers={"Authorization": f"Bearer {token}"})
        assert ended.status == 200, await ended.text()

        async def pull_ended() -> bool:
            return (await edges(b, http))["pulls"] == [] and (await edges(a, http))["served"] == {}

        await eventually(pull_ended, timeout=30, what="b's pull and a's edge link to end")
    finally:
        for peer in (viewer, whep_viewer, origin_viewer, speaker):
            await peer.close()
        for client in (sio_b, ops_a):
            if client.connected:
                await client.disconnect()


async def test_an_operators_preview_of_one_source_on_the_other_node_is_sent_to_the_owner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Preview tiles of single sources exist only where the forum is hosted."""
    a, b = cluster["a"], cluster["b"]
    sio_a, sio_b = socketio.AsyncClient(reconnection=False), socketio.AsyncClient(reconnection=False)
    viewer = ViewerPeer()
    try:
        token = a.token(Role.OPERATOR, [FORUM], "Ops")
        await sio_a.connect(a.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_a.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        await eventually(lambda: cluster.owner(FORUM, "b") == cluster.node_id("a"), timeout=20,
                         what="a to own the forum")
        await sio_b.connect(b.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_b.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        moved = await sio_b.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer(), "source_id": "slate"},
                                 timeout=ACK_TIMEOUT)
        assert moved["error"]["code"] == "moved" and moved["error"]["url"] == a.url + "/", moved
        assert (await edges(b, http))["pulls"] == []
    finally:
        await viewer.close()
        for client in (sio_a, sio_b):
            if client.connected:
                await client.disconnect()


async def test_an_edge_link_asking_a_node_that_does_not_host_the_forum_is_sent_to_the_owner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Edges pull from the origin, never from another edge (no loops): a
    node grant at a non-owner's WHEP is redirected, and takes no seat."""
    a, b = cluster["a"], cluster["b"]
    guest = socketio.AsyncClient(reconnection=False)
    viewer = ViewerPeer()
    try:
        await guest.connect(a.url, auth={"token": a.token(Role.VIEWER, [FORUM], "Guest")},
                            transports=["websocket"], wait_timeout=10)
        assert "error" not in await guest.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        await eventually(lambda: cluster.owner(FORUM, "b") == cluster.node_id("a"), timeout=20,
                         what="a to own the forum")
        link = b.edge_link_token(FORUM)
        whep = await http.post(f"{b.url}/whep/{FORUM}", data=await viewer.offer(), allow_redirects=False,
                               headers={"Authorization": f"Bearer {link}", "Content-Type": "application/sdp"})
        assert whep.status == 307 and whep.headers["Location"] == f"{a.url}/whep/{FORUM}"
        assert (await edges(b, http))["pulls"] == []
    finally:
        await viewer.close()
        if guest.connected:
            await guest.disconnect()


async def test_a_killed_owners_forum_is_taken_by_the_node_that_needs_it_within_the_lease_and_2_s(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    guests = [socketio.AsyncClient(reconnection=False), socketio.AsyncClient(reconnection=False)]
    peer = PublisherPeer()
    try:
        for guest, node in zip(guests, (a, b)):
            await guest.connect(node.url, auth={"token": node.token(Role.VIEWER, [FORUM], "Guest")},
                                transports=["websocket"], wait_timeout=10)
        assert "error" not in await guests[0].call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        a_id, b_id = cluster.node_id("a"), cluster.node_id("b")
        await eventually(lambda: cluster.owner(FORUM, "b") == a_id, timeout=20, what="a to own the forum")
        assert "error" not in await guests[1].call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        assert cluster.owner(FORUM, "b") == a_id  # b needs it too, but a holds it

        speaker = socketio.AsyncClient(reconnection=False)
        guests.append(speaker)
        await speaker.connect(b.url, auth={"token": b.token(Role.SPEAKER, [FORUM], "Speaker")},
                              transports=["websocket"], wait_timeout=10)
        assert "error" not in await speaker.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        offer = await peer.offer()

        killed_at = time.monotonic()
        cluster.kill("a")
        # a's lease and heartbeat live on a few seconds: publishers are told to try again, never
        # sent to the dead node (a page sent there would be stranded)
        whip = await whip_post(http, f"{b.url}/whip/{FORUM}", b.token(Role.SPEAKER, [FORUM], "Speaker"), offer)
        assert whip.status == 503 and (await whip.json())["error"]["code"] == "unavailable", whip.headers
        moved = await speaker.call("publish", {"forum_id": FORUM, "sdp": offer}, timeout=ACK_TIMEOUT)
        assert moved["error"]["code"] == "unavailable", moved
        await eventually(lambda: cluster.owner(FORUM, "b") == b_id, timeout=60, what="b to take the forum over")
        took_s = time.monotonic() - killed_at
        print(f"takeover after SIGKILL: {took_s:.2f} s (lease {LEASE_TTL_MS} ms)")
        assert took_s <= LEASE_TTL_MS / 1000 + 2.0
    finally:
        await peer.close()
        for guest in guests:
            if guest.connected:
                await guest.disconnect()


async def test_a_graceful_stop_gives_the_leases_up_before_the_node_exits(cluster: Cluster) -> None:
    a = cluster["a"]
    guest = socketio.AsyncClient(reconnection=False)
    try:
        await guest.connect(a.url, auth={"token": a.token(Role.VIEWER, [FORUM], "Guest")},
                            transports=["websocket"], wait_timeout=10)
        assert "error" not in await guest.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        a_id = cluster.node_id("a")
        await eventually(lambda: cluster.owner(FORUM, "b") == a_id, timeout=20, what="a to own the forum")
    finally:
        if guest.connected:
            await guest.disconnect()
    assert a.stop() == 0  # SIGTERM: a graceful stop
    # its lease would run ~3 s more had it not been released: it is gone the moment a has exited
    assert cluster.owner(FORUM, "b") != a_id


async def test_an_hls_playlist_asked_of_the_other_node_is_redirected_to_the_owner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    peer = PublisherPeer()
    try:
        token = a.token(Role.SPEAKER, [FORUM], "Speaker")
        created = await whip_post(http, f"{a.url}/whip/{FORUM}", token, await peer.offer())
        assert created.status == 201, await created.text()  # a hosts the forum now
        viewer = b.token(Role.VIEWER, [FORUM], "Guest")
        path = f"/hls/{FORUM}/index.m3u8?token={viewer}"
        moved = await http.get(b.url + path, allow_redirects=False)
        assert moved.status == 307 and moved.headers["Location"] == a.url + path
        refused = await http.get(f"{b.url}/hls/{FORUM}/index.m3u8?token={b.token(Role.VIEWER, ['ai'])}",
                                 allow_redirects=False)
        assert refused.status == 403  # the token is checked before anyone is redirected
    finally:
        await peer.close()


@pytest.fixture
def small_cluster(redis_url: str) -> Iterator[Cluster]:
    """Nodes that are full at one WebRTC viewer (placement's threshold; CPU
    never fills them in tests: tests/cluster.py)."""
    with start_cluster(redis_url, extra_env={"FORUMCAST_NODE_MAX_VIEWERS": "1"}) as started:
        yield started


async def test_placement_answers_the_owner_while_it_has_room_then_the_node_with_the_most_and_a_full_node_sends_viewers_there(
    small_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    cluster = small_cluster
    a, b = cluster["a"], cluster["b"]
    speaker, viewer, second, third = PublisherPeer(), ViewerPeer(), ViewerPeer(), ViewerPeer()
    sio_a = socketio.AsyncClient(reconnection=False)
    token = b.token(Role.VIEWER, [FORUM], "Guest")

    async def placement(node: ServerProcess) -> dict[str, Any]:
        response = await http.get(f"{node.url}/api/forums/{FORUM}/placement",
                                  headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        assert body.pop("nodes") == sorted([a.url, b.url])  # where a page whose node died asks again
        return body

    try:
        created = await whip_post(http, f"{a.url}/whip/{FORUM}", a.token(Role.SPEAKER, [FORUM], "Speaker"),
                                  await speaker.offer())
        assert created.status == 201, await created.text()  # a owns the forum
        await speaker.accept(await created.text())
        a_id, b_id = cluster.node_id("a"), cluster.node_id("b")
        for asked in (a, b):  # any node answers the same: the owner, it has room
            assert await placement(asked) == {"node_id": a_id, "url": a.url}

        whep = await http.post(f"{a.url}/whep/{FORUM}", data=await viewer.offer(), allow_redirects=False,
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        assert whep.status == 201, await whep.text()
        await viewer.accept(await whep.text())

        async def moved_to_b() -> bool:  # a's next heartbeat reports its one viewer: a is full
            return await placement(b) == {"node_id": b_id, "url": b.url}

        await eventually(moved_to_b, timeout=30, what="placement to answer b once a is full")

        # a, full, sends the next program viewers to b (socket.io: moved; WHEP: 307), which serves them.
        # socket.io first: it leaves no viewer on b, so b still has room when the WHEP one comes (b is
        # full at one too: asked after b's heartbeat counted that viewer, a would rightly keep it)
        await sio_a.connect(a.url, auth={"token": b.token(Role.VIEWER, [FORUM], "Third")},
                            transports=["websocket"], wait_timeout=10)
        assert "error" not in await sio_a.call("join", {"forum_id": FORUM}, timeout=ACK_TIMEOUT)
        moved = await sio_a.call("watch", {"forum_id": FORUM, "sdp": await third.offer()}, timeout=ACK_TIMEOUT)
        assert moved["error"]["code"] == "moved" and moved["error"]["url"] == b.url + "/", moved
        other = b.token(Role.VIEWER, [FORUM], "Second guest")
        offer = await second.offer()
        sent = await http.post(f"{a.url}/whep/{FORUM}", data=offer, allow_redirects=False,
                               headers={"Authorization": f"Bearer {other}", "Content-Type": "application/sdp"})
        assert sent.status == 307 and sent.headers["Location"] == f"{b.url}/whep/{FORUM}", await sent.text()
        served_on_b = await http.post(sent.headers["Location"], data=offer, allow_redirects=False,
                                      headers={"Authorization": f"Bearer {other}", "Content-Type": "application/sdp"})
        assert served_on_b.status == 201, await served_on_b.text()  # b's edge pull, b not full
        await second.accept(await served_on_b.text())
        await second.wait_video(3, timeout=30)

        refused = await http.get(f"{b.url}/api/forums/{FORUM}/placement",
                                 headers={"Authorization": f"Bearer {b.token(Role.VIEWER, ['ai'])}"})
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "forbidden"
        unknown = await http.get(f"{b.url}/api/forums/no-such-forum/placement",
                                 headers={"Authorization": f"Bearer {token}"})
        assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"
    finally:
        for peer in (viewer, second, third, speaker):
            await peer.close()
        if sio_a.connected:
            await sio_a.disconnect()
