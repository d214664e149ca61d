"""Issue 4's fan-out benchmark: forumcast vs the aiortc-only baseline, one run, one machine.

For each viewer count and each server: a fresh server process (and, for
forumcast, a publisher process sending the pre-encoded 720p30 1.5 Mbps
file over WebRTC), an idle measurement (publisher on, zero viewers), then
one light-viewer process connecting N viewers, warming up, and measuring
the server's CPU (its whole process tree, from /proc) against the RTP
packets all viewers received in the same window:

    us/pkt/viewer = server CPU in the window / packets received by all viewers
    viewers/core  = 1e6 / (us/pkt/viewer * packets/s per viewer)

    python -m bench.fanout                      # 10,50,100,300 viewers, both servers
    python -m bench.fanout --viewers 10,50 --seconds 5 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pstats
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pylibsrtp

from bench import floor, procstat
from bench.children import Child, start_exec, start_module
from bench.media import ensure_media
from tests.processes import free_port

SERVERS = ("forumcast", "baseline")
ONE_PORT = "forumcast-1port"  # forumcast with udp_port: all viewers on one shared socket
FORUMCAST_KINDS = {
    # the default: the C batch (protect + send per viewer in one call per packet), a socket per viewer
    "forumcast": [],
    # the C batch on one shared socket: one sendmmsg per packet for all viewers
    ONE_PORT: ["--udp-port"],
    # the per-packet Python path (fanout_batch off), socket per viewer / one port
    "forumcast-py": ["--no-batch"],
    "forumcast-1port-py": ["--udp-port", "--no-batch"],
}
MEDIA_SECONDS = 300  # each server lives well under this: MediaPlayer must not loop


@dataclass
class Run:
    kind: str
    viewers: int
    report: dict[str, Any] = field(default_factory=dict)
    idle_cpu: float = 0.0  # cores used with the publisher on and no viewer
    failure: str = ""

    @property
    def packets(self) -> int:
        return int(self.report.get("packets", 0))

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.report.get("server_cpu_s", 0.0) / self.packets if self.packets else float("nan")

    @property
    def pps(self) -> float:
        return float(self.report.get("pps_median", 0.0))

    def viewers_per_core(self, stream_pps: float) -> float:
        """At the stream's full packet rate: a starved server must not look cheaper per viewer."""
        cost = self.us_per_packet * stream_pps
        return 1e6 / cost if cost > 0 else float("nan")

    @property
    def server_cores(self) -> float:
        window = self.report.get("window_s", 0.0)
        return self.report.get("server_cpu_s", 0.0) / window if window else 0.0

    @property
    def client_cores(self) -> float:
        window = self.report.get("window_s", 0.0)
        return self.report.get("client_cpu_s", 0.0) / window if window else 0.0

    def problems(self) -> list[str]:
        found = [self.failure] if self.failure else []
        r = self.report
        if self.failure or not r:
            return found or ["no report"]
        if r.get("auth_failures", 0):
            found.append(f"{r['auth_failures']} SRTP auth failures")
        if not r.get("auth_checked", 0):
            found.append("no packet had its SRTP auth checked")
        if r.get("error_count", 0):
            found.append(f"{r['error_count']} viewers failed to connect: {r['errors'][:2]}")
        if r.get("receiving", 0) < self.viewers:
            found.append(f"only {r.get('receiving', 0)}/{self.viewers} viewers received video+audio")
        if r.get("silent_viewers", 0):
            found.append(f"{r['silent_viewers']} viewers received nothing in the window")
        return found


