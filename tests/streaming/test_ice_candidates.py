"""Offers are never refused for their ICE candidates, and a peer that
never completes ICE ends with a reason (issue 14 item 6). Real aiortc
peers; 127.0.0.0/8 is all loopback on Linux, so a client on 127.0.0.2
is "another address" for a node that gathers on 127.0.0.1 only."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import pytest

from rooms.models import SourceState
from streaming.ice_policy import candidate_address
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane, SourceChange
from tests.aiortc_peers import LOOPBACK, TestPublisher, TestViewer, connect_viewer
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def plane() -> AsyncIterator[MediaPlane]:
    plane = MediaPlane(MediaConfig(ice_addresses=LOOPBACK, ice_timeout=3.0))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


def candidates(sdp: str) -> list[str]:
    return [a for a in map(candidate_address, sdp.splitlines()) if a]


def to_mdns(offer: str) -> str:
    """Every candidate's address becomes an mDNS name, as Chromium offers."""
    names: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        name = names.setdefault(match.group(2), f"{uuid.uuid4()}.local")
        return f"{match.group(1)}{name}{match.group(3)}"

    return re.sub(r"(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host)", rename, offer)


async def test_an_offer_from_another_address_connects(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        offer = await publisher.offer(addresses=("127.0.0.2",))
        assert set(candidates(offer)) == {"127.0.0.2"}
        answer = await plane.publish("f1", "elsewhere", offer)
        plane.set_program("f1", "elsewhere")  # the switcher's choice: the plane follows no source by itself
        assert set(candidates(answer)) == {"127.0.0.1"}  # the setting restricts only our gathering
        await publisher.accept(answer)
        await eventually(lambda: publisher.connected.is_set(), timeout=30, what="the 127.0.0.2 publisher connected")
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
    finally:
        await viewer.close()
        await publisher.close()


async def test_an_offer_with_only_mdns_candidates_connects_peer_reflexive(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        offer = to_mdns(await publisher.offer())
        assert candidates(offer) and all(a.endswith(".local") for a in candidates(offer))
        answer = await plane.publish("f1", "browser", offer)
        plane.set_program("f1", "browser")  # the switcher's choice: the plane follows no source by itself
        await publisher.accept(answer)
        # the publisher's own checks reach the server from 127.0.0.1: peer-reflexive
        await eventually(lambda: publisher.connected.is_set(), timeout=30, what="the mDNS publisher connected")
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
    finally:
        await viewer.close()
        await publisher.close()


@pytest.mark.parametrize("line", [
    "a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active",
    "a=candidate:3 1 tcp 1518280447 127.0.0.1 50000 typ host tcptype passive",
    "a=candidate:4 1 udp 2122262783 2001:db8::1 50004 typ host generation 0 network-id 2",
    "a=candidate:5 1 udp 2122262783 media.example.org 50005 typ host",
    "a=candidate:6 1 udp 2122262783 127.0.0.3 50006 typ host generation 0 ufrag abcd network-id 1 network-cost 10",
    "a=candidate:7 1 udp 41885695 198.51.100.7 3478 typ relay raddr 203.0.113.9 rport 50003",
    "a=candidate:8 2 udp 2122262782 127.0.0.1 50008 typ host",
], ids=["tcp-active", "tcp-passive", "ipv6", "fqdn", "extension-attributes", "relay", "rtcp-component"])
async def test_other_candidate_kinds_are_tried_and_never_refused(plane: MediaPlane, line: str) -> None:
    publisher = TestPublisher()
    try:
        offer = (await publisher.offer()).replace("a=end-of-candidates", line + "\r\na=end-of-candidates")
        await publisher.accept(await plane.publish("f1", "odd", offer))
        plane.set_program("f1", "odd")  # the switcher's choice: the plane follows no source by itself
        await eventually(lambda: publisher.connected.is_set(), timeout=30, what="connected")
    finally:
        await publisher.close()


async def test_a_viewer_offer_with_only_mdns_candidates_connects(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        await publisher.accept(await plane.publish("f1", "speaker", await publisher.offer()))
        plane.set_program("f1", "speaker")  # the switcher's choice: the plane follows no source by itself
        answer = await plane.watch("f1", "guest", to_mdns(await viewer.offer()))
        await viewer.accept(answer)
        await viewer.wait_frames(10, timeout=30)
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_publisher_that_never_does_ice_ends_with_ice_failed(plane: MediaPlane) -> None:
    changes: list[SourceChange] = []
    plane.add_source_listener(changes.append)
    silent = TestPublisher()
    try:
        await plane.publish("f1", "silent", await silent.offer())  # the answer is never applied
        await eventually(lambda: any(c.source_id == "silent" and c.state == SourceState.ENDED for c in changes),
                         timeout=30, what="the silent publisher ended")
        end = plane.ended("silent")
        assert end is not None and end.code == "ice_failed" and "3 s" in end.message
        assert plane.feed("silent") is None and plane.stats()["publishers"] == 0
    finally:
        await silent.close()


async def test_a_viewer_that_never_does_ice_ends_with_ice_failed(plane: MediaPlane) -> None:
    closed: list[str] = []
    plane.add_viewer_closed_listener(closed.append)
    viewer = TestViewer()
    try:
        await plane.watch("f1", "ghost", await viewer.offer())  # the answer is never applied
        await eventually(lambda: closed == ["ghost"], timeout=30, what="the ghost viewer closed")
        end = plane.ended("ghost")
        assert end is not None and end.code == "ice_failed"
        assert plane.stats()["viewers"] == 0
    finally:
        await viewer.close()
