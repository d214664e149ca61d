"""The per-packet path without peers: real SRTP sessions, real UDP sockets
on 127.0.0.1, a source fed by hand. What each viewer receives is
unprotected with its keys and checked header by header.

Each test runs twice: with the lane's C batch (streaming/fanout_batch.py)
and with the Python per-viewer path only (`fanout_batch = false`); two
tests that fake the Python path's own backlog and socket run on it alone."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from streaming.aiortc_internals import send_path_for
from streaming import fanout_batch
from streaming.downtrack import Downtrack, DowntrackState
from streaming.program_bus import ProgramBus
from streaming.rtp_source import RtpSource, SourceFeed

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
IDR = bytes([0x65, 0x88]) + bytes(300)
P_SLICE = bytes([0x41, 0x9A]) + bytes(300)
VIEWER_PT = {"h264": 125, "opus": 109}


def srtp_sessions() -> tuple[Session, Session]:
    key = os.urandom(30)
    sessions = []
    for ssrc_type in (Policy.SSRC_ANY_OUTBOUND, Policy.SSRC_ANY_INBOUND):
        policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        sessions.append(Session(policy))
    return sessions[0], sessions[1]


class Backlog:
    """A datagram transport whose write buffer we can pretend is full (a
    viewer whose socket backs up); datagrams still go out on the real one."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self._sock = real._sock
        self.backlog = 0

    def sendto(self, data: Any, addr: Any) -> None:
        self.real.sendto(data, addr)

    def get_write_buffer_size(self) -> int:
        return self.backlog


@dataclass
class Screen:
    """One viewer's downtrack and the socket its packets arrive on."""

    downtrack: Downtrack
    sock: socket.socket
    rx: Session
    transport: Backlog

    async def receive_raw(self, count: int, timeout: float = 2.0) -> list[bytes]:
        loop = asyncio.get_running_loop()
        return [await asyncio.wait_for(loop.sock_recv(self.sock, 2048), timeout) for _ in range(count)]

    def open(self, data: bytes) -> RtpPacket:
        return RtpPacket.parse(self.rx.unprotect(data))

    async def receive(self, count: int, timeout: float = 2.0) -> list[RtpPacket]:
        return [self.open(data) for data in await self.receive_raw(count, timeout)]

    def pending(self) -> int:
        n = 0
        try:
            while True:
                self.sock.recv(2048, socket.MSG_DONTWAIT)
                n += 1
        except BlockingIOError:
            return n