async def wait_http(url: str, server: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                raise RuntimeError(f"{server.name} exited: {server.log_tail()}")
            try:
                async with http.get(f"{url}/stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer on {url}: {server.log_tail()}")


async def idle_cores(pid: int, seconds: float) -> float:
    before, t0 = procstat.tree_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (procstat.tree_cpu_seconds(pid) - before) / (time.monotonic() - t0)


async def run_one(kind: str, viewers: int, args: argparse.Namespace, media: Path, logdir: Path,
                  profile_out: Path | None = None) -> Run:
    run = Run(kind, viewers)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lifetime = str(MEDIA_SECONDS - 20)
    children: list[Child] = []
    tag = f"{kind}-{viewers}{'-profile' if profile_out else ''}"
    spy = profile_out is not None and shutil.which("py-spy") is not None
    # without py-spy, cProfile inside the server (slower, Python frames only)
    cprofile = ["--cprofile", str(logdir / "forumcast.pstats")] if profile_out is not None and not spy else []
    try:
        if kind in FORUMCAST_KINDS:
            flags = [f for flag in FORUMCAST_KINDS[kind]
                     for f in ([flag, str(free_port(socket.SOCK_DGRAM))] if flag == "--udp-port" else [flag])]
            server = await start_module(f"{tag}-server", "bench.forumcast_server",
                                        ["--port", str(port), "--lifetime", lifetime, *flags, *cprofile], logdir)
        else:
            server = await start_module(f"{tag}-server", "bench.baseline_server",
                                        ["--port", str(port), "--media", str(media), "--lifetime", lifetime], logdir)
        children.append(server)
        await wait_http(url, server)
        if kind in FORUMCAST_KINDS:
            publisher = await start_module(f"{tag}-publisher", "bench.publisher",
                                           ["--url", url, "--media", str(media), "--lifetime", lifetime], logdir)
            children.append(publisher)
            await publisher.next_json(30)
            await asyncio.sleep(1.0)  # first keyframe in, source live
        run.idle_cpu = await idle_cores(server.pid, args.idle_seconds)
        viewer = await start_module(f"{tag}-viewers", "bench.light_viewer", [
            "--url", url, "--viewers", str(viewers), "--server-pid", str(server.pid),
            "--warmup", str(args.warmup), "--seconds", str(args.seconds),
            "--sample-every", str(args.sample_every), "--rr-interval", str(args.rr_interval),
        ], logdir)
        children.append(viewer)
        budget = 60 + viewers * 0.5 + args.warmup + args.seconds
        window = await viewer.next_json(budget)
        if window.get("event") == "window" and spy and profile_out is not None:
            children.append(await start_exec(f"{tag}-py-spy", [
                # --native: time inside libsrtp and the kernel's sendto shows under its C frames
                "py-spy", "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
                "--rate", "200", "--native", "--format", "raw", "--output", str(profile_out),
            ], logdir))
        run.report = window if window.get("event") != "window" else await viewer.next_json(budget)
        if spy:
            await asyncio.wait_for(children[-1].process.wait(), args.seconds + 30)
    except Exception as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
    finally:
        for child in reversed(children):
            await child.stop()
    return run


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> '-'


def table(runs: dict[tuple[str, int], Run], counts: list[int], stream_pps: dict[str, float]) -> str:
    head = ("viewers | forumcast us/pkt/viewer | viewers/core | baseline us/pkt/viewer | viewers/core "
            "| ratio | rx pkt/s/viewer (fc / bl) | auth failures (fc / bl)")
    lines = [head, "-" * len(head)]
    for n in counts:
        fc, bl = runs.get(("forumcast", n)), runs.get(("baseline", n))
        ratio = bl.us_per_packet / fc.us_per_packet if fc and bl and fc.packets and bl.packets else float("nan")
        lines.append(" | ".join([
            f"{n:7d}",
            fmt(fc.us_per_packet, 2) if fc else "-", fmt(fc.viewers_per_core(stream_pps["forumcast"]), 0) if fc else "-",
            fmt(bl.us_per_packet, 2) if bl else "-", fmt(bl.viewers_per_core(stream_pps["baseline"]), 0) if bl else "-",
            fmt(ratio, 2) + "x",
            f"{fmt(fc.pps) if fc else '-'} / {fmt(bl.pps) if bl else '-'}",
            f"{fc.report.get('auth_failures', '-') if fc else '-'} / {bl.report.get('auth_failures', '-') if bl else '-'}",
        ]))
    return "\n".join(lines)


def details(runs: dict[tuple[str, int], Run], stream_pps: dict[str, float]) -> str:
    head = ("server    viewers | server cores (user+sys) | idle cores | client cores | machine busy | "
            "rx pps min/median | video+audio pps | source pps | SRTP checked | connect s | notes")
    lines = [head, "-" * len(head)]
    for (kind, n), run in runs.items():
        r = run.report
        notes = run.problems()
        if run.server_cores > 0.9:
            notes.append("server CPU-bound (one core is all a Python event loop gets)")
        busy = r.get("machine_busy_cores", 0.0)
        if busy > 0.9 * (os.cpu_count() or 1):
            notes.append(f"machine saturated ({busy:.2f} of {os.cpu_count()} cores busy): the server could get no more CPU")
        reference_pps = stream_pps.get(kind, 0.0)
        if reference_pps and run.pps < 0.95 * reference_pps:
            notes.append(f"receiving {100 * run.pps / reference_pps:.0f}% of the stream's packets")
        window = r.get("window_s") or float("nan")
        source_pps = r.get("server_stats_delta", {}).get("packets_received", float("nan")) / window
        lines.append(" | ".join([
            f"{kind:9s} {n:7d}",
            f"{fmt(run.server_cores, 2)} ({fmt(r.get('server_user_s', 0) / window, 2)}+{fmt(r.get('server_sys_s', 0) / window, 2)})",
            fmt(run.idle_cpu, 3), fmt(run.client_cores, 2),
            fmt(r.get("machine_busy_cores", float("nan")), 2), 
            f"{fmt(r.get('pps_min', float('nan')))}/{fmt(run.pps)}",
            f"{fmt(r.get('video_pps', float('nan')))}+{fmt(r.get('audio_pps', float('nan')))}",
            fmt(source_pps), str(r.get("auth_checked", "-")), fmt(r.get("connect_s", float("nan"))),
            "; ".join(notes) or "ok",
        ]))
    lines.append("idle cores: server CPU with the publisher on and no viewer (already inside each window's total); "
                 "the baseline's is 0 because its MediaPlayer reads the file only once a viewer subscribes")
    lines.append("machine busy: all processes on the machine in the window, this benchmark's and everyone else's")
    return "\n".join(lines)


# py-spy --native cannot tell a thread waiting in the kernel from one working there:
# stacks ending in (or passing through) these waits are idle, not cost
_IDLE_MARKERS = ("epoll_wait", "Condition.wait", "PyThread_acquire_lock_timed", "select.poll")


# where a busy sample's time goes, first match wins (substrings of the collapsed stack)
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fan-out: kernel sendto (on lo it includes the receiver's UDP stack)", ("Downtrack.forward (", "sock_send")),
    ("fan-out: SRTP protect (pylibsrtp + libsrtp)", ("Downtrack.forward (", "srtp_protect")),
    ("fan-out: Python per viewer (header rewrite, checks, counters)", ("Downtrack.forward (",)),
    ("fan-out: the bus's loop over viewers (outside forward)", ("Lane.on_packet",)),
    ("RTCP in (viewers' receiver reports)", ("_handle_rtcp_data",)),
    ("RTCP in (viewers' receiver reports)", ("unprotect_rtcp",)),
    ("publisher ingest (DTLS pump, SRTP unprotect, aiortc receiver)", ("RTCDtlsTransport._recv_next",)),
    ("RTCP out (sender and receiver reports)", ("_run_rtcp",)),
    ("RTCP out (sender and receiver reports)", ("update_sender_report",)),
    ("ICE consent (STUN checks in and out)", ("query_consent",)),
    ("ICE consent (STUN checks in and out)", ("request_received",)),
    ("socket reads via aioice (each datagram parsed as STUN first)", ("StunProtocol.datagram_received",)),
    ("MediaPlane housekeeping", ("_run_housekeeping",)),
    ("peer connection setup/teardown", ("RTCPeerConnection.",)),
    ("garbage collector", ("gc_collect",)),
)


def _category(stack: str) -> str:
    for name, needles in _CATEGORIES:
        if all(needle in stack for needle in needles):
            return name
    return "event loop and other"


def _frame_name(frame: str) -> str:
    name, _, where = frame.partition(" (")
    source = where.split(":")[0].rstrip(")").split("/")[-1]
    return f"{name} ({source})" if not name.startswith("0x") else f"[unresolved] ({source})"


def summarize_profile(raw: Path, us_per_packet: float = float("nan"), top: int = 25) -> str:
    """py-spy's collapsed stacks -> where the busy samples are, self and inclusive,
    also as microseconds of the run's us/pkt/viewer."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if any(marker in stack for marker in _IDLE_MARKERS):
            idle += count
            continue
        busy += count
        categories[_category(stack)] += count
        frames = [_frame_name(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not busy:
        return f"profile empty: {raw}"

    def row(name: str, count: int) -> str:
        share = count / busy
        return f"  {100 * share:5.1f}%  {fmt(share * us_per_packet, 2):>5s} us  {name}"

    out = [f"{busy} busy samples of forumcast's server (py-spy --native, 200 Hz; {idle} idle-wait samples left out);",
           f"us = share of the profiled run's {fmt(us_per_packet, 2)} us/pkt/viewer (profiling itself adds some)",
           "", "where the time goes:"]
    out += [row(name, c) for name, c in categories.most_common()]
    out += ["", "self time:"]
    out += [row(name, c) for name, c in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [row(name, c) for name, c in inclusive.most_common(top)]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.viewers.split(",") if n.strip()]
    servers = [s for s in args.servers.split(",") if s]
    media = ensure_media(MEDIA_SECONDS)
    logdir = Path(tempfile.mkdtemp(prefix="forumcast-fanout-"))
    print(f"media {media}; child logs in {logdir}", flush=True)
    runs: dict[tuple[str, int], Run] = {}
    for n in counts:
        for kind in servers:  # interleaved, so both see the same neighbours' noise
            started = time.monotonic()
            run = runs[(kind, n)] = await run_one(kind, n, args, media, logdir)
            print(f"  {kind:9s} {n:4d} viewers: {fmt(run.us_per_packet, 2)} us/pkt/viewer, "
                  f"server {fmt(run.server_cores, 2)} cores, client {fmt(run.client_cores, 2)} cores, "
                  f"{fmt(run.pps)} pkt/s/viewer ({time.monotonic() - started:.0f} s) "
                  f"{'; '.join(run.problems())}", flush=True)
    # each server's full stream rate: what its viewers get when it is not starved (smallest
    # count); forumcast forwards the publisher's packetization, the baseline packetizes itself
    reference = {kind: runs[(kind, min(counts))].pps if (kind, min(counts)) in runs else 0.0
                 for kind in (*SERVERS, *FORUMCAST_KINDS)}
    print(f"\nstream (720p30 H.264 ~1.5 Mbps + Opus 20 ms), RTP packets/s per viewer: "
          f"forumcast {fmt(reference['forumcast'])}, baseline {fmt(reference['baseline'])}; "
          "viewers/core = 1e6 / (us/pkt/viewer * that rate)")
    print(table(runs, counts, reference))
    for n in counts:
        fc, one = runs.get(("forumcast", n)), runs.get((ONE_PORT, n))
        if fc and one and fc.packets and one.packets:
            print(f"one UDP port, {n} viewers: {one.us_per_packet:.2f} us/pkt/viewer against "
                  f"{fc.us_per_packet:.2f} with a socket per viewer ({one.us_per_packet / fc.us_per_packet:.2f}x)")
    print()
    print(details(runs, reference))
    (logdir / "runs.json").write_text(json.dumps(
        [{"server": k, "viewers": n, "idle_cores": r.idle_cpu, "failure": r.failure, **r.report}
         for (k, n), r in runs.items()], indent=1))
    # the floor in the same run: what sendto and SRTP protect cost alone on this machine now
    sendto_us = floor.sendto_us()  # blocks the loop ~1 s, with no child running: nothing to serve
    send_us = floor.sendto_us(connected=True)  # what the per-packet path does: connected sockets
    protect_us = floor.protect_us(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    c_connected, c_shared = floor.c_batch_us(shared=False), floor.c_batch_us(shared=True)
    py_floor = send_us + protect_us
    print(f"\nfloor now (python -m bench.floor): send on a connected socket on lo {send_us:.2f} us "
          f"(sendto {sendto_us:.2f}) + SRTP AES-GCM protect {protect_us:.2f} us = "
          f"{py_floor:.2f} us per packet per viewer from Python")
    if c_connected is not None and c_shared is not None:
        print(f"C floor (header + protect + send in C, 300 viewers, no lane): connected send() "
              f"{c_connected:.2f} us, one socket + sendmmsg {c_shared:.2f} us")
    cheapest = min(x for x in (py_floor, c_connected, c_shared) if x is not None)
    kinds = [k for k in FORUMCAST_KINDS if any((k, n) in runs for n in counts)]
    if kinds:
        print(f"\nforumcast's send paths against the cheapest floor ({cheapest:.2f} us):")
        print("viewers | " + " | ".join(f"{k} us (x floor)" for k in kinds))
        for n in counts:
            cells = []
            for k in kinds:
                r = runs.get((k, n))
                cells.append(f"{r.us_per_packet:.2f} ({r.us_per_packet / cheapest:.2f}x)" if r and r.packets else "-")
            print(f"{n:7d} | " + " | ".join(cells))
    if args.profile:
        raw = logdir / "forumcast-profile.txt"
        print(f"\nprofiling forumcast's server at {args.profile_viewers} viewers (py-spy) ...", flush=True)
        prof = await run_one("forumcast", args.profile_viewers, args, media, logdir, profile_out=raw)
        if prof.problems():
            print(f"profile run problems: {prof.problems()}")
        if raw.exists():
            summary = summarize_profile(raw, prof.us_per_packet)
            (logdir / "forumcast-profile-summary.txt").write_text(summary)
            print(summary)
            print(f"\nraw stacks: {raw}")
        elif (logdir / "forumcast.pstats").exists():
            out = io.StringIO()
            pstats.Stats(str(logdir / "forumcast.pstats"), stream=out).sort_stats("tottime").print_stats(25)
            (logdir / "forumcast-profile-summary.txt").write_text(out.getvalue())
            print("py-spy not found (pip install py-spy): cProfile of the whole server process, by own time\n"
                  + out.getvalue())
    broken = [f"{kind} {n}: {p}" for (kind, n), run in runs.items() for p in run.problems()]
    if broken:
        print("\nFAILED:\n  " + "\n  ".join(broken))
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", default="10,50,100,300", help="comma-separated viewer counts")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated: baseline, {', '.join(FORUMCAST_KINDS)} "
                             f"({ONE_PORT}: every peer on one UDP port; -py: the per-packet Python path)")
    parser.add_argument("--seconds", type=float, default=12.0, help="measurement window per run")
    parser.add_argument("--warmup", type=float, default=4.0, help="after all viewers receive")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--sample-every", type=int, default=50, help="verify SRTP auth of 1 in K packets")
    parser.add_argument("--rr-interval", type=float, default=1.0, help="viewer receiver reports, s (0: none)")
    parser.add_argument("--profile", action="store_true", help="also profile forumcast's server with py-spy")
    parser.add_argument("--profile-viewers", type=int, default=100)
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
