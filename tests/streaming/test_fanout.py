"""Publish once, watch three times: real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rooms.models import SourceState
from streaming.media_plane import MediaPlane, SourceChange
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer
from tests.eventually import NotYet, eventually

pytestmark = pytest.mark.timeout(60)


async def sender_reports(viewer: TestViewer, at_least: int, timeout: float = 20.0) -> dict[str, tuple[int, int]]:
    """(packets, octets) from the latest RTCP SR of each kind the viewer got,
    once both report more than `at_least` packets (SRs go out every 0.5-1.5 s
    and the first may predate most of the stream: poll the viewer's stats).
    After `timeout`, what was last seen (the caller's asserts say what is missing)."""
    found: dict[str, tuple[int, int]] = {}

    async def both_past() -> bool:
        nonlocal found
        stats = await viewer.pc.getStats()
        found = {
            s.kind: (s.packetsSent, s.bytesSent)
            for s in stats.values()
            if s.type == "remote-outbound-rtp" and s.packetsSent
        }
        return len(found) == 2 and all(packets > at_least for packets, _ in found.values())

    with contextlib.suppress(NotYet):
        await eventually(both_past, timeout=timeout, interval=0.1, what="sender reports of both kinds")
    return found


async def test_three_viewers_get_decodable_frames_in_order_without_server_decoders(plane: MediaPlane) -> None:
    changes: list[SourceChange] = []
    live = asyncio.Event()

    def on_change(change: SourceChange) -> None:
        changes.append(change)
        if change.state == SourceState.LIVE:
            live.set()

    plane.add_source_listener(on_change)
    publisher = TestPublisher()
    viewers = [TestViewer() for _ in range(3)]
    try:
        await connect_publisher(plane, "main", "speaker-1", publisher)
        await asyncio.wait_for(live.wait(), 10)
        for i, viewer in enumerate(viewers):
            await connect_viewer(plane, "main", f"guest-{i}", viewer)
        for viewer in viewers:
            await viewer.wait_frames(30, timeout=15)
        for viewer in viewers:
            numbers = viewer.received.numbers
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
            assert viewer.received.unreadable == 0
            assert viewer.received.audio_frames > 0
        stats = plane.stats()
        assert stats["decoders_created"] == 0
        assert stats["viewers"] == 3 and stats["publishers"] == 1
        assert stats["packets_forwarded"] > 0
        assert plane.program("main") == "speaker-1"
        assert ("main", "speaker-1", SourceState.LIVE) in [(c.forum_id, c.source_id, c.state) for c in changes]
        # the publisher's own sender reports give both sources its clock
        await eventually(lambda: plane.stats()["sources_with_clock"] >= 2, timeout=20,  # SRs every 0.5-1.5 s
                         what="both sources' clocks from the publisher's SRs")
        # the viewers' RTCP sender reports carry the fast path's counts
        reports = await sender_reports(viewers[0], at_least=10)
        assert set(reports) == {"video", "audio"}
        for kind, (packets, octets) in reports.items():
            assert packets > 10 and octets > packets, (kind, packets, octets)
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()