MODES = ["batched", "per_packet"] if fanout_batch.available() else ["per_packet"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def screens(mode: str) -> AsyncIterator[Any]:
    made: list[tuple[socket.socket, Any]] = []

    async def make(kind: str = "video", limit: int = 10_000, batched: bool | None = None) -> Screen:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        made.append((sock, transport))
        tx, rx = srtp_sessions()
        backlog = Backlog(transport)
        batched = mode == "batched" if batched is None else batched
        dt = Downtrack(kind, ssrc=0x1000 + len(made), pt_by_codec=VIEWER_PT, write_limit=limit, batched=batched)
        dt.connect(send_path_for(tx, backlog, sock.getsockname()))
        return Screen(dt, sock, rx, backlog)

    yield make
    for sock, transport in made:
        transport.close()
        sock.close()


class Camera:
    """Pushes H.264-like frames into a source: a keyframe every `gop`."""

    def __init__(self, source: RtpSource, seq: int = 1000, ts: int = 5000) -> None:
        self.source = source
        self.seq = seq
        self.ts = ts

    def frame(self, key: bool = False, packets: int = 3) -> list[int]:
        sent = []
        for i in range(packets):
            payload = (IDR if key else P_SLICE) if i == 0 else bytes([0x41]) + bytes(200)
            self.source.push(RtpPacket(payload_type=102, marker=int(i == packets - 1),
                                       sequence_number=self.seq & 0xFFFF, timestamp=self.ts & 0xFFFFFFFF,
                                       ssrc=1, payload=payload))
            sent.append(self.seq & 0xFFFF)
            self.seq += 1
        self.ts += 3000
        return sent


def camera_on_air() -> tuple[RtpSource, ProgramBus, Camera]:
    """A video source that is the program of a new bus, and the camera feeding it."""
    source = RtpSource("video", H264)
    bus = ProgramBus()
    bus.switch_to(SourceFeed("cam", source, None))
    return source, bus, Camera(source)


def contiguous(packets: list[RtpPacket]) -> bool:
    seqs = [p.sequence_number for p in packets]
    return all(((b - a) & 0xFFFF) == 1 for a, b in zip(seqs, seqs[1:]))


async def test_each_viewer_gets_its_own_header_and_starts_at_a_keyframe(screens: Any, mode: str) -> None:
    source = RtpSource("video", H264)
    requests: list[int] = []
    source.set_keyframe_requester(lambda: requests.append(1))
    bus = ProgramBus()
    bus.switch_to(SourceFeed("cam", source, None))
    camera = Camera(source)
    a, b = await screens(), await screens()
    bus.subscribe(a.downtrack, None)
    camera.frame(key=False)  # no keyframe yet: nothing on air
    assert a.pending() == 0
    camera.frame(key=True)
    camera.frame()
    got_a = await a.receive(6)
    assert got_a[0].payload[:1] == IDR[:1] and contiguous(got_a)
    assert {p.ssrc for p in got_a} == {a.downtrack.ssrc}
    assert {p.payload_type for p in got_a} == {VIEWER_PT["h264"]}
    assert [p.marker for p in got_a] == [0, 0, 1, 0, 0, 1]
    # batched from the packet after its keyframe, not before
    assert (a.downtrack.batch is not None) == (mode == "batched")
    assert a.downtrack.packets == 6
    # b joins mid-GOP: a keyframe is asked for, b waits for it
    before = len(requests)
    bus.subscribe(b.downtrack, None)
    assert len(requests) > before or source.keyframe_request_pending
    camera.frame()
    await a.receive(3)
    assert b.pending() == 0 and b.downtrack.state == DowntrackState.WAITING
    camera.frame(key=True)
    got_a, got_b = await a.receive(3), await b.receive(3)
    assert got_b[0].payload[:1] == IDR[:1]
    assert {p.ssrc for p in got_b} == {b.downtrack.ssrc}
    # same lane timestamps, each viewer its own sequence space
    assert [p.timestamp for p in got_a] == [p.timestamp for p in got_b]
    assert contiguous(got_b)
    assert b.downtrack.packets == 3 and b.downtrack.octets == sum(len(p.payload) for p in got_b)
    source.close()


async def test_a_backed_up_viewer_drops_video_to_the_next_keyframe_without_a_gap(screens: Any) -> None:
    video = RtpSource("video", H264)
    audio = RtpSource("audio", OPUS)
    requests: list[int] = []
    video.set_keyframe_requester(lambda: requests.append(1))
    bus = ProgramBus()
    bus.switch_to(SourceFeed("cam", video, audio))
    camera = Camera(video)
    # the Python path's asyncio backlog (the batch's EAGAIN: tests/streaming/test_fanout_batch.py)
    slow, fast = await screens(limit=1000, batched=False), await screens()
    slow_audio = await screens(kind="audio", batched=False)
    slow_audio.transport.backlog = 5000  # same congested socket: audio still goes
    bus.subscribe(slow.downtrack, slow_audio.downtrack)
    bus.subscribe(fast.downtrack, None)
    camera.frame(key=True)
    before_drop = await slow.receive(3)
    await fast.receive(3)

    slow.transport.backlog = 5000
    asked = len(requests)
    camera.frame()
    for seq in range(3):
        audio.push(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=2, payload=b"opus"))
    assert slow.downtrack.state == DowntrackState.DROPPING
    assert slow.downtrack.dropped_frames == 1
    assert len(requests) > asked or video.keyframe_request_pending
    assert len(await slow_audio.receive(3)) == 3  # audio kept going
    assert len(await fast.receive(3)) == 3  # the others never noticed

    slow.transport.backlog = 0
    camera.frame()  # still waiting for a keyframe
    await fast.receive(3)
    assert slow.pending() == 0
    camera.frame(key=True)
    after = await slow.receive(3)
    await fast.receive(3)
    # the viewer sees one continuous stream: no gap to NACK
    assert contiguous(before_drop + after)
    assert after[0].payload[:1] == IDR[:1]
    video.close()
    audio.close()


async def test_a_nack_is_answered_from_history_with_the_viewers_header(screens: Any) -> None:
    source, bus, camera = camera_on_air()
    screen = await screens()
    bus.subscribe(screen.downtrack, None)
    camera.frame(key=True)
    camera.frame()
    raw = await screen.receive_raw(6)
    # the 5th datagram is "lost": only its clear header is known to the viewer
    got = [screen.open(d) for i, d in enumerate(raw) if i != 4]
    lost_seq = int.from_bytes(raw[4][2:4], "big")
    too_old = (got[0].sequence_number - 5) & 0xFFFF  # before this viewer started
    assert screen.downtrack.retransmit([lost_seq, too_old]) == 1
    again = (await screen.receive(1))[0]
    assert again.sequence_number == lost_seq
    assert again.ssrc == screen.downtrack.ssrc and again.payload_type == VIEWER_PT["h264"]
    assert again.timestamp == got[3].timestamp  # same frame as its neighbours
    assert again.payload == bytes([0x41]) + bytes(200)
    assert screen.downtrack.retransmitted == 1
    source.close()


