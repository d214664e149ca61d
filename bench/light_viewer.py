"""Light WebRTC viewers for the benchmarks: the viewers themselves are the
product's (streaming/light_viewer.py, what `forumcast loadtest` runs); this
script adds the benchmark's signaling (/watch of bench servers), the
server's /stats and the measurement window.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
from typing import Any

import aiohttp

from bench import machine, procstat
from bench.loopback import LOOPBACK, restrict_ice_to_loopback
from streaming.light_viewer import Counts, LightViewer, Signal, StreamCount, ViewerPool, payload_kinds

__all__ = ["Counts", "LightViewer", "Signal", "StreamCount", "ViewerPool", "http_signal", "payload_kinds"]


def http_signal(session: aiohttp.ClientSession, url: str, forum: str) -> Signal:
    """POST the offer to the server under test's /watch, the same for forumcast and baseline."""

    async def signal(viewer_id: str, offer: str) -> str:
        async with session.post(f"{url}/watch", params={"forum": forum, "viewer": viewer_id},
                                data=offer, headers={"Content-Type": "application/sdp"}) as resp:
            body = await resp.text()
            if resp.status not in (200, 201):
                raise ConnectionError(f"/watch answered {resp.status}: {body[:200]}")
            return body

    return signal


def _rates(window: float, before: list[Counts], after: list[Counts]) -> dict[str, Any]:
    deltas = [b - a for a, b in zip(before, after)]
    per_s = [d.rtp / window for d in deltas] or [0.0]
    total = Counts()
    for d in deltas:
        total = total + d
    return {
        "packets": total.rtp, "bytes": total.rtp_bytes, "rtcp_rx": total.rtcp,
        "video_pps": total.video / window / max(1, len(deltas)),
        "audio_pps": total.audio / window / max(1, len(deltas)),
        "pps_min": min(per_s), "pps_median": statistics.median(per_s), "pps_max": max(per_s),
        "silent_viewers": sum(1 for d in deltas if d.rtp == 0),
        "per_viewer_pps": [round(x, 1) for x in per_s],
        "per_viewer_auth_failures": [d.auth_failures for d in deltas],
    }


async def server_stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The server's own counters (GET /stats), to tell its drops from the network's."""
    try:
        async with http.get(f"{url}/stats") as resp:
            return dict(await resp.json()) if resp.status == 200 else {}
    except (aiohttp.ClientError, ValueError, asyncio.TimeoutError):
        return {}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Connect, wait for media, warm up, then one window of server CPU vs packets."""
    pool = ViewerPool(sample_every=args.sample_every, rr_interval=args.rr_interval,
                      concurrency=args.concurrency, rx_thread=not args.asyncio_rx, ice_addresses=(LOOPBACK,))
    report: dict[str, Any] = {"viewers": args.viewers}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        started = time.monotonic()
        try:
            await pool.connect(args.viewers, http_signal(http, args.url, args.forum))
            report["connect_s"] = time.monotonic() - started
            # the connected peers are long-lived: keep the cyclic GC from rescanning them while
            # it holds the GIL and the reader thread's sockets overflow
            gc.collect()
            gc.freeze()
            report["connected"] = len(pool.viewers)
            report["receiving"] = await pool.wait_receiving(args.receive_timeout)
            await asyncio.sleep(args.warmup)
            print(json.dumps({"event": "window", "seconds": args.seconds}), flush=True)  # profilers attach now
            stats0 = await server_stats(http, args.url)
            machine0 = machine.busy_and_total_ticks()
            before, cpu0, own0, t0 = pool.per_viewer(), procstat.tree_cpu_split(args.server_pid), \
                procstat.cpu_seconds(os.getpid()), time.monotonic()
            await asyncio.sleep(args.seconds)
            after, cpu1, own1, t1 = pool.per_viewer(), procstat.tree_cpu_split(args.server_pid), \
                procstat.cpu_seconds(os.getpid()), time.monotonic()
            window = t1 - t0
            report["machine_busy_cores"] = machine.busy_cores(machine0, machine.busy_and_total_ticks(),
                                                              os.cpu_count() or 1)
            stats1 = await server_stats(http, args.url)
            report["server_stats_delta"] = {k: v - stats0[k] for k, v in stats1.items()
                                            if isinstance(v, (int, float)) and isinstance(stats0.get(k), (int, float))}
            report.update(_rates(window, before, after))
            report.update(window_s=window, server_cpu_s=sum(cpu1) - sum(cpu0), client_cpu_s=own1 - own0,
                          server_user_s=cpu1[0] - cpu0[0], server_sys_s=cpu1[1] - cpu0[1])
            total = Counts()
            for c in after:
                total = total + c
            report.update(auth_checked=total.checked, auth_failures=total.auth_failures)
        finally:
            report["errors"] = pool.errors[:20]
            report["error_count"] = len(pool.errors)
            await pool.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Light viewers: connect, count, report JSON on stdout.")
    parser.add_argument("--url", required=True, help="server under test, e.g. http://127.0.0.1:8990")
    parser.add_argument("--forum", default="main")
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--receive-timeout", type=float, default=20.0)
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--rr-interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--asyncio-rx", action="store_true",
                        help="count in asyncio's datagram callback instead of the reader thread")
    args = parser.parse_args()
    restrict_ice_to_loopback()
    print(json.dumps(asyncio.run(measure(args))), flush=True)


if __name__ == "__main__":
    main()
