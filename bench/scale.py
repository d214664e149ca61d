"""Issue 12's benchmark: how many WebRTC viewers of one 720p30 forum one node,
and two nodes (origin + edge), hold on this machine, load tester included.

    nice -n 10 python -m bench.scale                         # the full run (~25 min)
    nice -n 10 python -m bench.scale --hold 10 --steps 100,200 --kbps 1500 --nodes 1

For each bitrate (`--kbps`, the pre-encoded 720p30 H.264 + Opus file of
bench/media.py at that rate, with an IDR every `--gop` frames) and each
layout (`--nodes`: 1 = one node; 2 = an origin and an edge on one real
Redis, tests/cluster.py), real `forumcast serve` processes are started,
the file is uploaded to the (origin) node's media library (copied, not
converted: it is already what viewers play) and played out as the forum's
program (a recorded-talk playout: demux and packetize, no encode). Then,
for each viewer count of `--steps`, one `forumcast loadtest` run
(signaling/loadtest.py: light WHEP viewers in worker processes, counted
by streaming/rtp_count.py) against the node the viewers use (the edge
with two nodes): N viewers join over N / `--join-rate` s and stay
`--hold` s; the playout is restarted before each step, so the file never
ends inside one.

Per step: viewers joined (connected / receiving video and audio), loss
(RFC 3550 A.3 over the whole run), time to first video packet p50/p95
(from the viewer's offer; the server starts a viewer at the next
keyframe, so the GOP bounds it from below), join (offer to connected)
p95, received kb/s per viewer (median), each node's CPU (its process
tree, /proc) and the load tester's (coordinator + workers) in cores over
the hold window (from 1 s after the slowest join to the end, at least the
last 5 s; its length is printed), also per received packet for the
tester, the whole machine's busy cores,
the datagrams the kernel dropped on each node's UDP sockets (a full
receive buffer: a node that cannot keep up with its input, e.g. an edge's
pull of the origin), and the tester's receive path (C or Python). "held": every viewer joined
and received, loss < 1 %, TTFF p95 < 1 s, and the median viewer's rate
at least 90 % of the file's video rate (an overloaded node sends slower
without sequence gaps). Steps stop at the first that
does not hold (`--keep-going` runs them all).

`--profile-step N`: py-spy (pip install py-spy) records the node serving
the viewers for `--profile-seconds` inside step N's hold window; the
summary (bench/fanout.py's categories) is printed.

Everything started here is stopped and reaped on the way out (nodes,
Redis, the load tester's process group, py-spy), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import machine, procstat
from bench.media import FPS, ensure_media
from rooms.models import Role
from tests.cluster import Cluster, start_cluster
from tests.processes import RedisServer, start_redis
from tests.server_process import ServerProcess, start_server

FORUM = "digital-economy"
# placement must not send viewers away from a "full" node: the point is to find where it breaks
NODE_ENV = {"FORUMCAST_NODE_MAX_VIEWERS": "100000", "FORUMCAST_NODE_MAX_CPU": "1000"}
LOADTEST_START_S = 2.0  # signaling/loadtest.py starts its first viewer this long after launch
SETTLE_S = 3.0  # after the last viewer started: its join, before py-spy starts


@dataclass
class Layout:
    """The running nodes: `origin` plays the file, `viewers` is where viewers join."""

    nodes: dict[str, ServerProcess]
    origin: ServerProcess
    viewers: ServerProcess
    playout: str = ""  # the playout's source id


@dataclass
class StepResult:
    kbps: int
    nodes: int
    viewers: int
    report: dict[str, Any] = field(default_factory=dict)
    node_cores: dict[str, float] = field(default_factory=dict)
    tester_cores: float = float("nan")
    machine_cores: float = float("nan")
    window_s: float = 0.0
    failure: str = ""
    profile: str = ""
    edge_pulls: str = ""  # two nodes: the edge's pull of the origin, seen in the hold window
    hold: float = 0.0
    ramp: float = 0.0
    udp_drops: dict[str, int] = field(default_factory=dict)  # per node, the whole step

    @property
    def loss(self) -> float:
        return float(self.report.get("loss_ratio", float("nan")))

    @property
    def ttff_p95(self) -> float:
        value = self.report.get("first_video_ms", {}).get("p95")
        return float("nan") if value is None else float(value)

    @property
    def rx_pps(self) -> float:
        """Packets/s all viewers received in the hold window, estimated from the whole
        run's count (each viewer receives from its join to the end: on average
        hold + ramp / 2 seconds)."""
        seconds = self.hold + self.ramp / 2
        return self.report.get("received_packets", 0) / seconds if seconds else 0.0

    @property
    def tester_us_per_packet(self) -> float:
        """The tester's CPU per received packet in the hold window."""
        return 1e6 * self.tester_cores / self.rx_pps if self.rx_pps else float("nan")

    def server_us_per_packet(self, node: str) -> float:
        """A node's CPU per packet per viewer in the hold window (all of it, idle work included)."""
        cores = self.node_cores.get(node, float("nan"))
        return 1e6 * cores / self.rx_pps if self.rx_pps else float("nan")

    @property
    def held(self) -> bool:
        r = self.report
        return (not self.failure and r.get("connected") == self.viewers and r.get("receiving") == self.viewers
                and self.loss < 0.01 and self.ttff_p95 < 1000 and self.full_rate)

    @property
    def full_rate(self) -> bool:
        """The median viewer received at least 90 % of the file's video rate (audio and
        RTP headers come on top): an overloaded node that sends the program late, or
        slower, leaves no sequence gap, so loss alone does not see it."""
        median = self.report.get("kbps", {}).get("p50")
        return median is not None and median >= 0.9 * self.kbps


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@contextlib.asynccontextmanager
async def started(nodes: int) -> AsyncIterator[Layout]:
    """One node, or an origin and an edge on a fresh Redis; always stopped."""
    redis: RedisServer | None = None
    cluster: Cluster | None = None
    single: ServerProcess | None = None
    try:
        if nodes == 1:
            single = await asyncio.to_thread(start_server, NODE_ENV)
            yield Layout({"node": single}, single, single)
        else:
            redis = await asyncio.to_thread(start_redis)
            cluster = await asyncio.to_thread(start_cluster, redis.url, ("origin", "edge"), NODE_ENV)
            yield Layout(dict(cluster.nodes), cluster["origin"], cluster["edge"])
    finally:
        if single is not None:
            await asyncio.to_thread(single.cleanup)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        if redis is not None:
            await asyncio.to_thread(redis.stop)


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw: Any) -> Any:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw) as response:
        body = await response.json(content_type=None)
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {body}")
        return body