async def test_a_program_switch_cuts_at_the_new_keyframe_and_stays_continuous(screens: Any) -> None:
    first, second = RtpSource("video", H264), RtpSource("video", H264)
    first_audio, second_audio = RtpSource("audio", OPUS), RtpSource("audio", OPUS)
    bus = ProgramBus()
    bus.switch_to(SourceFeed("one", first, first_audio))
    cam1, cam2 = Camera(first, seq=100, ts=10), Camera(second, seq=60000, ts=4_000_000_000)
    screen = await screens()
    ear = await screens(kind="audio")
    bus.subscribe(screen.downtrack, ear.downtrack)
    cam1.frame(key=True)
    first_audio.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=960, ssrc=3, payload=b"one"))
    got = await screen.receive(3)
    heard = await ear.receive(1)

    bus.switch_to(SourceFeed("two", second, second_audio))
    cam1.frame()  # the old source stays on air until the new keyframe
    cam2.frame()  # not a keyframe: not yet
    second_audio.push(RtpPacket(payload_type=111, sequence_number=9, timestamp=99, ssrc=4, payload=b"two"))
    first_audio.push(RtpPacket(payload_type=111, sequence_number=2, timestamp=1920, ssrc=3, payload=b"one"))
    got += await screen.receive(3)
    heard += await ear.receive(1)
    assert bus.on_air == "one"
    cam2.frame(key=True)
    cam1.frame()  # after the cut the old source is gone
    cam2.frame()
    second_audio.push(RtpPacket(payload_type=111, sequence_number=10, timestamp=1059, ssrc=4, payload=b"two"))
    got += await screen.receive(6)
    heard += await ear.receive(1)
    assert bus.on_air == "two"
    assert screen.pending() == 0
    assert contiguous(got) and contiguous(heard)
    assert got[6].payload[:1] == IDR[:1]
    stamps = [p.timestamp for p in got]
    assert all(((b - a) & 0xFFFFFFFF) < 0x80000000 for a, b in zip(stamps, stamps[1:]))
    assert stamps[6] != stamps[5]  # the new picture has a new time
    assert [p.payload for p in heard] == [b"one", b"one", b"two"]
    for s in (first, second, first_audio, second_audio):
        s.close()


async def test_a_failing_viewer_is_removed_and_the_others_keep_going(screens: Any) -> None:
    source, bus, camera = camera_on_air()
    broken, fine = await screens(batched=False), await screens()
    bus.subscribe(broken.downtrack, None)
    bus.subscribe(fine.downtrack, None)
    camera.frame(key=True)
    await fine.receive(3)
    await broken.receive(3)

    def explode(*args: Any) -> None:
        raise RuntimeError("socket went away in a strange way")

    broken.downtrack._sock_send = explode
    camera.frame()
    camera.frame()
    assert len(await fine.receive(6)) == 6
    assert broken.downtrack not in bus.video.downtracks
    assert fine.downtrack in bus.video.downtracks
    source.close()


async def test_sender_reports_use_the_publishers_clock_when_both_lanes_know_it(screens: Any) -> None:
    video, audio = RtpSource("video", H264), RtpSource("audio", OPUS)
    bus = ProgramBus()
    bus.switch_to(SourceFeed("cam", video, audio))
    camera = Camera(video, ts=90000)
    screen = await screens()
    bus.subscribe(screen.downtrack, None)
    camera.frame(key=True)
    audio.push(RtpPacket(payload_type=111, sequence_number=1, timestamp=48000, ssrc=2, payload=b"a"))
    await screen.receive(3)
    lane = bus.video
    arrival, lane_ts = lane.report_clock()
    assert arrival == lane.last_wall  # no reference yet: arrival time
    video.set_clock_reference(1000.0, 90000)  # the publisher: ts 90000 at t=1000 s
    assert lane.report_clock() == (arrival, lane_ts)  # audio's clock still unknown
    audio.set_clock_reference(1000.0, 48000)
    wall, ts = lane.report_clock()
    assert ts == lane_ts and wall == pytest.approx(1000.0)
    assert bus.audio.report_clock()[0] == pytest.approx(1000.0)
    # the report on the wire carries that NTP time and the viewer's counts
    assert screen.downtrack.send_report()
    report = (await screen.receive_raw(1))[0]
    from aiortc.rtp import RtcpPacket, RtcpSrPacket

    packets = RtcpPacket.parse(screen.rx.unprotect_rtcp(report))
    sr = packets[0]
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == screen.downtrack.ssrc
    assert sr.sender_info.rtp_timestamp == lane_ts
    assert sr.sender_info.packet_count == 3 and sr.sender_info.octet_count == screen.downtrack.octets
    from streaming.rtcp_reports import ntp_to_unix

    assert ntp_to_unix(sr.sender_info.ntp_timestamp) == pytest.approx(1000.0, abs=1e-6)
    video.close()
    audio.close()


async def test_the_send_socket_is_connected_to_its_viewer(screens: Any) -> None:
    """send() without an address per packet: the transport's socket is
    connected to the viewer (the kernel then also drops anyone else's)."""
    screen = await screens()
    assert screen.transport._sock.getpeername() == screen.sock.getsockname()
    assert screen.downtrack.path is not None and not screen.downtrack.path.relayed
