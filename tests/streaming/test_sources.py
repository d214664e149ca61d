"""Sources with real peers: a VP8 publisher, a preview viewer pinned to
one source, and source states (live, lost, ended) as signaling sees them."""

from __future__ import annotations

import asyncio

import pytest

from rooms.models import SourceState
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaError, MediaPlane, SourceChange
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(60)

SECOND = 10000


class Changes:
    def __init__(self, plane: MediaPlane) -> None:
        self.seen: list[tuple[str, SourceState]] = []
        self._event = asyncio.Event()
        plane.add_source_listener(self.on_change)

    async def on_change(self, change: SourceChange) -> None:  # async on purpose
        self.seen.append((change.source_id, change.state))
        self._event.set()

    async def wait(self, source_id: str, state: SourceState, timeout: float = 20.0) -> None:
        await eventually(lambda: (source_id, state) in self.seen, timeout=timeout,
                         what=f"{source_id} {state.value} (seen: {self.seen})")


@pytest.fixture
async def plane():
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",), media_timeout=0.6, slate_grace=0.3))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


async def test_a_vp8_publisher_reaches_viewers_that_accept_vp8(plane: MediaPlane) -> None:
    publisher = TestPublisher(codec="vp8")
    viewer = TestViewer()  # aiortc offers VP8 and H.264
    h264_only = TestViewer(codecs=("h264",))
    try:
        await connect_publisher(plane, "f1", "vp8cam", publisher)
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(15)
        assert viewer.received.unreadable == 0
        assert viewer.received.numbers == sorted(viewer.received.numbers)
        # a preview of this source needs VP8: a viewer without it is refused
        with pytest.raises(MediaError) as refused:
            await plane.watch("f1", "tile", await h264_only.offer(), source_id="vp8cam")
        assert refused.value.code == "unsupported_codec"
        assert plane.stats()["decoders_created"] == 0
    finally:
        for peer in (viewer, h264_only, publisher):
            await peer.close()


async def test_a_pinned_viewer_keeps_its_source_when_the_program_moves(plane: MediaPlane) -> None:
    first, second = TestPublisher(audio=False), TestPublisher(offset=SECOND, audio=False)
    program, tile = TestViewer(audio=False), TestViewer(audio=False)
    try:
        await connect_publisher(plane, "f1", "first", first)
        await connect_viewer(plane, "f1", "program", program)
        await connect_viewer(plane, "f1", "tile", tile, source_id="first")
        await tile.wait_frames(5)
        await connect_publisher(plane, "f1", "second", second)

        await eventually(lambda: any(n >= SECOND for n in program.received.numbers), timeout=30,
                         what="the program viewer on the second source")
        count = len(tile.received.numbers)
        await tile.wait_frames(count + 15)
        assert all(n < SECOND for n in tile.received.numbers)
        assert tile.received.numbers == sorted(tile.received.numbers)
        assert plane.stats()["buses"] == 2  # the program and one preview
        await plane.leave("tile")
        assert plane.stats()["buses"] == 1  # an unwatched preview bus is dropped
    finally:
        for peer in (program, tile, first, second):
            await peer.close()


async def test_sources_report_live_lost_and_ended(plane: MediaPlane) -> None:
    changes = Changes(plane)
    quiet = TestPublisher(audio=False)
    gone = TestPublisher(audio=False)
    try:
        await connect_publisher(plane, "f1", "quiet", quiet)
        await connect_publisher(plane, "f1", "gone", gone)
        await changes.wait("quiet", SourceState.LIVE)
        await changes.wait("gone", SourceState.LIVE)
        # media stops while the peer stays up: lost after media_timeout
        quiet.video_track.stop()
        await changes.wait("quiet", SourceState.LOST)
        # the peer goes away: lost at once
        await gone.close()
        await changes.wait("gone", SourceState.LOST)
        await plane.unpublish("gone")
        await changes.wait("gone", SourceState.ENDED)
        await plane.unpublish("quiet")
        await changes.wait("quiet", SourceState.ENDED)
        assert plane.stats()["publishers"] == 0
        order = [s for sid, s in changes.seen if sid == "gone"]
        assert order == [SourceState.CONNECTING, SourceState.LIVE, SourceState.LOST, SourceState.ENDED]
    finally:
        await quiet.close()
        await gone.close()


async def test_the_program_moves_from_h264_to_vp8_for_viewers_that_take_both(plane: MediaPlane) -> None:
    h264, vp8 = TestPublisher(codec="h264"), TestPublisher(codec="vp8", offset=SECOND)
    both, h264_only = TestViewer(), TestViewer(codecs=("h264",))
    try:
        await connect_publisher(plane, "f1", "h264cam", h264)
        await connect_viewer(plane, "f1", "both", both)
        await connect_viewer(plane, "f1", "h264only", h264_only)
        await both.wait_frames(10)
        await h264_only.wait_frames(10)
        await connect_publisher(plane, "f1", "vp8cam", vp8)

        await eventually(lambda: any(n >= SECOND for n in both.received.numbers), timeout=30,
                         what="the viewer on the second source")
        await both.wait_frames(len(both.received.numbers) + 15)
        numbers = both.received.numbers
        cut = next(i for i, n in enumerate(numbers) if n >= SECOND)
        assert all(n < SECOND for n in numbers[:cut]) and all(n >= SECOND for n in numbers[cut:])
        assert numbers[:cut] == sorted(numbers[:cut]) and numbers[cut:] == sorted(numbers[cut:])
        assert both.received.unreadable == 0
        # the H.264-only viewer keeps its sound but gets no VP8 picture
        heard = h264_only.received.audio_frames
        await both.wait_frames(len(both.received.numbers) + 10)
        assert h264_only.received.audio_frames > heard
        assert all(n < SECOND for n in h264_only.received.numbers)
        assert plane.stats()["decoders_created"] == 0
    finally:
        for peer in (both, h264_only, h264, vp8):
            await peer.close()
