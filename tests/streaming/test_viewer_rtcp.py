"""The viewers' lean receive path: SRTCP read straight off the socket.

Unit tests of the parser with stand-in downtracks, then real aiortc peers:
NACKs answered and PLIs coalesced through the new path, forged or replayed
SRTCP dropped and counted, ICE consent still answered both ways.
"""

from __future__ import annotations

import asyncio
import time
import struct
from typing import Any

import aioice.ice
import pytest

from bench.aiortc_reach import wire_path
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from streaming.viewer import WebRtcViewer
from streaming.viewer_rtcp import ViewerRtcp
from tests import aiortc_faults
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer, rtp_header
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(60)

VIDEO, AUDIO = 0x1111, 0x2222


class _Lane:
    def __init__(self) -> None:
        self.requests = 0

    def request_keyframe(self) -> None:
        self.requests += 1


class _Downtrack:
    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.lane: _Lane | None = _Lane()
        self.nacked: list[list[int]] = []

    def retransmit(self, seqs: list[int]) -> int:
        self.nacked.append(seqs)
        return len(seqs)


def _rtcp(pt: int, fmt: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | fmt, pt, (4 + len(body)) // 4 - 1) + body


def nack(media: int, *pairs: tuple[int, int]) -> bytes:
    return _rtcp(205, 1, struct.pack("!II", 1, media) + b"".join(struct.pack("!HH", *p) for p in pairs))


def pli(media: int) -> bytes:
    return _rtcp(206, 1, struct.pack("!II", 1, media))


def fir(media: int) -> bytes:
    return _rtcp(206, 4, struct.pack("!IIIB3x", 1, 0, media, 7))


def rr(*blocks: tuple[int, int, int, int]) -> bytes:
    body = struct.pack("!I", 1)
    for ssrc, fraction, lost, jitter in blocks:
        body += struct.pack("!IB", ssrc, fraction) + lost.to_bytes(3, "big", signed=True)
        body += struct.pack("!IIII", 0, jitter, 0, 0)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, (4 + len(body)) // 4 - 1) + body


def feedback(unprotect: Any = None) -> tuple[ViewerRtcp, _Downtrack, _Downtrack]:
    video, audio = _Downtrack(VIDEO), _Downtrack(AUDIO)
    # the "SRTCP" here is clear: unprotect only checks a fake auth byte
    rtcp = ViewerRtcp(unprotect or (lambda d: d[:-1] if d[-1] == 0xAA else None), [video, audio])  # type: ignore[list-item]
    return rtcp, video, audio


def test_a_compound_packet_is_read_and_dispatched_by_media_ssrc() -> None:
    rtcp, video, audio = feedback()
    compound = rr((VIDEO, 12, 34, 56), (0x9999, 0, 0, 0)) + nack(VIDEO, (100, 0b101), (0xFFFF, 0)) + pli(VIDEO)
    rtcp.datagram(compound + b"\xaa")
    assert video.nacked == [[100, 101, 103, 0xFFFF]]  # one NACK, two FCI entries
    assert audio.nacked == []
    assert video.lane is not None and video.lane.requests == 1
    assert rtcp.loss == {VIDEO: (12, 34, 56)}
    assert (rtcp.received, rtcp.nacks, rtcp.keyframe_requests, rtcp.reports) == (1, 1, 1, 1)


def test_fir_names_its_media_in_the_fci_and_unknown_ssrcs_are_ignored() -> None:
    rtcp, video, audio = feedback()
    rtcp.datagram(fir(VIDEO) + pli(0x9999) + nack(0x9999, (1, 0)) + b"\xaa")
    assert video.lane is not None and video.lane.requests == 1
    assert video.nacked == [] and audio.nacked == []


def test_forged_stray_and_truncated_datagrams_are_dropped_and_counted() -> None:
    rtcp, video, _ = feedback()
    rtcp.datagram(pli(VIDEO) + b"\x00")  # fails "authentication"
    rtcp.datagram(struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload")  # RTP from a recvonly viewer
    rtcp.datagram(b"\x80\xc9")  # too short to be anything
    rtcp.datagram(pli(VIDEO)[:-4] + b"\xaa")  # length field says more than there is
    assert video.lane is not None and video.lane.requests == 0
    assert (rtcp.rejected, rtcp.ignored, rtcp.malformed, rtcp.received) == (1, 2, 1, 1)


def test_a_viewer_without_a_lane_asks_for_nothing() -> None:
    rtcp, video, _ = feedback()
    video.lane = None
    rtcp.datagram(pli(VIDEO) + b"\xaa")
    assert rtcp.keyframe_requests == 0


# --- real peers ----------------------------------------------------------


INTERVAL = 0.5


@pytest.fixture
async def plane():
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",), keyframe_request_interval=INTERVAL))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


def server_viewer(plane: MediaPlane, viewer_id: str) -> WebRtcViewer:
    return plane._viewers[viewer_id]  # the plane has no public lookup of one viewer


async def test_plis_take_the_lean_path_and_stay_coalesced(plane: MediaPlane) -> None:
    publisher = TestPublisher(audio=False)
    viewer = TestViewer(audio=False)
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        await connect_viewer(plane, "f1", "v0", viewer)
        await viewer.wait_frames(5)
        rtcp = server_viewer(plane, "v0").feedback
        assert rtcp is not None
        await asyncio.sleep(INTERVAL * 1.5)  # the join's own request ages out of the interval
        before = publisher.keyframe_requests
        began = time.monotonic()
        for _ in range(20):  # 20 PLIs, ~1 s on an idle machine
            viewer.send_pli()
            await asyncio.sleep(0.05)  # pacing the PLIs, not synchronising
        # read by ViewerRtcp, not aiortc
        await eventually(lambda: rtcp.keyframe_requests >= 15, timeout=20, what="the PLIs read by ViewerRtcp")
        sent = publisher.keyframe_requests - before
        # one at once, then at most one per interval of the time that really passed (+1 trailing)
        assert 1 <= sent <= (time.monotonic() - began) / INTERVAL + 2, sent
        assert rtcp.rejected == 0
    finally:
        await viewer.close()
        await publisher.close()


async def test_forged_and_replayed_srtcp_is_dropped_and_counted(plane: MediaPlane) -> None:
    publisher = TestPublisher(audio=False)
    viewer = TestViewer(audio=False)
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        answer = await connect_viewer(plane, "f1", "v0", viewer)
        await viewer.wait_frames(3)
        rtcp = server_viewer(plane, "v0").feedback
        assert rtcp is not None
        wire = wire_path(viewer.pc)
        session = wire.tx_srtp()
        assert session is not None
        media = next(int(line.split()[0][7:]) for line in answer.splitlines() if line.startswith("a=ssrc:"))
        await asyncio.sleep(INTERVAL * 1.5)
        good = session.protect_rtcp(pli(media))
        forged = good[:-1] + bytes([good[-1] ^ 1])
        received, rejected, asked = rtcp.received, rtcp.rejected, rtcp.keyframe_requests
        wire.send(forged)
        await eventually(lambda: rtcp.rejected == rejected + 1, timeout=20, what="the forged packet to be rejected")
        assert rtcp.keyframe_requests == asked
        wire.send(good)
        await eventually(lambda: rtcp.keyframe_requests == asked + 1, timeout=20, what="the good packet to be read")
        wire.send(good)  # a replay: libsrtp's replay window refuses it
        await eventually(lambda: rtcp.rejected == rejected + 2, timeout=20, what="the replay to be rejected")
        assert rtcp.keyframe_requests == asked + 1 and rtcp.received >= received + 1
        assert plane.stats()["viewers"] == 1
    finally:
        await viewer.close()
        await publisher.close()


async def test_consent_is_still_answered_both_ways(plane: MediaPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # consent every ~0.3 s, lost after 2 misses (each waits 0.5 s): without
    # answers both ways the peers would close within ~2 s
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.3)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 2)
    publisher = TestPublisher(audio=False)
    viewer = TestViewer(audio=False)
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        await connect_viewer(plane, "f1", "v0", viewer)
        await viewer.wait_frames(3)
        assert server_viewer(plane, "v0").feedback is not None
        frames = len(viewer.received.numbers)
        await asyncio.sleep(5)  # ~15 consent rounds each way
        assert not viewer.failed.is_set()
        assert viewer.pc.connectionState == "connected"
        assert plane.stats()["viewers"] == 1
        assert server_viewer(plane, "v0").state == "watching"
        assert len(viewer.received.numbers) > frames + 60
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_nack_read_on_the_lean_path_is_answered_from_history(plane: MediaPlane) -> None:
    publisher = TestPublisher(audio=False)
    viewer = TestViewer(audio=False)
    seen: list[int] = []

    def keep(data: bytes) -> bool:
        header = rtp_header(data)
        if header is not None:
            seen.append(header[1])
        return True

    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        aiortc_faults.filter_incoming(viewer.video.receiver.transport, keep)  # type: ignore[union-attr]
        answer = await connect_viewer(plane, "f1", "v0", viewer)
        await viewer.wait_frames(10)
        rtcp = server_viewer(plane, "v0").feedback
        assert rtcp is not None
        wire = wire_path(viewer.pc)
        session = wire.tx_srtp()
        assert session is not None
        media = next(int(line.split()[0][7:]) for line in answer.splitlines() if line.startswith("a=ssrc:"))
        wanted = seen[-5]  # small frames: one packet each
        before = plane.stats()["retransmitted"]
        wire.send(session.protect_rtcp(nack(media, (wanted, 0b1))))
        await eventually(lambda: seen.count(wanted) == 2, timeout=20, what="the NACKed packet to arrive again")
        assert rtcp.nacks == 1
        assert plane.stats()["retransmitted"] == before + 2
        assert seen.count((wanted + 1) & 0xFFFF) == 2
    finally:
        await viewer.close()
        await publisher.close()
