"""Shared pieces of the output tests: a forum program driven by real slates
(ffmpeg-encoded H.264 + Opus RTP), a small output profile, ffprobe."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from rooms.models import SourceKind
from streaming.ffmpeg_process import ffmpeg_binary
from streaming.forum_outputs import ProgramOutputs
from streaming.program_bus import ProgramBus
from streaming.program_encoder import OutputProfile
from streaming.rtp_source import SourceFeed
from streaming.rtp_udp_ingest import new_source_feed
from streaming.slate import Slate, encode_slate

# small, so 7 helpers on 2 cores can run it
SMALL = OutputProfile(width=320, height=180, fps=15, video_kbps=300, audio_kbps=64,
                      preset="ultrafast", keyframe_s=2.0)


def ffprobe_binary() -> str:
    """imageio-ffmpeg ships no ffprobe: ffmpeg's own demuxer report is
    parsed instead where a duration is needed (see `probe`)."""
    return ffmpeg_binary()


def probe(path: Path) -> dict[str, object]:
    """Streams and packet times of a media file, read with PyAV (libavformat,
    the same demuxers ffprobe uses): {'video': (codec, w, h, profile),
    'audio': (codec, rate), 'duration': s, 'video_pts': [s...]}."""
    import av

    with av.open(str(path)) as container:
        info: dict[str, object] = {}
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        if v is not None:
            info["video"] = (v.codec_context.name, v.codec_context.width, v.codec_context.height,
                             v.codec_context.profile)
        if a is not None:
            info["audio"] = (a.codec_context.name, a.codec_context.sample_rate)
        pts: list[float] = []
        apts: list[float] = []
        for packet in container.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            t = float(packet.pts * packet.time_base)
            (pts if packet.stream.type == "video" else apts).append(t)
        info["video_pts"] = sorted(pts)
        info["audio_pts"] = sorted(apts)
        info["duration"] = (max(pts) - min(pts)) if pts else 0.0
    return info


def ffmpeg_version_json() -> str:
    return json.dumps(subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout[:40])


async def slate_feed(title: str, source_id: str, width: int, height: int) -> tuple[SourceFeed, Slate]:
    """A real H.264 + Opus source: a slate of `width`x`height` looping in
    real time into a SourceFeed."""
    loop = await encode_slate(title, width=width, height=height, fps=15, seconds=2.0)
    feed = new_source_feed(source_id, SourceKind.LIVE)
    assert feed.video is not None and feed.audio is not None
    slate = Slate(title, feed.video, feed.audio, loop=loop, source_id=source_id)
    await slate.start()
    return feed, slate


def program_bus(name: str = "forum/program") -> ProgramBus:
    return ProgramBus(name)


@contextlib.asynccontextmanager
async def slate_program(title: str = "Main Hall", width: int = 320,
                        height: int = 180) -> AsyncIterator[tuple[ProgramBus, ProgramOutputs]]:
    """A forum program showing a real slate, and the outputs (SMALL
    profile) that read it; on exit the outputs close, then the slate stops."""
    feed, slate = await slate_feed(title, "slate", width, height)
    bus = program_bus()
    bus.switch_to(feed)
    outputs = ProgramOutputs(lambda forum_id: bus, SMALL)
    try:
        yield bus, outputs
    finally:
        await outputs.close()
        await slate.stop()
