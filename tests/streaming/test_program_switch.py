"""The program switches to a newly live source at its keyframe; viewers'
streams stay continuous."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiortc import sdp

from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests import aiortc_faults
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer, rtp_header

pytestmark = pytest.mark.timeout(60)

SECOND = 10000  # the second publisher draws numbers from here


class StreamCheck:
    """Watches one SSRC's clear RTP headers as they arrive."""

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.last: tuple[int, int] | None = None  # (seq, ts)
        self.gaps = 0
        self.backwards = 0
        self.packets = 0

    def see(self, seq: int, ts: int) -> None:
        self.packets += 1
        if self.last is not None:
            last_seq, last_ts = self.last
            step = (seq - last_seq) & 0xFFFF
            if step == 0 or step >= 0x8000:
                return  # a retransmission or duplicate
            if step != 1:
                self.gaps += 1
            if ((ts - last_ts) & 0xFFFFFFFF) >= 0x80000000:
                self.backwards += 1
        self.last = (seq, ts)


async def test_second_live_source_takes_the_program_at_a_keyframe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    first = TestPublisher()
    second = TestPublisher(offset=SECOND)
    viewers = [TestViewer() for _ in range(2)]
    checks: dict[int, StreamCheck] = {}

    def keep(data: bytes) -> bool:
        header = rtp_header(data)
        if header is not None:
            _, seq, ts, ssrc = header
            checks.setdefault(ssrc, StreamCheck()).see(seq, ts)
        return True

    try:
        await connect_publisher(plane, "f1", "first", first)
        aiortc_faults.filter_incoming(viewers[0].video.receiver.transport, keep)
        answers = []
        for i, viewer in enumerate(viewers):
            answers.append(await connect_viewer(plane, "f1", f"v{i}", viewer))
        for viewer in viewers:
            await viewer.wait_frames(20)
        assert plane.program("f1") == "first"

        await connect_publisher(plane, "f1", "second", second)
        for viewer in viewers:
            async def saw_second(v: TestViewer = viewer) -> None:
                while not any(n >= SECOND for n in v.received.numbers):
                    await v.wait_frames(len(v.received.numbers) + 1)
            await asyncio.wait_for(saw_second(), 15)
            await viewer.wait_frames(len(viewer.received.numbers) + 20)
        assert plane.program("f1") == "second"

        for viewer in viewers:
            numbers = viewer.received.numbers
            cut = next(i for i, n in enumerate(numbers) if n >= SECOND)
            before, after = numbers[:cut], numbers[cut:]
            assert before and after
            assert all(n < SECOND for n in before) and all(n >= SECOND for n in after)
            assert before == sorted(before) and after == sorted(after)
            assert viewer.received.unreadable == 0
            assert viewer.received.audio_frames > 0
        failed = [r for r in caplog.records if "failed to decode" in r.getMessage()]
        assert not failed, failed[:3]

        # one SSRC per kind for the viewer, across the cut: continuous
        media = sdp.SessionDescription.parse(answers[0]).media
        for m in media:
            check = checks[m.ssrc[0].ssrc]
            assert check.packets > 50
            assert check.gaps == 0, f"{m.kind}: {check.gaps} sequence gaps"
            assert check.backwards == 0, f"{m.kind}: timestamps went backwards"
        assert plane.stats()["decoders_created"] == 0
    finally:
        for viewer in viewers:
            await viewer.close()
        await first.close()
        await second.close()
        await plane.stop()
