"""Take latency: from an operator's `take` to the first decoded frame of the
new source at a viewer, on loopback.

A whole node runs in-process (tests/operator_app.py: socket.io, media
plane, switcher) with two aiortc speakers of different picture sizes
(so the viewer can tell them apart by the frame size) and one aiortc
viewer of the program. The operator alternates takes between them; each
take is timed to its ack and to the first frame of the new size the
viewer decodes. Goal: p95 under 300 ms.

    python -m bench.switch [--takes 50] [--recorded]

With --recorded the two sources are recorded playouts instead: they
cannot make a keyframe on request, so a take waits for the next IDR of
the file (normalized to one every 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rooms.models import Role
from signaling.app_keys import LIBRARY
from tests.operator_app import Node, RecordingViewer, SioClient, SizedPublisher, make_video, running_node

FORUM = "ai"
SIZES = {"A": (320, 240), "B": (240, 160)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _speakers(node: Node, closers: list[Any]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name, (width, height) in SIZES.items():
        publisher = SizedPublisher(width, height)
        client = SioClient()
        closers.extend([publisher, client])
        await client.connect(node, node.token(Role.SPEAKER, [FORUM], name))
        await client.call("join", {"forum_id": FORUM})
        answer = await client.call("publish", {"forum_id": FORUM, "sdp": await publisher.offer()})
        await publisher.accept(answer["sdp"])
        ids[name] = answer["source_id"]
    return ids


async def _playouts(node: Node, op: SioClient, tmp: Path) -> dict[str, str]:
    """Two recorded videos (normalized: an IDR every 2 s) playing as sources."""
    library = node.app[LIBRARY]
    ids: dict[str, str] = {}
    for name, (width, height) in SIZES.items():
        video = await asyncio.to_thread(make_video, tmp / f"{name}.mp4", 300, f"{width}x{height}")
        item = await library.add_file(FORUM, video)
        ack = await op.call("playout_start", {"forum_id": FORUM, "media": item.id, "take": False})
        ids[name] = ack["playout"]["source_id"]
    return ids


async def run(takes: int, recorded: bool = False) -> dict[str, list[float]]:
    closers: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="forumcast-bench-switch-") as tmp:
        async with running_node(Path(tmp)) as node:
            try:
                op = SioClient()
                closers.append(op)
                await op.connect(node, node.token(Role.OPERATOR, [FORUM], "Bench"))
                await op.call("join", {"forum_id": FORUM})
                ids = await (_playouts(node, op, Path(tmp)) if recorded else _speakers(node, closers))
                await op.next_push("sources", lambda p: {x["id"] for x in p["sources"] if x["state"] == "live"}
                                   >= set(ids.values()))
                ack = await op.call("take", {"forum_id": FORUM, "source_id": ids["A"]})
                assert "program" in ack, ack
                viewer = RecordingViewer()
                watcher = SioClient()
                closers.extend([viewer, watcher])
                await watcher.connect(node, node.token(Role.VIEWER, [FORUM], "Viewer"))
                await watcher.call("join", {"forum_id": FORUM})
                answer = await watcher.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()})
                await viewer.accept(answer["sdp"])
                await viewer.wait_size(SIZES["A"], timeout=20)

                acks: list[float] = []
                frames: list[float] = []
                current = "A"
                for _ in range(takes):
                    target = "B" if current == "A" else "A"
                    await asyncio.sleep(random.uniform(0.3, 0.6))  # pacing between takes, not a wait for state
                    started = time.monotonic()
                    ack = await op.call("take", {"forum_id": FORUM, "source_id": ids[target]})
                    acks.append(time.monotonic() - started)
                    assert ack.get("program", {}).get("program") == ids[target], ack
                    frame = await viewer.wait_size(SIZES[target], timeout=10, after=started)
                    frames.append(frame.at - started)
                    current = target
                return {"take acked": acks, "first frame of the new source": frames}
            finally:
                for closer in reversed(closers):
                    with contextlib.suppress(Exception):
                        await closer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=50)
    parser.add_argument("--recorded", action="store_true",
                        help="take between two recorded playouts (no keyframe on request: IDR every 2 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(args.takes, args.recorded))
    sources = "recorded playouts (IDR every 2 s)" if args.recorded else "aiortc speakers at 30 fps"
    print(f"\n{args.takes} takes on loopback, {sources}, one aiortc viewer\n")
    print(f"{'from take to':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"{name:34} {percentile(ms, 0.5):8.1f} {percentile(ms, 0.95):8.1f} {max(ms):8.1f} "
              f"{statistics.mean(ms):8.1f}")
    p95 = percentile([v * 1000 for v in results["first frame of the new source"]], 0.95)
    print(f"\ngoal p95 < 300 ms: {'met' if p95 < 300 else 'NOT met'} ({p95:.0f} ms)")


if __name__ == "__main__":
    main()
