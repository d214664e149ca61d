"""An MkvFeed whose reader falls behind drops frames (video until the next
IDR) instead of piling up latency, and keeps the connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streaming.mkv_feed import MkvFeed
from tests.eventually import eventually

FRAME = bytes(50_000)


async def test_a_reader_that_falls_behind_loses_frames_until_the_next_idr(tmp_path: Path) -> None:
    feed = MkvFeed(tmp_path / "in.sock", max_lag=200_000)
    await feed.start()
    reader, writer = await asyncio.open_unix_connection(str(feed.path))
    try:
        await eventually(lambda: feed.connections == 1, timeout=10, what="the connection")
        feed.video(0, FRAME, True)
        for n in range(1, 400):  # 20 MB of frames; the reader reads nothing
            feed.video(n * 3000, FRAME, False)
            feed.audio(n * 1600, b"opus")
        assert feed.skipped > 0 and feed.connections == 1
        written = feed.frames
        assert feed._writer is not None and feed._writer.transport.get_write_buffer_size() <= 200_000 + 2 * len(FRAME)

        async def drain() -> None:
            while await reader.read(1 << 20):
                pass

        draining = asyncio.create_task(drain())
        await eventually(lambda: feed._writer is not None and feed._writer.transport.get_write_buffer_size() == 0,
                         timeout=10, what="the reader caught up")
        feed.video(500 * 3000, FRAME, False)  # caught up, but not at an IDR: still skipped
        assert feed.frames == written
        feed.video(501 * 3000, FRAME, True)
        feed.audio(501 * 1600, b"opus")
        assert feed.frames == written + 2
        feed.end()
        await asyncio.wait_for(draining, 10)  # end of input
    finally:
        feed.end()
        writer.close()
