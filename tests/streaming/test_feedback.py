"""Viewer feedback: PLIs coalesced per source, NACKs answered from the
source history with the viewer's own header."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import sdp

from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests import aiortc_faults
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer, rtp_header
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.5


@pytest.fixture
async def plane():
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",), keyframe_request_interval=INTERVAL))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


async def test_plis_from_many_viewers_reach_the_publisher_once_per_interval(plane: MediaPlane) -> None:
    publisher = TestPublisher(audio=False)
    viewers = [TestViewer(audio=False) for _ in range(5)]
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        for i, viewer in enumerate(viewers):
            await connect_viewer(plane, "f1", f"v{i}", viewer)
        for viewer in viewers:
            await viewer.wait_frames(5)
        # let the joins' own keyframe requests age out of the interval
        await asyncio.sleep(INTERVAL * 1.5)
        before = publisher.keyframe_requests
        began = time.monotonic()
        for _ in range(40):  # 5 viewers x 40 rounds = 200 PLIs over ~2 s on an idle machine
            for viewer in viewers:
                viewer.send_pli()
            await asyncio.sleep(0.05)  # pacing the PLIs, not synchronising
        # the trailing, deferred request (one interval after the last PLI)
        await eventually(lambda: publisher.keyframe_requests - before >= 2, timeout=20, what="2 keyframe requests")
        await asyncio.sleep(INTERVAL + 0.2)  # an extra request could only show up after an interval
        sent = publisher.keyframe_requests - before
        # one at once, then at most one per interval of the time that really passed (+1 trailing)
        assert 2 <= sent <= (time.monotonic() - began) / INTERVAL + 2, sent
        assert plane.stats()["keyframe_requests"] >= sent
        for viewer in viewers:
            assert viewer.received.unreadable == 0
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()


async def test_a_nacked_packet_is_resent_from_history_with_the_viewers_header(plane: MediaPlane) -> None:
    publisher = TestPublisher(audio=False)
    viewer = TestViewer(audio=False)
    dropped: dict[int, tuple[int, int, int]] = {}
    resent: dict[int, tuple[int, int, int]] = {}
    seen = [0]

    def keep(data: bytes) -> bool:
        header = rtp_header(data)
        if header is None:
            return True
        pt, seq, ts, ssrc = header
        seen[0] += 1
        if seq in dropped:
            resent[seq] = (pt, ts, ssrc)
            return True
        # not among the first packets: a receiver can only NACK a gap
        # after the first packet it saw
        if seen[0] > 20 and len(dropped) < 5 and seq % 7 == 0:
            dropped[seq] = (pt, ts, ssrc)
            return False  # lose it on the way in (before SRTP), once
        return True

    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        aiortc_faults.filter_incoming(viewer.video.receiver.transport, keep)
        answer = await connect_viewer(plane, "f1", "v0", viewer)
        video = next(m for m in sdp.SessionDescription.parse(answer).media if m.kind == "video")
        viewer_ssrc = video.ssrc[0].ssrc
        negotiated = {c.payloadType for c in video.rtp.codecs}
        await viewer.wait_frames(60, timeout=15)
        assert len(dropped) >= 3, "too few packets were dropped"
        assert set(resent) == set(dropped), (dropped, resent)
        for seq, (pt, ts, ssrc) in resent.items():
            assert (pt, ts, ssrc) == dropped[seq]
            assert ssrc == viewer_ssrc and pt in negotiated
        assert plane.stats()["retransmitted"] >= len(resent)
        assert viewer.received.unreadable == 0
        numbers = viewer.received.numbers
        assert numbers == sorted(numbers)
    finally:
        await viewer.close()
        await publisher.close()
