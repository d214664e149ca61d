"""CPU of a forum's program outputs, and how many forums one core carries.

A real 720p30 program (bench/media.py's moving test picture, H.264 +
Opus, played out in real time into a ProgramBus) is encoded by the
program encoder at the configured profile (default 720p30, x264
veryfast, 3000 kb/s, AAC 128 kb/s); then two restream destinations
(local ffmpeg RTMP listeners writing to /dev/null, not counted), HLS and
the recorder are added. Each child's CPU is read from /proc over the
same wall-clock window.

    python3 -m bench.outputs [--seconds 20] [--preset veryfast] [--kbps 3000] [--threads 0] [--tune zerolatency]

Prints one table (percent of one core) and the forums per core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import ffmpeg

from bench.media import ensure_media
from bench.procstat import cpu_seconds
from recorder.recorder import Recorder
from rooms.models import SourceKind
from streaming.ffmpeg_process import FfmpegProcess, Supervisor
from streaming.forum_outputs import ProgramOutputs
from streaming.hls_output import HlsOutput
from streaming.playout import FilePlayout
from streaming.program_bus import ProgramBus
from streaming.program_encoder import OutputProfile
from streaming.rtp_udp_ingest import new_source_feed


def _pid(supervisor: Supervisor | None) -> int | None:
    return supervisor.current.pid if supervisor is not None and supervisor.current is not None else None


async def _measure(pids: dict[str, int | None], seconds: float) -> dict[str, float]:
    """Percent of one core each pid used over `seconds` of wall clock."""
    before = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
    start = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - start
    return {name: 100 * ((cpu_seconds(pid) if pid else 0.0) - before[name]) / wall for name, pid in pids.items()}


async def run(seconds: float, profile: OutputProfile) -> None:
    media = ensure_media(300)
    feed = new_source_feed("bench", SourceKind.LIVE)
    assert feed.video is not None and feed.audio is not None
    player = FilePlayout(media, "bench", feed.video, feed.audio)
    await player.start()
    bus = ProgramBus("bench/program")
    bus.switch_to(feed)
    outputs = ProgramOutputs(lambda forum_id: bus, profile)
    forum = outputs.forum("bench")
    listeners: list[FfmpegProcess] = []
    work = Path(tempfile.mkdtemp(prefix="forumcast-bench-outputs-"))
    recorder = Recorder(work / "rec", outputs, min_free_bytes=0)
    hls: HlsOutput | None = None
    try:
        url = await forum.acquire("bench")
        encoder = forum.encoder
        assert encoder is not None
        while encoder.tee.keyframes < 2:
            await asyncio.sleep(0.1)
        keys = encoder.tee.keyframes
        encode_only = await _measure({"encode": _pid(encoder._supervisor)}, seconds)
        # media seconds encoded per wall second (the tee sees one keyframe per GOP): on a loaded
        # machine an encoder that falls behind uses less CPU per wall second, not less per frame
        pace_alone = (encoder.tee.keyframes - keys) * profile.keyframe_s / seconds

        for n in range(2):
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            listener = FfmpegProcess(ffmpeg.input(f"rtmp://127.0.0.1:{port}/live/k{n}", listen=1)
                                     .output("-", f="null", c="copy").get_args(), name=f"platform{n}",
                                     loglevel="error")
            await listener.start()
            listeners.append(listener)
            await asyncio.sleep(0.5)  # the listener binds (bench only: no test depends on it)
            restream = forum.add(f"platform {n}", f"rtmp://127.0.0.1:{port}/live", f"k{n}")
            await forum.start(restream.id)
        hls = HlsOutput("bench", work / "hls", url)
        await hls.start()
        await recorder.start("bench", "bench")
        while not all(r.state == "live" for r in forum.restreams.values()):
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        pids = {"encode": _pid(encoder._supervisor), "hls": _pid(hls._supervisor),
                "recorder": _pid(recorder._active["bench"].supervisor)}
        for n, restream in enumerate(forum.restreams.values()):
            pids[f"restream {n + 1}"] = _pid(restream._supervisor)
        keys = encoder.tee.keyframes
        full = await _measure(pids, seconds)
        pace = (encoder.tee.keyframes - keys) * profile.keyframe_s / seconds
        tee = encoder.tee
        skipped = encoder.feed.skipped
    finally:
        if hls is not None:
            await hls.stop()
        await recorder.close()
        await outputs.close()
        for listener in listeners:
            await listener.stop(grace=1.0)
        await player.stop()
    per_forum = sum(full.values())
    print(f"profile: {profile.width}x{profile.height}@{profile.fps} x264 {profile.preset} "
          f"tune {profile.tune or 'none'} threads {profile.threads or 'auto'} "
          f"{profile.video_kbps} kb/s + AAC {profile.audio_kbps} kb/s; {seconds:.0f} s windows")
    print(f"{'process':<14}{'% of one core':>14}")
    print(f"{'encode alone':<14}{encode_only['encode']:>14.1f}")
    for name, value in full.items():
        print(f"{name:<14}{value:>14.1f}")
    print(f"{'per forum':<14}{per_forum:>14.1f}   (encode + 2 restreams + HLS + recorder; the server's own")
    print(f"{'':<14}{'':>14}    tee/fan-in work is in the server process, not counted here)")
    print(f"forums per core: {100 / per_forum:.2f}; tee got {tee.bytes_in / 1e6:.1f} MB, "
          f"dropped consumers {tee.dropped_consumers}, input frames skipped (encoder behind) {skipped}")
    print(f"pace (media s encoded per wall s, +-{profile.keyframe_s / seconds:.2f}): encode alone {pace_alone:.2f}, "
          f"forum {pace:.2f}; per forum at real time {per_forum / max(pace, 0.01):.1f} % "
          f"-> {100 * max(pace, 0.01) / per_forum:.2f} forums per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--kbps", type=int, default=3000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=OutputProfile.threads, help="0: ffmpeg's choice")
    parser.add_argument("--tune", default=OutputProfile.tune, help="x264 tune; '' for none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profile = OutputProfile(width=args.width, height=args.height, fps=args.fps, video_kbps=args.kbps,
                            preset=args.preset, threads=args.threads, tune=args.tune)
    asyncio.run(run(args.seconds, profile))


if __name__ == "__main__":
    main()
