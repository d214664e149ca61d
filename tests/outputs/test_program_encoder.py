"""The program encoder: the forum's program RTP (continuous across cuts)
encoded once by a real ffmpeg into one MPEG-TS, handed out by the tee."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ffmpeg
import pytest

from streaming.ffmpeg_process import FfmpegProcess
from streaming.program_encoder import ProgramEncoder
from tests.eventually import eventually
from tests.outputs.helpers import SMALL, probe, program_bus, slate_feed


@pytest.mark.slow
async def test_a_take_between_sizes_stays_one_stream_at_the_profile(tmp_path: Path) -> None:
    wide, wide_slate = await slate_feed("Wide", "wide", 640, 360)
    tall, tall_slate = await slate_feed("Tall", "tall", 240, 320)
    bus = program_bus()
    bus.switch_to(wide)
    encoder = ProgramEncoder("forum", bus, SMALL)
    await encoder.start()
    target = tmp_path / "program.ts"
    reader = FfmpegProcess(
        ffmpeg.input(encoder.url).output(str(target), c="copy", f="mpegts").overwrite_output().get_args(),
        name="reader", loglevel="error",
    )
    try:
        await eventually(lambda: encoder.tee.keyframes >= 1, timeout=60, what="the encoder's first keyframe")
        await reader.start()
        await eventually(lambda: target.exists() and target.stat().st_size > 20_000, timeout=60,
                         what="program data at the reader")
        bus.switch_to(tall)  # a take to a source of another size
        await eventually(lambda: bus.on_air == "tall", timeout=30, what="the cut")
        cut_at = encoder.tee.bytes_in
        await eventually(lambda: encoder.tee.bytes_in > cut_at + 60_000, timeout=60, what="program after the cut")
        bus.switch_to(None)  # nothing on air: the output keeps going
        gap_at = encoder.tee.bytes_in
        await asyncio.sleep(0)  # (no wait on speed: we check below that the stream went on)
        bus.switch_to(wide)
        await eventually(lambda: encoder.tee.bytes_in > gap_at + 60_000, timeout=60, what="program after the gap")
    finally:
        await reader.stop()
        await encoder.stop()
        await wide_slate.stop()
        await tall_slate.stop()
    assert encoder.state == "stopped" and encoder.restarts == 0
    info = probe(target)
    assert info["video"][:3] == ("h264", 320, 180)
    assert info["audio"] == ("aac", 48000)
    pts = info["video_pts"]
    assert isinstance(pts, list) and len(pts) > 30
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert min(steps) > 0 and max(steps) < 0.5  # monotonic, no hole across the cut
