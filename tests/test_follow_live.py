"""Issue 14 item 2 against a real node (in-process app on loopback, real
ffmpeg WHIP publishers and a real ffmpeg venue encoder over RTMP): with
nobody's choice in the way, the newest live source goes on air from every
phase of the program policy, not only from the slate.

- a WHIP encoder on air is SIGKILLed (no DELETE) and another publishes a
  second later: the new one goes on air (the old one is still on air or in
  its grace, then covered, when the new one goes live);
- a venue feed that was live and dropped (covered by the slate): a speaker
  who publishes later goes on air by itself.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from tests.eventually import eventually
from tests.operator_app import Node, running_node
from tests.test_operator_api import venue_encoder
from tests.test_whip_whep import FfmpegWhip

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node") as running:
        yield running


async def program(http: aiohttp.ClientSession, node: Node) -> dict[str, Any]:
    """The program as the operator API reports it (with the on-air source)."""
    async with http.get(f"{node.url}/api/forums/{FORUM}/sources",
                        headers={"Authorization": f"Bearer {node.token(Role.OPERATOR)}"}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return body


def on_air_name(body: dict[str, Any]) -> str | None:
    source = body["program"]["source"]
    return None if body["program"]["slate"] or source is None else str(source["name"])


async def wait_on_air(http: aiohttp.ClientSession, node: Node, name: str, what: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await program(http, node)
        return body if on_air_name(body) == name else None
    return await eventually(check, timeout=45, what=what)


async def whip(node: Node, name: str) -> FfmpegWhip:
    publisher = FfmpegWhip(f"{node.url}/whip/{FORUM}", node.token(Role.SPEAKER, [FORUM], name))
    await publisher.start()
    await publisher.location  # ICE is up: media flows
    return publisher


async def test_an_encoder_killed_without_delete_and_another_publishing_goes_on_air(
        node: Node, http: aiohttp.ClientSession) -> None:
    first = await whip(node, "Speaker A")
    second: FfmpegWhip | None = None
    try:
        await wait_on_air(http, node, "Speaker A", "A on air by itself (nobody chose anything)")
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)  # no DELETE: the server only sees the media stop
        await first.process.wait()
        second = await whip(node, "Speaker B")
        body = await wait_on_air(http, node, "Speaker B", "B on air after A was killed")
        states = {s["name"]: s["state"] for s in body["sources"]}
        assert states["Speaker B"] == "live", states
        # A's loss (grace, cover) and later end must not take B off the air
        await eventually(lambda: _lost_or_gone(node, http, "Speaker A"), timeout=30, what="A seen lost")
        assert on_air_name(await program(http, node)) == "Speaker B"
    finally:
        for publisher in (first, second):
            if publisher is not None:
                await publisher.stop()


async def _lost_or_gone(node: Node, http: aiohttp.ClientSession, name: str) -> bool:
    body = await program(http, node)
    return all(s["state"] != "live" for s in body["sources"] if s["name"] == name)


async def test_after_a_venue_feed_dropped_a_speaker_goes_on_air(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{node.url}/api/forums/{FORUM}/ingest?reveal=1",
                        headers={"Authorization": f"Bearer {node.token(Role.OPERATOR)}"}) as response:
        ingest = await response.json()
        assert response.status == 200, ingest
    venue_name = next(s["name"] for s in (await program(http, node))["sources"] if s["id"] == ingest["source_id"])
    encoder = venue_encoder(ingest["rtmp_url"])
    await encoder.start()
    speaker: FfmpegWhip | None = None
    try:
        await wait_on_air(http, node, venue_name, "the venue feed on air by itself")
        await encoder.kill()  # the venue encoder dies without a word
        await eventually(lambda: _covered(node, http), timeout=30, what="the slate covers the lost venue feed")
        speaker = await whip(node, "Speaker C")
        await wait_on_air(http, node, "Speaker C", "the speaker on air after the venue dropped")
    finally:
        await encoder.kill()
        if speaker is not None:
            await speaker.stop()


async def _covered(node: Node, http: aiohttp.ClientSession) -> bool:
    body = await program(http, node)
    return bool(body["program"]["slate"])