async def play(layout: Layout, media: Path) -> None:
    """Upload `media` to the origin's library, wait for its (copy) conversion, play it on air."""
    origin = layout.origin
    op = origin.token(Role.OPERATOR, [FORUM], "Bench operator")
    base = f"{origin.url}/api/forums/{FORUM}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        with media.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("file", f, filename=media.name, content_type="video/mp2t")
            job = (await call(http, "POST", f"{base}/media", op, data=form))["job"]
        deadline = time.monotonic() + 300
        while job["state"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the media job did not finish: {job}")
            await asyncio.sleep(0.5)
            job = await call(http, "GET", f"{base}/jobs/{job['id']}", op)
        if job["state"] != "done":
            raise RuntimeError(f"the media job failed: {job.get('error')}")
        started_playout = await call(http, "POST", f"{base}/playouts", op, json={"media": job["media"], "take": True})
        layout.playout = started_playout["playout"]["source_id"]
        print(f"  playout {layout.playout} on air at {origin.url} (video {job.get('processing', {}).get('video')})",
              flush=True)


async def restart_playout(layout: Layout) -> None:
    origin = layout.origin
    op = origin.token(Role.OPERATOR, [FORUM], "Bench operator")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await call(http, "POST", f"{origin.url}/api/forums/{FORUM}/playouts/{layout.playout}/restart", op)


async def edge_pulls(layout: Layout, at: float) -> str:
    """What the viewers' node pulls, in the hold window (`GET /api/edges`): the
    viewers must be served by the edge, not redirected to the origin."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    node = layout.viewers
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            body = await call(http, "GET", f"{node.url}/api/edges", node.token(Role.ADMIN))
    except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
        return f"could not ask {node.url}/api/edges: {exc}"
    return "; ".join(f"{p['forum_id']} from {p['whep_url']} {p['state']}" for p in body.get("pulls", [])) or "none"


def socket_inodes(pid: int) -> set[str]:
    """The inodes of a process's sockets (from its fd links)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    found.add(link[8:-1])
    return found


def udp_drops() -> dict[str, int]:
    """Socket inode -> datagrams the kernel dropped on it (receive buffer full), /proc/net/udp{,6}."""
    drops: dict[str, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                drops[fields[9]] = int(fields[-1])
    return drops


class CpuSampler:
    """Each node's process tree, the load tester's process tree and the machine, once a
    second; and the datagrams dropped on each node's UDP sockets (its receive buffers
    overflowing: a node that cannot keep up with its input)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.samples: list[tuple[float, dict[str, float], float, tuple[int, int]]] = []
        self.tester_pid = 0
        self._drops: dict[str, dict[str, int]] = {name: {} for name in layout.nodes}  # node -> inode -> drops
        self._before: dict[str, int] = {}

    def udp_drops(self) -> dict[str, int]:
        """Per node: datagrams dropped on its sockets while sampled (sockets closed in between
        keep their last count)."""
        return {name: sum(n - self._before.get(inode, 0) for inode, n in seen.items())
                for name, seen in self._drops.items()}

    def sample(self) -> None:
        table = udp_drops()
        first = not self.samples
        for name, node in self.layout.nodes.items():
            seen = self._drops[name]
            for inode in socket_inodes(node.process.pid):
                if inode in table:
                    seen[inode] = max(seen.get(inode, 0), table[inode])
                    if first:
                        self._before[inode] = table[inode]  # a socket older than the step: its drops so far
        nodes = {name: procstat.tree_cpu_seconds(node.process.pid) for name, node in self.layout.nodes.items()}
        tester = procstat.tree_cpu_seconds(self.tester_pid) if self.tester_pid else 0.0
        self.samples.append((time.monotonic(), nodes, tester, machine.busy_and_total_ticks()))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    def window(self, start: float, end: float) -> tuple[dict[str, float], float, float, float]:
        """(cores per node, tester cores, machine busy cores, seconds) between the samples
        nearest to `start` and `end`."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            inside = self.samples[-2:] if len(self.samples) >= 2 else []
        if len(inside) < 2:
            return {}, float("nan"), float("nan"), 0.0
        (t0, n0, c0, m0), (t1, n1, c1, m1) = inside[0], inside[-1]
        span = t1 - t0
        return ({name: (n1[name] - n0[name]) / span for name in n0}, (c1 - c0) / span,
                machine.busy_cores(m0, m1, os.cpu_count() or 1), span)


async def profile(pid: int, seconds: float, out: Path, logdir: Path) -> asyncio.subprocess.Process:
    log = (logdir / "py-spy.log").open("wb")
    return await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
        "--native", "--format", "raw", "--output", str(out), stdout=log, stderr=log, start_new_session=True)


async def run_step(layout: Layout, kbps: int, nodes: int, viewers: int, args: argparse.Namespace,
                   logdir: Path) -> StepResult:
    ramp = max(1.0, viewers / args.join_rate)
    result = StepResult(kbps, nodes, viewers, hold=args.hold, ramp=ramp)
    await restart_playout(layout)
    command = [sys.executable, "-m", "signaling.cli", "loadtest", "--url", layout.viewers.url, "--forum", FORUM,
               "--viewers", str(viewers), "--duration", str(args.hold), "--ramp", f"{ramp:.1f}",
               "--workers", str(args.workers), "--sample-every", str(args.sample_every), "--mint", "--json",
               "--server-pid", str(layout.viewers.process.pid), "--connect-timeout", str(args.connect_timeout)]
    env = {**os.environ, "FORUMCAST_TOKEN_SECRET": layout.origin.secret}  # --mint signs with it: not in argv
    if args.rx == "python":
        env["FORUMCAST_RX_PYTHON"] = "1"  # the fallback receive path, for comparison
    sampler = CpuSampler(layout)
    launched = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    sampler.tester_pid = proc.pid
    sampling = asyncio.create_task(sampler.run())
    hold_from = launched + LOADTEST_START_S + ramp + SETTLE_S
    hold_to = launched + LOADTEST_START_S + ramp + args.hold
    spy: asyncio.subprocess.Process | None = None
    raw = logdir / f"profile-{kbps}k-{nodes}n-{viewers}.txt"
    edges = asyncio.create_task(edge_pulls(layout, hold_from)) if nodes > 1 else None
    try:
        if args.profile_step == viewers and shutil.which("py-spy"):
            await asyncio.sleep(max(0.0, hold_from - time.monotonic()))
            seconds = min(args.profile_seconds, max(1.0, hold_to - time.monotonic() - 1))
            spy = await profile(layout.viewers.process.pid, seconds, raw, logdir)
        out, err = await asyncio.wait_for(proc.communicate(), ramp + args.hold + args.connect_timeout + 200)
        sampler.sample()
        if proc.returncode not in (0, 1):
            result.failure = f"loadtest exit {proc.returncode}: {err.decode(errors='replace')[-500:]}"
        else:
            result.report = json.loads(out.decode().strip().splitlines()[-1])
        if spy is not None:
            await asyncio.wait_for(spy.wait(), args.profile_seconds + 60)
        if edges is not None:
            result.edge_pulls = await edges
    except Exception as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    finally:
        sampling.cancel()
        if edges is not None:
            edges.cancel()
        for child in (proc, spy):
            if child is not None and child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)  # its own group: the workers too
                await child.wait()
    # the hold window opens once the slowest viewer has joined: joins cost both sides far more than packets
    join_max_s = (result.report.get("join_ms", {}).get("max") or SETTLE_S * 1000) / 1000
    opened = launched + LOADTEST_START_S + ramp + join_max_s + 1.0
    result.udp_drops = sampler.udp_drops()
    result.node_cores, result.tester_cores, result.machine_cores, result.window_s = sampler.window(
        min(opened, hold_to - 5.0), hold_to)
    if raw.exists():
        from bench.fanout import summarize_profile

        viewers_node = next(name for name, node in layout.nodes.items() if node is layout.viewers)
        result.profile = summarize_profile(raw, result.server_us_per_packet(viewers_node), top=15)
    return result


