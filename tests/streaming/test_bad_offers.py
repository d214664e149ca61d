"""Bad offers are refused with a clear MediaError, and the forum's
existing publisher keeps streaming to its viewers meanwhile."""

from __future__ import annotations

import re

import pytest

from streaming.media_config import MediaConfig
from streaming.media_plane import MediaError, MediaPlane
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer

pytestmark = pytest.mark.timeout(60)


def unusable_codecs(offer: str) -> str:
    """The same offer, but with codecs forumcast cannot forward."""
    offer = re.sub(r"H264/90000", "H265/90000", offer)
    offer = re.sub(r"VP8/90000", "AV1X/90000", offer)
    return re.sub(r"opus/48000/2", "G729/8000", offer)


async def test_bad_offers_are_refused_and_the_stream_carries_on() -> None:
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    publisher = TestPublisher()
    viewer = TestViewer()
    spare = TestPublisher()
    spare_viewer = TestViewer()
    try:
        await connect_publisher(plane, "f1", "speaker", publisher)
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10)
        good_offer = await spare.offer()
        good_watch = await spare_viewer.offer()

        cases = [
            (plane.publish("f1", "x1", ""), "invalid_sdp"),
            (plane.publish("f1", "x2", "hello world"), "invalid_sdp"),
            (plane.publish("f1", "x3", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"), "invalid_sdp"),
            (plane.publish("f1", "x4", re.sub(r"a=ice-ufrag:.*\r\n", "", good_offer)), "invalid_sdp"),
            (plane.publish("f1", "x5", unusable_codecs(good_offer)), "unsupported_codec"),
            (plane.publish("f1", "x6", good_watch), "unsupported_codec"),  # sends nothing
            (plane.watch("f1", "y1", "garbage"), "invalid_sdp"),
            (plane.watch("f1", "y2", unusable_codecs(good_watch)), "unsupported_codec"),
            (plane.watch("f1", "y3", good_watch, source_id="nobody"), "not_found"),
        ]
        for call, code in cases:
            with pytest.raises(MediaError) as refused:
                await call
            assert refused.value.code == code, (code, refused.value)
            assert refused.value.message
            assert refused.value.to_json()["error"]["code"] == code

        stats = plane.stats()
        assert stats["publishers"] == 1 and stats["viewers"] == 1
        assert stats["peers"] == 2
        # the existing viewer kept getting frames all along
        before = len(viewer.received.numbers)
        await viewer.wait_frames(before + 15)
        assert viewer.received.unreadable == 0
        assert viewer.received.numbers == sorted(viewer.received.numbers)
    finally:
        for peer in (viewer, spare_viewer, publisher, spare):
            await peer.close()
        await plane.stop()


async def test_a_stopped_plane_refuses_with_unavailable() -> None:
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    await plane.stop()
    await plane.stop()  # idempotent
    publisher = TestPublisher()
    try:
        with pytest.raises(MediaError) as refused:
            await plane.publish("f1", "late", await publisher.offer())
        assert refused.value.code == "unavailable"
    finally:
        await publisher.close()
