"""The bounds of docs/DESIGN.md "What we promise", held over every path
of a whole node in-process (real aiortc peers on loopback, real WHEP,
WHIP and socket.io): one viewer token holds at most `seats_per_token`
seats; a seat whose ICE never completes comes back after
`viewer_connect_timeout_s`; one speaker token publishes at most
`sources_per_token` sources, over socket.io and WHIP alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings, load_settings
from rooms.models import Role
from signaling.app import build_app
from signaling.app_keys import ROOMS, TOKENS
from signaling.edges import SERVED
from tests.eventually import eventually
from tests.signaling_peers import PublisherPeer, ViewerPeer

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"
SDP = "application/sdp"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from tests.processes import free_port_block

    return load_settings(env={}, data_dir=str(tmp_path), node_id="bounds-node", ice_addresses="127.0.0.1",
                         rtmp_port=free_port_block(32), srt_port=free_port_block(32),
                         udp_port=free_port_block(0),
                         seats_per_token=2, sources_per_token=2, viewer_connect_timeout_s=2.0)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


def _token(client: TestClient[web.Request, web.Application], role: Role, name: str) -> str:
    assert client.app is not None
    return client.app[TOKENS].issue(role, [FORUM], name)


async def _post(client: TestClient[web.Request, web.Application], path: str, token: str,
                offer: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
    async with client.post(path, data=offer, headers=headers) as response:
        body: Any = await response.text()
        if response.content_type == "application/json":
            body = await response.json()
        return response.status, body


async def _sio(client: TestClient[web.Request, web.Application], token: str) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(str(client.make_url("/")), auth={"token": token}, transports=["websocket"],
                      wait_timeout=10)
    return sio


async def test_one_viewer_token_takes_two_seats_and_unconnected_seats_come_back(
        client: TestClient[web.Request, web.Application]) -> None:
    assert client.app is not None
    rooms = client.app[ROOMS]
    guest, other = _token(client, Role.VIEWER, "Guest"), _token(client, Role.VIEWER, "Other")
    peer = ViewerPeer()
    try:
        offer = await peer.offer()  # its answers are never applied: ICE never completes
        # 35 WHEP POSTs at once with one token
        results = await asyncio.gather(*(_post(client, f"/whep/{FORUM}", guest, offer) for _ in range(35)))
        statuses = [status for status, _ in results]
        assert statuses.count(201) == 2, statuses
        refusals = [body for status, body in results if status != 201]
        assert all(status == 429 for status, _ in results if status != 201), statuses
        assert {r["error"]["code"] for r in refusals} == {"too_many_seats"}
        assert (await rooms.viewer_count(FORUM)).viewers == 2
        # a second guest is not locked out, over WHEP or socket.io
        assert (await _post(client, f"/whep/{FORUM}", other, offer))[0] == 201
        sio = await _sio(client, other)
        try:
            assert "participant" in await sio.call("join", {"forum_id": FORUM}, timeout=20)
        finally:
            await sio.disconnect()
        # the same token over socket.io gets the same refusal as over WHEP
        sio = await _sio(client, guest)
        try:
            ack = await sio.call("join", {"forum_id": FORUM}, timeout=20)
            assert ack["error"]["code"] == "too_many_seats", ack
        finally:
            await sio.disconnect()

        # nobody completes ICE: every WHEP seat comes back after the connect timeout
        async def seats_free() -> bool:
            return (await rooms.viewer_count(FORUM)).viewers == 0

        await eventually(seats_free, timeout=60, what="unconnected WHEP viewers to give their seats back")
        status, body = await _post(client, f"/whep/{FORUM}", guest, offer)
        assert status == 201, body
    finally:
        await peer.close()


async def test_one_speaker_token_publishes_at_most_its_sources_on_every_path(
        client: TestClient[web.Request, web.Application]) -> None:
    assert client.app is not None
    rooms = client.app[ROOMS]
    speaker = _token(client, Role.SPEAKER, "Speaker")
    peers = [PublisherPeer() for _ in range(5)]
    sio = await _sio(client, speaker)
    try:
        assert "participant" in await sio.call("join", {"forum_id": FORUM}, timeout=20)
        acks = []
        for peer in peers[:3]:
            acks.append(await sio.call("publish", {"forum_id": FORUM, "sdp": await peer.offer()}, timeout=30))
        assert [("source_id" in ack) for ack in acks] == [True, True, False], acks
        assert acks[2]["error"]["code"] == "too_many_sources"
        # WHIP with the same token: the same code, as HTTP 429
        status, body = await _post(client, f"/whip/{FORUM}", speaker, await peers[3].offer())
        assert (status, body["error"]["code"]) == (429, "too_many_sources"), body
        # another speaker is not affected
        other = _token(client, Role.SPEAKER, "Other speaker")
        status, body = await _post(client, f"/whip/{FORUM}", other, await peers[4].offer())
        assert status == 201, body
        live = [s for s in await rooms.sources(FORUM) if s.kind.value == "live"]
        assert len(live) == 3
        # unpublishing one makes room again
        assert await sio.call("unpublish", {"source_id": acks[0]["source_id"]}, timeout=20) == {"ok": True}
        again = PublisherPeer()
        peers.append(again)
        ack = await sio.call("publish", {"forum_id": FORUM, "sdp": await again.offer()}, timeout=30)
        assert "source_id" in ack, ack
    finally:
        await sio.disconnect()
        for peer in peers:
            await peer.close()


async def test_whep_and_whip_refuse_a_bad_session_alike(client: TestClient[web.Request, web.Application]) -> None:
    # the same fault gets the same status and code on both
    viewer = _token(client, Role.VIEWER, "Guest")
    for kind in ("whip", "whep"):
        async with aiohttp.ClientSession() as http:
            url = client.make_url(f"/{kind}/{FORUM}/nope")
            async with http.delete(url, headers={"Authorization": f"Bearer {viewer}"}) as response:
                assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"


# --- every path authorizes alike (issue 8, item 8) ----------------------------------


async def test_whip_and_whep_sessions_end_when_their_token_expires(
        client: TestClient[web.Request, web.Application]) -> None:
    # as socket.io disconnects a connection whose token expires
    assert client.app is not None
    rooms, tokens = client.app[ROOMS], client.app[TOKENS]
    viewer = tokens.issue(Role.VIEWER, [FORUM], "Short guest", ttl_seconds=4)
    speaker = tokens.issue(Role.SPEAKER, [FORUM], "Short speaker", ttl_seconds=4)
    watcher, publisher = ViewerPeer(), PublisherPeer()
    try:
        status, answer = await _post(client, f"/whep/{FORUM}", viewer, await watcher.offer())
        assert status == 201, answer
        await watcher.accept(answer)  # a real, connected player
        status, answer = await _post(client, f"/whip/{FORUM}", speaker, await publisher.offer())
        assert status == 201, answer
        await publisher.accept(answer)
        assert (await rooms.viewer_count(FORUM)).viewers == 1

        async def all_ended() -> bool:
            live = [s for s in await rooms.sources(FORUM) if s.kind.value == "live"]
            return (await rooms.viewer_count(FORUM)).total == 0 and not live

        await eventually(all_ended, timeout=60, what="the expired token's WHEP and WHIP sessions to end")
    finally:
        await watcher.close()
        await publisher.close()


async def test_an_edge_link_takes_no_seat_and_outlives_its_token(
        client: TestClient[web.Request, web.Application]) -> None:
    """A node's pull (an edge-link grant, minted per request) is not a
    guest: no seat, counted as an edge link, and not ended when the token
    it was opened with expires (the guest's WHEP session beside it is)."""
    assert client.app is not None
    rooms, tokens, served = client.app[ROOMS], client.app[TOKENS], client.app[SERVED]
    link = tokens.issue_edge_link(FORUM, "edge-node", ttl_seconds=4)
    guest = tokens.issue(Role.VIEWER, [FORUM], "Short guest", ttl_seconds=4)
    edge, watcher = ViewerPeer(), ViewerPeer()
    try:
        status, answer = await _post(client, f"/whep/{FORUM}", link, await edge.offer())
        assert status == 201, answer
        await edge.accept(answer)
        assert (await rooms.viewer_count(FORUM)).viewers == 0 and served.counts() == {FORUM: 1}
        location = await _location(client, f"/whep/{FORUM}", guest, await watcher.offer())
        assert (await rooms.viewer_count(FORUM)).viewers == 1  # the guest took the seat

        async def guest_ended() -> bool:
            return (await rooms.viewer_count(FORUM)).total == 0

        await eventually(guest_ended, timeout=60, what="the guest's session to end at its token's expiry")
        async with client.get(location) as response:
            assert response.status in (404, 410)
        assert served.counts() == {FORUM: 1}  # the edge link outlived the same expiry
        await edge.wait_video(1)
    finally:
        await edge.close()
        await watcher.close()


async def _location(client: TestClient[web.Request, web.Application], path: str, token: str,
                    offer: str) -> str:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
    async with client.post(path, data=offer, headers=headers) as response:
        assert response.status == 201, await response.text()
        return response.headers["Location"]


async def test_who_may_end_a_session_is_the_same_on_whep_whip_and_socketio(
        client: TestClient[web.Request, web.Application]) -> None:
    guest, other = _token(client, Role.VIEWER, "Guest"), _token(client, Role.VIEWER, "Other guest")
    speaker, other_speaker = _token(client, Role.SPEAKER, "Speaker"), _token(client, Role.SPEAKER, "Other")
    operator = _token(client, Role.OPERATOR, "Operator")
    viewer_peer, publishers = ViewerPeer(), [PublisherPeer() for _ in range(3)]

    async def delete(location: str, token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with client.delete(location, headers=headers) as response:
            body = await response.json()
            return response.status, body["error"]["code"] if "error" in body else "ok"

    try:
        offer = await viewer_peer.offer()
        # WHEP: another guest may not end my session; I may, an operator may, the URL alone may
        mine = await _location(client, f"/whep/{FORUM}", guest, offer)
        assert await delete(mine, other) == (403, "forbidden")
        assert await delete(mine, guest) == (200, "ok")
        for ender in (operator, None):
            location = await _location(client, f"/whep/{FORUM}", guest, offer)
            assert await delete(location, ender) == (200, "ok")
        # WHIP: the same rule
        whip = await _location(client, f"/whip/{FORUM}", speaker, await publishers[0].offer())
        assert await delete(whip, other_speaker) == (403, "forbidden")
        assert await delete(whip, operator) == (200, "ok")
        # socket.io unpublish of someone else's source: forbidden for a speaker, done for an operator
        whip = await _location(client, f"/whip/{FORUM}", speaker, await publishers[1].offer())
        assert client.app is not None
        source_id = next(s.id for s in await client.app[ROOMS].sources(FORUM) if s.kind.value == "live")
        for token, expected in ((other_speaker, "forbidden"), (operator, None)):
            sio = await _sio(client, token)
            try:
                await sio.call("join", {"forum_id": FORUM}, timeout=20)
                ack = await sio.call("unpublish", {"source_id": source_id}, timeout=20)
                assert (ack.get("error", {}).get("code") if "error" in ack else None) == expected, ack
            finally:
                await sio.disconnect()
        assert await delete(whip, speaker) == (410, "ended_by_operator")  # the operator ended the WHIP session too, and it says so
    finally:
        await viewer_peer.close()
        for peer in publishers:
            await peer.close()


async def test_a_bad_authorization_header_gets_the_same_answer_on_rest_whip_and_whep(
        client: TestClient[web.Request, web.Application]) -> None:
    for method, path in (("GET", f"/api/forums/{FORUM}/sources"), ("POST", f"/whip/{FORUM}"),
                         ("POST", f"/whep/{FORUM}")):
        async with client.request(method, path, headers={"Authorization": "Basic dXNlcjpwYXNz",
                                                         "Content-Type": SDP}, data="v=0") as response:
            body = await response.json()
            assert (response.status, body["error"]["code"]) == (401, "token_invalid"), (path, body)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="forumcast"'


async def test_operator_playouts_are_bounded_per_token_like_publishes(
        client: TestClient[web.Request, web.Application], tmp_path: Path) -> None:
    from tests.operator_app import make_video

    operator = _token(client, Role.OPERATOR, "Operator")
    headers = {"Authorization": f"Bearer {operator}"}
    form = aiohttp.FormData()
    form.add_field("file", make_video(tmp_path / "talk.mp4", 2).read_bytes(), filename="talk.mp4",
                   content_type="video/mp4")
    async with client.post(f"/api/forums/{FORUM}/media", data=form, headers=headers) as response:
        accepted = await response.json()
        assert response.status == 202, accepted  # a conversion job; follow it to the library item

    async def converted() -> dict[str, Any] | None:
        async with client.get(f"/api/forums/{FORUM}/jobs/{accepted['job']['id']}", headers=headers) as response:
            job = await response.json()
        assert job["state"] != "failed", job
        return job if job["state"] == "done" else None

    job = await eventually(converted, timeout=60, what="the upload's conversion")
    item = {"id": job["media"]}
    answers = []
    for _ in range(3):
        async with client.post(f"/api/forums/{FORUM}/playouts", json={"media": item["id"]},
                               headers=headers) as response:
            answers.append((response.status, await response.json()))
    assert [status for status, _ in answers] == [201, 201, 429], answers
    assert answers[2][1]["error"]["code"] == "too_many_sources"
    other = {"Authorization": f"Bearer {_token(client, Role.OPERATOR, 'Other operator')}"}
    async with client.post(f"/api/forums/{FORUM}/playouts", json={"media": item["id"]}, headers=other) as response:
        assert response.status == 201, await response.text()