def line(r: StepResult) -> str:
    rep = r.report
    cores = " ".join(f"{name} {v:.2f}" for name, v in r.node_cores.items())
    return (f"{r.kbps:5d} {r.nodes:5d} {r.viewers:7d} | {fmt(rep.get('connected')):>6s}/{fmt(rep.get('receiving')):<6s} "
            f"| {fmt(100 * r.loss, 2):>6s} | {fmt(rep.get('first_video_ms', {}).get('p50')):>5s} "
            f"{fmt(rep.get('first_video_ms', {}).get('p95')):>5s} | {fmt(rep.get('join_ms', {}).get('p95')):>5s} "
            f"| {fmt(rep.get('kbps', {}).get('p50')):>5s} | {cores:18s} | {fmt(r.tester_cores, 2):>5s} "
            f"({fmt(r.tester_us_per_packet, 1):>4s} us/pkt) {fmt(r.window_s)} s | {fmt(r.machine_cores, 2):>5s} | {'yes' if r.held else 'no ':3s} "
            f"| {r.failure[:80]}")


HEADER = ("kb/s  nodes viewers | joined/recv   | loss % | TTFF p50 p95 ms | join p95 ms | rx kb/s "
          "| server cores (hold) | tester cores (per rx packet) window | machine | held |")


