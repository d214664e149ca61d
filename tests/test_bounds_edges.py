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
from tests.eventually import eventually
from tests.signaling_peers import PublisherPeer, ViewerPeer

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"
SDP = "application/sdp"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from tests.operator_app import free_port_block

    return load_settings(env={}, data_dir=str(tmp_path), node_id="bounds-node", ice_addresses="127.0.0.1",
                         rtmp_port=free_port_block(32), srt_port=free_port_block(32),
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
