"""Stopping an ffmpeg that reads a live input by the end of that input.

ffmpeg answers 'q' (and SIGTERM) only between packets: one blocked on a
silent input (a node's shutdown closes the media plane first) never sees
it, and its grace runs out into SIGTERM and SIGKILL, 7-10 s per ffmpeg.
At the end of its input it finishes its files (a segment, an MP4 or FLV
trailer) and exits by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def end_reader(stop: Awaitable[None] | None, end_input: Awaitable[None]) -> None:
    """`stop` (its Supervisor's, FfmpegProcess's or Restream's stop()) is
    started first, so the end is not taken for a crash to restart from
    (ffmpeg also gets its 'q'); then `end_input` closes what it reads (a
    tee output: ForumOutputs.release; an MkvFeed: end()); then both are
    awaited."""
    if stop is None:
        await end_input
        return
    stopping = asyncio.ensure_future(stop)
    await asyncio.sleep(0)  # stop()'s first step marks the child as stopping
    try:
        await end_input
    finally:
        await stopping
