"""A publisher stays live as long as it is heard, whether or not it
answers consent checks (issue 14 item 1: ffmpeg's WHIP muxer answers none
and was cut off at ~30 s, "Consent to send expired").

aioice's consent timing is shortened here (one check every ~0.2 s, 6
unanswered end it: ~4 s with the STUN timeouts) so that the old
behaviour shows within seconds; the publisher's liveness timeout is the
MediaConfig setting."""

from __future__ import annotations

import aioice.ice
import pytest

from streaming import aiortc_internals
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests import aiortc_faults
from tests.aiortc_peers import LOOPBACK, TestPublisher, TestViewer, connect_publisher, connect_viewer

pytestmark = pytest.mark.timeout(120)

FPS = 30


@pytest.fixture
def quick_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)


async def test_a_publisher_that_answers_no_consent_checks_stays_live(quick_consent: None) -> None:
    plane = MediaPlane(MediaConfig(ice_addresses=LOOPBACK, publisher_timeout=3.0))
    await plane.start()
    publisher = TestPublisher()
    viewer = TestViewer()
    connected = [False]
    try:
        for ice in aiortc_internals.ice_transports(publisher.pc):
            aiortc_faults.unanswered_checks(ice, lambda: connected[0])
        await connect_publisher(plane, "f1", "ffmpeg-like", publisher)
        connected[0] = True  # from now on it answers no STUN request, as ffmpeg
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
        # 10 s of frames: ~15 consent periods, 3+ liveness timeouts
        start = len(viewer.received.numbers)
        await viewer.wait_frames(start + 10 * FPS, timeout=60)
        assert plane.feed("ffmpeg-like") is not None
        assert publisher.pc.connectionState == "connected"
    finally:
        await viewer.close()
        await publisher.close()
        await plane.stop()


async def test_liveness_replaces_consent_only_for_publishers(quick_consent: None) -> None:
    """Viewers keep RFC 7675 consent: we send them media, so a viewer that
    stops answering is stopped being sent to (and closed)."""
    plane = MediaPlane(MediaConfig(ice_addresses=LOOPBACK, publisher_timeout=3.0))
    await plane.start()
    publisher = TestPublisher()
    viewer = TestViewer()
    deaf = [False]
    closed: list[str] = []
    plane.add_viewer_closed_listener(closed.append)
    try:
        await connect_publisher(plane, "f1", "speaker", publisher)
        for ice in aiortc_internals.ice_transports(viewer.pc):
            aiortc_faults.unanswered_checks(ice, lambda: deaf[0])
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
        deaf[0] = True
        from tests.eventually import eventually

        await eventually(lambda: closed == ["guest"], timeout=30, what="the deaf viewer closed by consent")
        assert plane.feed("speaker") is not None
    finally:
        await viewer.close()
        await publisher.close()
        await plane.stop()
