"""ICE-TCP passive candidates (streaming/ice_tcp.py): RFC 4571 framing on
real TCP connections to a real listener on 127.0.0.1, the first-frame
demux by STUN USERNAME, the bounds; and the candidate in a media plane's
answers (with udp_port only)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

import pytest
from aiortc import sdp

from streaming import ice_tcp
from streaming.ice_tcp import IceTcpListener, TcpEndpoint
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests.aiortc_peers import TestPublisher, TestViewer, connect_viewer
from tests.eventually import eventually
from tests.processes import free_port_block

pytestmark = pytest.mark.timeout(60)


def stun_request(ufrag: str) -> bytes:
    """A Binding request with USERNAME "ufrag:peer" (the demux reads only the name)."""
    name = f"{ufrag}:peer".encode()
    attr = struct.pack("!HH", 0x0006, len(name)) + name + bytes(-len(name) % 4)
    return struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12) + attr


def framed(*payloads: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(p)) + p for p in payloads)


class Recorder:
    """The agent side of a TcpEndpoint (aioice's StunProtocol in the node)."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[Any, ...]]] = []
        self.lost = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.datagrams.append((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.fixture
async def listener():
    listener = await IceTcpListener.open("127.0.0.1", 0)
    try:
        yield listener
    finally:
        listener.close()


async def connect(listener: IceTcpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.sockname[1])


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 20) == b""


def srtp(n: int, size: int = 100) -> bytes:
    return bytes([0x80, 96]) + struct.pack("!H", n) + bytes(size - 4)


async def test_frames_split_across_reads_or_packed_in_one_reach_the_agent_whole_and_in_order(
        listener: IceTcpListener) -> None:
    agent = Recorder()
    listener.endpoint("abcd", agent)
    reader, writer = await connect(listener)
    try:
        first = stun_request("abcd")
        stream = framed(first, srtp(1), srtp(2, 1500), b"\x16" + bytes(60))
        for i in range(0, 40):  # byte by byte, through the first frame and into the next
            writer.write(stream[i:i + 1])
            await writer.drain()
        writer.write(stream[40:])  # the rest, several frames in one write
        await writer.drain()
        await eventually(lambda: len(agent.datagrams) == 4, what="4 frames delivered")
        local = writer.get_extra_info("sockname")
        assert [d for d, _ in agent.datagrams] == [first, srtp(1), srtp(2, 1500), b"\x16" + bytes(60)]
        assert {a for _, a in agent.datagrams} == {(local[0], local[1])}
        assert dict(listener.dropped) == {}
    finally:
        writer.close()


async def test_the_agent_sends_framed_on_the_connection_of_that_address(listener: IceTcpListener) -> None:
    agent = Recorder()
    endpoint = listener.endpoint("abcd", agent)
    reader, writer = await connect(listener)
    try:
        writer.write(framed(stun_request("abcd")))
        await eventually(lambda: agent.datagrams, what="the check delivered")
        remote = agent.datagrams[0][1]
        endpoint.sendto(b"\x01\x01" + bytes(30), remote)  # a STUN response
        endpoint.sender_to(remote)(memoryview(srtp(7)))  # the fan-out's per-packet call
        endpoint.sendto(b"nowhere", ("127.0.0.1", 9))  # no connection from there: dropped, counted
        data = await asyncio.wait_for(reader.readexactly(2 + 32 + 2 + 100), 20)
        assert data == framed(b"\x01\x01" + bytes(30), srtp(7))
        assert listener.dropped["no_connection"] == 1
    finally:
        writer.close()


async def test_an_oversize_frame_closes_its_connection_only(listener: IceTcpListener) -> None:
    agent = Recorder()
    listener.endpoint("abcd", agent)
    good_reader, good = await connect(listener)
    bad_reader, bad = await connect(listener)
    try:
        good.write(framed(stun_request("abcd")))
        bad.write(framed(stun_request("abcd")))
        await eventually(lambda: len(agent.datagrams) == 2, what="both identified")
        bad.write(struct.pack("!H", ice_tcp.MAX_FRAME + 1) + bytes(ice_tcp.MAX_FRAME + 1))
        assert await closed_by_server(bad_reader)
        assert listener.dropped["oversize_frame"] == 1
        good.write(framed(srtp(1)))
        await eventually(lambda: len(agent.datagrams) == 3, what="the other connection still delivers")
        assert len(listener.connections) == 1
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize("first, reason", [
    # fixed garbage (not os.urandom): pytest-xdist workers must collect the same ids
    (bytes((i * 73 + 41) % 255 + 1 for i in range(50)), "first_frame_not_stun"),  # garbage
    (srtp(1), "first_frame_not_stun"),  # media before any check
    (stun_request("zzzz"), "unknown_ufrag"),  # names no agent of ours
    (b"", "first_frame_not_stun"),  # an empty frame
], ids=["garbage", "media_first", "unknown_ufrag", "empty"])
async def test_a_first_frame_that_names_no_agent_closes_the_connection_and_is_counted(
        listener: IceTcpListener, first: bytes, reason: str) -> None:
    agent = Recorder()
    listener.endpoint("abcd", agent)
    reader, writer = await connect(listener)
    try:
        writer.write(framed(first, stun_request("abcd")))  # a valid check after it comes too late
        assert await closed_by_server(reader)
        assert listener.dropped[reason] == 1
        assert agent.datagrams == []
        await eventually(lambda: not listener.connections and listener.pending == 0, what="entries freed")
    finally:
        writer.close()


async def test_a_partial_frame_holds_up_no_other_connection(listener: IceTcpListener) -> None:
    agent = Recorder()
    listener.endpoint("abcd", agent)
    stalled_reader, stalled = await connect(listener)
    reader, writer = await connect(listener)
    try:
        stalled.write(framed(stun_request("abcd"))[:11])  # half a check, then nothing
        await stalled.drain()
        writer.write(framed(stun_request("abcd"), srtp(1), srtp(2)))
        await eventually(lambda: len(agent.datagrams) == 3, what="the other connection's frames")
    finally:
        stalled.close()
        writer.close()


async def test_a_connection_silent_past_the_first_frame_timeout_is_closed(
        listener: IceTcpListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ice_tcp, "FIRST_FRAME_TIMEOUT", 0.3)
    reader, writer = await connect(listener)
    try:
        assert await closed_by_server(reader)
        assert listener.dropped["first_frame_timeout"] == 1
        assert listener.pending == 0 and not listener.connections
    finally:
        writer.close()


async def test_connections_are_bounded_per_agent_and_per_address(
        listener: IceTcpListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ice_tcp, "MAX_PER_AGENT", 2)
    monkeypatch.setattr(ice_tcp, "MAX_PENDING", 3)
    agent = Recorder()
    listener.endpoint("abcd", agent)
    opened = [await connect(listener) for _ in range(3)]
    try:
        for _, writer in opened:
            writer.write(framed(stun_request("abcd")))
        assert await closed_by_server(opened[2][0])  # the third for one agent
        assert listener.dropped["too_many_for_agent"] == 1
        pending = [await connect(listener) for _ in range(4)]  # nothing sent: pending
        opened += pending
        assert await closed_by_server(pending[3][0])
        assert listener.dropped["too_many_connections"] == 1
    finally:
        for _, writer in opened:
            writer.close()


async def test_an_agent_that_closes_closes_its_connections_and_frees_its_ufrag(
        listener: IceTcpListener) -> None:
    agent = Recorder()
    endpoint = listener.endpoint("abcd", agent)
    with pytest.raises(OSError, match="abcd"):
        listener.endpoint("abcd", Recorder())
    reader, writer = await connect(listener)
    try:
        writer.write(framed(stun_request("abcd")))
        await eventually(lambda: endpoint.connections, what="identified")
        endpoint.close()
        assert await closed_by_server(reader)
        await asyncio.wait_for(agent.lost.wait(), 20)
        assert listener.by_ufrag == {} and endpoint.connections == {} and not listener.connections
        assert isinstance(listener.endpoint("abcd", Recorder()), TcpEndpoint)  # the ufrag is free again
    finally:
        writer.close()


def test_the_passive_candidate_ranks_below_every_udp_candidate() -> None:
    """RFC 6544 s4.2: local preference 2^13 * 4 (passive host) + other;
    type preference 90, below UDP host 126 and server-reflexive 100."""
    priority = ice_tcp.candidate_priority(1)
    assert priority >> 24 == 90 and (priority >> 8) & 0xFFFF == (4 << 13) + 8191 and priority & 0xFF == 255
    assert priority < (100 << 24)


# --- the candidate in a media plane's answers -------------------------------------------


def tcp_candidates(answer: str) -> list[Any]:
    return [c for m in sdp.SessionDescription.parse(answer).media for c in m.ice_candidates
            if c.protocol.lower() == "tcp"]


async def test_with_udp_port_answers_carry_a_passive_tcp_candidate_on_that_port_number() -> None:
    port = free_port_block(0)
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",), udp_port=port))
    await plane.start()
    publisher, viewer = TestPublisher(audio=False), TestViewer(audio=False)
    try:
        answer = await plane.publish("main", "cam", await publisher.offer())
        [candidate] = tcp_candidates(answer)
        # UDP first: a client that reads only the first candidate (ffmpeg's WHIP muxer) stays on UDP
        assert next(line for line in answer.splitlines() if line.startswith("a=candidate:")).split()[2] == "udp"
        plane.set_program("main", "cam")
        await publisher.accept(answer)
        assert (candidate.ip, candidate.port, candidate.type, candidate.tcpType) == ("127.0.0.1", port, "host",
                                                                                     "passive")
        answer = await connect_viewer(plane, "main", "guest", viewer)
        assert len(tcp_candidates(answer)) == 1
        assert plane.stats()["ice_tcp_ufrags"] == 2
        await viewer.wait_frames(5, timeout=30)  # aiortc peers stay on UDP
    finally:
        await viewer.close()
        await publisher.close()
        await plane.stop()
    with socket.create_server(("127.0.0.1", port)):  # the listener is gone with the plane
        pass


async def test_without_udp_port_nothing_listens_for_tcp_and_answers_have_no_tcp_candidate() -> None:
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    publisher = TestPublisher(audio=False)
    try:
        answer = await plane.publish("main", "cam", await publisher.offer())
        assert tcp_candidates(answer) == [] and plane.shared_port is None
        assert not any(key.startswith("ice_tcp") for key in plane.stats())
    finally:
        await publisher.close()
        await plane.stop()


async def test_a_taken_tcp_port_number_fails_the_start_naming_it() -> None:
    port = free_port_block(0)
    with socket.create_server(("127.0.0.1", port)):
        plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",), udp_port=port))
        try:
            with pytest.raises(OSError, match=f"ICE-TCP port {port} on 127.0.0.1"):
                await plane.start()
        finally:
            await plane.stop()


async def test_the_agent_hears_connection_lost_when_its_last_connection_closes(listener: IceTcpListener) -> None:
    agent = Recorder()
    endpoint = listener.endpoint("abcd", agent)
    first, second = await connect(listener), await connect(listener)
    try:
        for _, writer in (first, second):
            writer.write(framed(stun_request("abcd")))
        await eventually(lambda: len(endpoint.connections) == 2, what="both identified")
        first[1].close()
        await eventually(lambda: len(endpoint.connections) == 1, what="the first freed")
        assert not agent.lost.is_set()  # another connection remains
        second[1].close()
        await asyncio.wait_for(agent.lost.wait(), 20)
        assert listener.by_ufrag == {"abcd": endpoint}  # the agent decides when it closes
    finally:
        first[1].close()
        second[1].close()


def test_the_ice_tcp_setting_is_on_by_default_and_read_as_a_boolean() -> None:
    from config.settings import load_settings

    assert load_settings(env={}).ice_tcp is True
    assert load_settings(env={"FORUMCAST_ICE_TCP": "false"}).ice_tcp is False
    with pytest.raises(ValueError, match="(?i)ice_tcp"):
        load_settings(env={"FORUMCAST_ICE_TCP": "sometimes"})


async def test_a_tcp_pairs_send_path_writes_srtp_framed_on_the_connection(listener: IceTcpListener) -> None:
    """The fan-out's SendPath over a TcpEndpoint: `framed`, not relayed
    (the viewer keeps it), and its sock_send is the framed write."""
    from streaming.aiortc_internals import send_path_for
    from streaming.downtrack import Downtrack
    from streaming.rtcp_reports import sender_report
    from tests.streaming.test_downtrack import srtp_sessions

    agent = Recorder()
    endpoint = listener.endpoint("abcd", agent)
    reader, writer = await connect(listener)
    try:
        writer.write(framed(stun_request("abcd")))
        await eventually(lambda: agent.datagrams, what="identified")
        tx, rx = srtp_sessions()
        path = send_path_for(tx, endpoint, agent.datagrams[0][1])
        assert path.framed and not path.relayed and path.sock_send is not None
        downtrack = Downtrack("video", ssrc=0x1234, pt_by_codec={"h264": 102}, write_limit=64 * 1024)
        downtrack.connect(path)
        report = sender_report(0x1234, 1.0, 90000, 10, 1000)
        assert downtrack.send_rtcp(report)
        (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 20))
        assert rx.unprotect_rtcp(await reader.readexactly(size)) == report
    finally:
        writer.close()


def test_offers_tcp_candidates_are_left_out_passive_only() -> None:
    from streaming.ice_policy import usable_offer

    offer = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
             "a=candidate:1 1 udp 2122194687 10.0.0.2 58751 typ host generation 0\r\n"
             "a=candidate:2 1 tcp 1518214911 10.0.0.2 9 typ host tcptype active generation 0\r\n"
             "a=candidate:3 1 TCP 1518214910 10.0.0.2 40000 typ host tcptype passive\r\n")
    kept = [line for line in usable_offer(offer).splitlines() if line.startswith("a=candidate")]
    assert kept == ["a=candidate:1 1 udp 2122194687 10.0.0.2 58751 typ host generation 0"]
