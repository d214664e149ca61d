"""How closely a recorded talk keeps real time, and what it costs.

A normalized file (the bench's 720p30 ~1.5 Mbps clip, normalized once by
the media library) is played by FilePlayout into counting sinks; printed:
media seconds per wall second (rate), the worst lag behind the wall clock,
the worst lead (must be <= 0), the process's CPU per media second, and the
run-queue wait the machine withheld meanwhile. Figures, not a pass/fail:
tests/streaming/test_playout.py asserts the behaviour.

    python -m bench.playout [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiortc.rtp import RtpPacket

from bench.media import ensure_media
from streaming.media_library import MediaLibrary
from streaming.playout import FilePlayout


class _Sink:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []

    def push(self, packet: RtpPacket) -> None:
        self.arrivals.append((time.monotonic(), packet.timestamp))


def _wait_seconds() -> float:
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


async def measure(seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="forumcast-bench-playout-") as tmp:
        library = MediaLibrary(Path(tmp))
        item = await library.add_file("bench", ensure_media(max(seconds + 2, 10)))
        video, audio = _Sink(), _Sink()
        playout = FilePlayout(library.path(item), "bench", video, audio)
        wait0, cpu0, wall0 = _wait_seconds(), time.process_time(), time.monotonic()
        await playout.start()
        await asyncio.sleep(seconds)
        await playout.stop()
        wait1, cpu1 = _wait_seconds(), time.process_time()
    (t0, first) = video.arrivals[0]
    points = [(t, ((ts - first) & 0xFFFFFFFF) / 90000) for t, ts in video.arrivals]
    media = points[-1][1]
    return {
        "rate": media / (points[-1][0] - t0),
        "lag_s": max((t - t0) - m for t, m in points),
        "lead_s": max(m - (t - wall0) for t, m in points),
        "cpu_per_media_s": (cpu1 - cpu0) / media,
        "run_queue_wait_s": wait1 - wait0,
        "media_s": media,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="how long to play (default 20)")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.seconds))
    print(f"playout over {figures['media_s']:.2f} s of media: rate {figures['rate']:.5f} of real time, "
          f"worst lag {figures['lag_s'] * 1000:.1f} ms, worst lead {figures['lead_s'] * 1000:.2f} ms, "
          f"CPU {figures['cpu_per_media_s']:.1%} of a core, run-queue wait {figures['run_queue_wait_s']:.2f} s")


if __name__ == "__main__":
    main()