async def main_async(args: argparse.Namespace) -> int:
    steps = [int(n) for n in args.steps.split(",") if n.strip()]
    logdir = Path(tempfile.mkdtemp(prefix="forumcast-scale-"))
    print(f"forumcast scale benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; logs in {logdir}",
          flush=True)
    results: list[StepResult] = []
    for kbps in [int(k) for k in args.kbps.split(",")]:
        media = await asyncio.to_thread(ensure_media, args.media_seconds, None, kbps, args.gop)
        for nodes in [int(n) for n in args.nodes.split(",")]:
            print(f"\n{kbps} kb/s, {nodes} node(s): {media.name}", flush=True)
            async with started(nodes) as layout:
                await play(layout, media)
                idle = CpuSampler(layout)
                idle.sample()
                await asyncio.sleep(args.idle_seconds)
                idle.sample()
                cores, _, busy, _ = idle.window(0, float("inf"))
                print("  no viewers: " + ", ".join(f"{n} {c:.2f} cores" for n, c in cores.items())
                      + f" (machine {busy:.2f} busy)", flush=True)
                print("  " + HEADER, flush=True)
                for viewers in steps:
                    result = await run_step(layout, kbps, nodes, viewers, args, logdir)
                    results.append(result)
                    per_viewer = " ".join(f"{name} {fmt(result.server_us_per_packet(name), 1)}" for name in layout.nodes)
                    drops = " ".join(f"{name} {n}" for name, n in result.udp_drops.items())
                    print("  " + line(result) + f" server us/pkt/viewer: {per_viewer}; "
                          f"datagrams dropped on the nodes' UDP sockets: {drops}; "
                          f"rx {result.report.get('rx_path', '?')}; tester "
                          f"{result.report.get('client_cpu_ms_per_1000_packets', '-')} ms per 1000 pkts over the "
                          "whole run, joins included", flush=True)
                    if result.edge_pulls:
                        print(f"    edge pulls: {result.edge_pulls}", flush=True)
                    if result.profile:
                        print(result.profile, flush=True)
                    if not result.held and not args.keep_going:
                        break
    print("\n" + HEADER)
    for r in results:
        print(line(r))
    for kbps in sorted({r.kbps for r in results}, reverse=True):
        for nodes in sorted({r.nodes for r in results}):
            held = [r.viewers for r in results if r.kbps == kbps and r.nodes == nodes and r.held]
            print(f"largest held at {kbps} kb/s with {nodes} node(s): {max(held) if held else 'none'} "
                  f"(of steps {','.join(map(str, steps))}, hold {args.hold:.0f} s)")
    (logdir / "results.json").write_text(json.dumps(
        [{"kbps": r.kbps, "nodes": r.nodes, "viewers": r.viewers, "held": r.held, "node_cores": r.node_cores,
          "tester_cores": r.tester_cores, "tester_us_per_packet": r.tester_us_per_packet,
          "machine_cores": r.machine_cores, "udp_drops": r.udp_drops, "failure": r.failure,
          **{k: v for k, v in r.report.items() if k != "per_viewer"}} for r in results], indent=1))
    print(f"results: {logdir / 'results.json'}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100,200,400,600,800,1000", help="viewer counts, comma-separated")
    parser.add_argument("--hold", type=float, default=60.0, help="s every viewer stays after the last one started")
    parser.add_argument("--kbps", default="1500,600", help="video bitrates of the played file, comma-separated")
    parser.add_argument("--nodes", default="1,2", help="1: one node; 2: origin + edge, viewers on the edge")
    parser.add_argument("--join-rate", type=float, default=25.0, help="viewers started per second")
    parser.add_argument("--workers", type=int, default=2, help="load tester worker processes")
    parser.add_argument("--sample-every", type=int, default=50, help="SRTP-verify one RTP packet in N")
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    parser.add_argument("--gop", type=int, default=FPS // 2, help="frames between IDRs in the played file")
    parser.add_argument("--media-seconds", type=int, default=150, help="length of the file (restarted each step)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one did not hold")
    parser.add_argument("--rx", choices=("c", "python"), default="c",
                        help="the load tester's receive path (c: when built; python: FORUMCAST_RX_PYTHON=1)")
    parser.add_argument("--profile-step", type=int, default=0, help="py-spy the viewers' node at this viewer count")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.hold + max(int(n) for n in args.steps.split(",")) / args.join_rate > args.media_seconds - 10:
        parser.error("--media-seconds must outlast the longest step (ramp + hold)")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
