"""The benchmark's test media, made once with the imageio-ffmpeg binary.

720p30 H.264 constrained baseline at ~1.5 Mbps CBR (2 s GOP) + Opus, in
MPEG-TS: the video stays Annex-B with timestamps, which is what aiortc's
H.264 packetizer needs from MediaPlayer(decode=False). The file is long
rather than looped: MediaPlayer(loop=True) restarts the pts at 0, so after
the first loop its pacing is lost and it bursts the whole file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import imageio_ffmpeg

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack
    from aiortc.contrib.media import MediaPlayer

WIDTH, HEIGHT, FPS = 1280, 720, 30
VIDEO_KBPS = 1500
DEFAULT_SECONDS = 300  # longer than any one server's life in a fan-out run


def cache_dir() -> Path:
    root = os.environ.get("FORUMCAST_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "forumcast-bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ffmpeg_command(ffmpeg: str, seconds: int, out: Path, kbps: int = VIDEO_KBPS, gop: int = 2 * FPS) -> list[str]:
    """`gop`: frames between IDRs (and the longest a new viewer waits for one)."""
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast",
        "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-b:v", f"{kbps}k", "-minrate", f"{kbps}k", "-maxrate", f"{kbps}k",
        "-bufsize", f"{kbps}k", "-x264-params", f"nal-hrd=cbr:keyint={gop}:min-keyint={gop}:scenecut=0",
        "-bsf:v", "h264_mp4toannexb",
        "-c:a", "libopus", "-b:a", "64k", "-ac", "2", "-frame_duration", "20",
        "-f", "mpegts", str(out),
    ]


def ensure_media(seconds: int = DEFAULT_SECONDS, ffmpeg: str | None = None, kbps: int = VIDEO_KBPS,
                 gop: int = 2 * FPS) -> Path:
    """The cached file, encoded on first use (about a minute on 2 busy cores)."""
    out = cache_dir() / (f"bench-720p30-{kbps}k-{seconds}s.ts" if gop == 2 * FPS
                         else f"bench-720p30-{kbps}k-{seconds}s-gop{gop}.ts")
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_suffix(".part.ts")
    binary = ffmpeg or imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(ffmpeg_command(binary, seconds, tmp, kbps, gop), check=True, timeout=900)
    tmp.replace(out)  # atomic: a crashed encode never leaves a half file under the real name
    return out


def player_tracks(player: "MediaPlayer") -> tuple["MediaStreamTrack", "MediaStreamTrack"]:
    """(video, audio) of a MediaPlayer of the test file; both must be there."""
    if player.video is None or player.audio is None:
        raise RuntimeError("the test media must hold H.264 video and Opus audio")
    return player.video, player.audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=DEFAULT_SECONDS)
    args = parser.parse_args()
    print(ensure_media(args.seconds))


if __name__ == "__main__":
    main()
