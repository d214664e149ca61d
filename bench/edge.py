"""Origin CPU with N viewers direct, against N viewers through one edge.

    nice -n 10 python -m bench.edge --viewers 50 --seconds 10

A real origin (`forumcast serve`, tests/server_process.py) with a forum on
air (its slate, or --whip-publisher: ffmpeg's WHIP muxer sending 720p30
x264 at --kbps). Phase 1: N light viewers (streaming/light_viewer.py, no
decode) POST to the origin's /whep/{forum}. Phase 2: an edge in this
process (a MediaPlane and an EdgePull from the origin's /whep, i.e. one
WHEP viewer at the origin) and the same N light viewers on the edge. In
each phase, after a warm-up, one window of the origin's CPU (its process
tree, /proc) and of what the viewers received. This process (viewers, and
in phase 2 the edge) is reported apart: on one machine it competes with
the origin for the same cores, so the origin figures are the ones to
compare. Prints one JSON object per phase, then a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import time
from typing import Any

import aiohttp
import imageio_ffmpeg

from bench import machine, procstat
from bench.loopback import LOOPBACK, restrict_ice_to_loopback
from rooms.models import Role
from streaming.edge_pull import EdgePull, EdgeState
from streaming.light_viewer import Counts, Signal, ViewerPool
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests.server_process import ServerProcess, start_server


def whep_signal(http: aiohttp.ClientSession, origin: ServerProcess, forum: str) -> Signal:
    async def signal(viewer_id: str, offer: str) -> str:
        token = origin.token(Role.VIEWER, [forum], viewer_id)  # one invite per guest: seats are per invite
        async with http.post(f"{origin.url}/whep/{forum}", data=offer,
                             headers={"Content-Type": "application/sdp",
                                      "Authorization": f"Bearer {token}"}) as response:
            body = await response.text()
            if response.status != 201:
                raise ConnectionError(f"WHEP answered {response.status}: {body[:200]}")
            return body

    return signal


def plane_signal(plane: MediaPlane, forum: str) -> Signal:
    async def signal(viewer_id: str, offer: str) -> str:
        return await plane.watch(forum, viewer_id, offer)

    return signal


async def measure(label: str, origin: ServerProcess, signal: Signal, args: argparse.Namespace,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    pool = ViewerPool(sample_every=50, concurrency=10, ice_addresses=(LOOPBACK,))
    report: dict[str, Any] = {"phase": label, "viewers": args.viewers}
    try:
        started = time.monotonic()
        await pool.connect(args.viewers, signal, prefix=label + "-")
        report["connect_s"] = round(time.monotonic() - started, 2)
        gc.collect()
        report["connected"] = len(pool.viewers)
        report["receiving"] = await pool.wait_receiving(30)
        await asyncio.sleep(args.warmup)
        before = pool.per_viewer()
        cpu0 = procstat.tree_cpu_split(origin.process.pid)
        own0 = procstat.cpu_seconds(os.getpid())
        ticks0 = machine.busy_and_total_ticks()
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        window = time.monotonic() - t0
        after = pool.per_viewer()
        cpu1 = procstat.tree_cpu_split(origin.process.pid)
        own1 = procstat.cpu_seconds(os.getpid())
        deltas = [b - a for a, b in zip(before, after)]
        total = Counts()
        for d in deltas:
            total = total + d
        per_viewer_kbps = [d.rtp_bytes * 8 / 1000 / window for d in deltas] or [0.0]
        report.update(
            window_s=round(window, 2),
            origin_cpu_pct=round(100 * (sum(cpu1) - sum(cpu0)) / window, 1),
            bench_process_cpu_pct=round(100 * (own1 - own0) / window, 1),
            machine_busy_cores=round(machine.busy_cores(ticks0, machine.busy_and_total_ticks(),
                                                        os.cpu_count() or 1), 2),
            viewer_kbps_median=round(statistics.median(per_viewer_kbps), 1),
            viewer_kbps_min=round(min(per_viewer_kbps), 1),
            loss_ratio=round(total.lost / total.expected, 4) if total.expected else None,
            silent_viewers=sum(1 for d in deltas if d.rtp == 0),
            errors=pool.errors[:5], error_count=len(pool.errors),
            **(extra or {}),
        )
    finally:
        await pool.close()
    return report


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    origin = start_server()
    publisher: subprocess.Popen[bytes] | None = None
    reports = []
    try:
        if args.whip_publisher:
            speaker = origin.token(Role.SPEAKER, [args.forum], "Bench speaker")
            publisher = subprocess.Popen([
                imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
                "-re", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-preset", "ultrafast",
                "-bf", "0", "-g", "60", "-b:v", f"{args.kbps}k", "-maxrate", f"{args.kbps}k",
                "-bufsize", f"{args.kbps}k", "-c:a", "libopus", "-ac", "2",
                "-f", "whip", "-authorization", speaker, f"{origin.url}/whip/{args.forum}",
            ], stdout=subprocess.DEVNULL)
            await asyncio.sleep(5)  # ICE and the first keyframe; the warm-up covers the rest
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            idle0 = procstat.tree_cpu_split(origin.process.pid)
            t0 = time.monotonic()
            await asyncio.sleep(args.seconds)
            idle = round(100 * (sum(procstat.tree_cpu_split(origin.process.pid)) - sum(idle0))
                         / (time.monotonic() - t0), 1)
            reports.append({"phase": "no-viewers", "origin_cpu_pct": idle})
            print(json.dumps(reports[-1]), flush=True)
            reports.append(await measure("direct", origin, whep_signal(http, origin, args.forum), args))
            print(json.dumps(reports[-1]), flush=True)
            await asyncio.sleep(2)  # the direct viewers' peers close at the origin
            plane = MediaPlane(MediaConfig(ice_addresses=(LOOPBACK,)))
            await plane.start()
            pull = EdgePull(args.forum, f"{origin.url}/whep/{args.forum}",
                            origin.token(Role.VIEWER, [args.forum], "Edge node"), plane, plane.config,
                            plane.decoders)
            try:
                await pull.start()
                plane.set_program(args.forum, pull.source_id)
                deadline = time.monotonic() + 30
                while pull.state != EdgeState.LIVE and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                report = await measure("edge", origin, plane_signal(plane, args.forum), args)
                stats = await pull.stats()
                report.update(edge_pull_kbps_in=stats.kbps_in, edge_pull_packets_lost=stats.packets_lost,
                              edge_pull_state=stats.state, edge_decoders_created=plane.stats()["decoders_created"])
                reports.append(report)
                print(json.dumps(reports[-1]), flush=True)
            finally:
                await pull.stop()
                await plane.stop()
    finally:
        if publisher is not None:
            publisher.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                publisher.wait(10)
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        origin.cleanup()
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description="Origin CPU: N viewers direct vs through one edge.")
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--forum", default="digital-economy")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--whip-publisher", action="store_true",
                        help="put ffmpeg's WHIP muxer on air (720p30 x264) instead of the slate")
    parser.add_argument("--kbps", type=int, default=1500, help="the WHIP publisher's video bitrate")
    args = parser.parse_args()
    restrict_ice_to_loopback()
    reports = asyncio.run(run(args))
    by = {r["phase"]: r for r in reports}
    if "direct" in by and "edge" in by:
        print(f"origin CPU, {args.viewers} viewers: direct {by['direct']['origin_cpu_pct']}% "
              f"({by['direct']['viewer_kbps_median']} kb/s each), through one edge "
              f"{by['edge']['origin_cpu_pct']}% ({by['edge']['viewer_kbps_median']} kb/s each); "
              f"no viewers {by['no-viewers']['origin_cpu_pct']}%", flush=True)


if __name__ == "__main__":
    main()
