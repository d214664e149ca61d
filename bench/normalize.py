"""What normalizing a recorded talk costs: seconds (wall and CPU of the
ffmpeg child) per minute of source, for each input of issue 15 and for a
720p30 camera file converted vs the same picture already viewer-ready
(copied).

    nice -n 10 python -m bench.normalize

Each file is added to a fresh MediaLibrary (one job, nothing cached), the
way an upload is. The inputs are made first with the bundled ffmpeg
(tests/streaming/recorded_inputs.py); making them is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from streaming.media_library import MediaLibrary
from tests.streaming.recorded_inputs import NAMES, RecordedInputs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(inputs: RecordedInputs, names: list[str], work: Path) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for name in names:
        source = inputs(name)
        library = MediaLibrary(work / f"lib-{name}")
        cpu, wall = children_cpu(), time.perf_counter()
        item = await library.add_file("bench", source)
        wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
        mode = str(item.processing.get("video_mode"))
        minutes = item.duration / 60
        rows.append((name, mode, item.duration, wall / minutes, cpu / minutes))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(NAMES), help="inputs (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forumcast-bench-normalize-") as temp:
        work = Path(temp)
        inputs = RecordedInputs(work / "inputs")
        for name in args.names:
            inputs(name)
        rows = asyncio.run(measure(inputs, args.names, work))
    print(f"{'input':24} {'video':8} {'source s':>8} {'wall s/min':>10} {'cpu s/min':>10}")
    for name, mode, duration, wall, cpu in rows:
        print(f"{name:24} {mode:8} {duration:8.1f} {wall:10.2f} {cpu:10.2f}")


if __name__ == "__main__":
    main()
