"""`forumcast loadtest`: light WebRTC viewers against a running node, over WHEP.

    forumcast loadtest --url http://127.0.0.1:8080 --forum ai --viewers 200 \\
        --duration 60 --ramp 20 [--workers 2] [--mint | --token T] [--json]

Each viewer POSTs a recvonly offer to `/whep/{forum}` (RFC 9725), completes
ICE and DTLS like any client and is then counted off its socket by
streaming/light_viewer.py (one reader thread per worker process, no asyncio
per packet; sampled packets SRTP-verified); the workers are
`python -m streaming.load_viewers` processes, this module only coordinates. Viewers start evenly over
`--ramp` seconds and all stop `--duration` seconds after the last one
started; they are spread over `--workers` processes. Each viewer DELETEs
its session at the end.

Tokens: `--token` (or $FORUMCAST_TOKEN, which keeps it out of argv) for
every viewer, but a viewer token holds `seats_per_token` seats; `--mint`
signs one viewer token per light viewer with this machine's token secret
(the server's --data-dir / $FORUMCAST_TOKEN_SECRET, as `forumcast token`);
neither: no token (a public event). Tokens reach the workers on stdin.

Report (text, or one JSON object with --json): join time (offer to
connected) and time to first video packet percentiles in ms, per viewer
received kb/s and loss (RFC 3550 A.3 from the sequence numbers), SRTP
samples checked/failed, the server's CPU (process tree, from /proc)
when it runs on this machine, the load workers' own CPU (also per 1,000
packets received) and their receive path (`rx_path`: C, streaming._rtp_rx,
or the Python fallback; streaming/rtp_count.py), and with --mint the node's own counts over
the run from /metrics (source packets received, packets sent, frames dropped for backed-up
viewers, retransmissions, refused sends): where packets were lost, at
ingest, in the server or on the path.

Exit codes: 0 every viewer joined and received video and audio with no
SRTP failure; 1 the run finished but some viewers did not; 2 it could not
run (bad arguments, server unreachable, unknown forum, token refused).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import sys
import time
import urllib.parse
from typing import Any

import aiohttp

from signaling import procstat
from streaming.load_viewers import ViewerResult, error_text

EXIT_OK, EXIT_VIEWERS_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
WORKER_GRACE_S = 90.0  # beyond ramp + duration + connect timeout, before a worker is killed


class LoadtestError(Exception):
    """The run cannot start; the message says why (exit code 2)."""


# --- the coordinator ----------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1)}


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _preflight(url: str, forum: str, token: str | None) -> None:
    """Raise LoadtestError unless the node answers, knows the forum and
    accepts the token (a POST with a wrong content type: 415 means the
    token passed, and nothing is created)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            async with http.get(f"{url}/healthz") as response:
                if response.status != 200:
                    raise LoadtestError(f"{url} is not a forumcast node (/healthz answered {response.status})")
            async with http.get(f"{url}/api/forums/{urllib.parse.quote(forum, safe='')}") as response:
                if response.status == 404:
                    raise LoadtestError(f"{url} has no forum {forum!r}")
            headers = {"Content-Type": "text/plain"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            async with http.post(f"{url}/whep/{urllib.parse.quote(forum, safe='')}", data=b"-",
                                 headers=headers) as response:
                if response.status != 415:
                    raise LoadtestError("the node refused the viewers' token: WHEP "
                                        + error_text(response.status, await response.text()))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LoadtestError(f"cannot reach {url}: {exc or type(exc).__name__}") from None


SERVER_COUNTERS = ("forumcast_source_packets_received_total", "forumcast_packets_out_total",
                   "forumcast_viewer_dropped_frames_total", "forumcast_retransmitted_packets_total",
                   "forumcast_viewer_send_errors")


async def _server_counters(url: str, admin_token: str | None) -> dict[str, float]:
    """The node's outgoing counters from /metrics ({} without an admin
    token or when it does not answer): tells the server's drops from the
    network's and the load tester's."""
    if admin_token is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_token}"}) as response:
                if response.status != 200:
                    return {}
                text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in SERVER_COUNTERS:  # summed over labels (every source of the node)
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def _tokens(args: argparse.Namespace, count: int, lifetime_s: float) -> tuple[list[str | None], str | None]:
    """One token per viewer, and an admin token for /metrics when minting."""
    token = args.token or os.environ.get("FORUMCAST_TOKEN") or None
    if not args.mint:
        return [token] * count, None
    if token:
        raise LoadtestError("--mint and --token: choose one")
    from config.settings import load_settings
    from rooms.models import Role
    from rooms.tokens import TokenService

    settings = load_settings(None, data_dir=args.data_dir)
    secret = settings.token_secret
    if not secret:
        if not settings.secret_path.exists():
            raise LoadtestError(f"--mint: no token secret at {settings.secret_path} "
                                "(run where the server runs, with its --data-dir)")
        secret = settings.secret_path.read_text().strip()
    tokens = TokenService(secret)
    return ([tokens.issue(Role.VIEWER, [args.forum], f"loadtest {i}", ttl_seconds=lifetime_s + 600)
             for i in range(count)],
            tokens.issue(Role.ADMIN, None, "loadtest metrics", ttl_seconds=lifetime_s + 600))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; LoadtestError when it cannot start."""
    url = args.url.rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LoadtestError(f"--url={args.url!r}: not an http(s) URL")
    if args.viewers < 1 or args.duration <= 0 or args.ramp < 0 or args.workers < 1:
        raise LoadtestError("--viewers and --workers must be >= 1, --duration > 0, --ramp >= 0")
    lifetime = args.ramp + args.duration + args.connect_timeout
    tokens, admin_token = _tokens(args, args.viewers, lifetime)
    await _preflight(url, args.forum, tokens[0])
    local = _is_local(parsed.hostname)
    ice = args.ice_address or (["127.0.0.1"] if local else [])
    server_pid = args.server_pid or (procstat.listening_pid(parsed.port or 80) if local else None)

    start = time.time() + 2.0  # the workers import aiortc first
    step = args.ramp / args.viewers
    plan = [{"id": f"v{i}", "token": tokens[i], "start_at": start + i * step} for i in range(args.viewers)]
    end_at = start + args.ramp + args.duration
    workers = min(args.workers, args.viewers)
    counters0 = await _server_counters(url, admin_token)
    cpu0 = procstat.tree_cpu_seconds(server_pid) if server_pid else 0.0
    t0 = time.monotonic()
    procs = []
    for w in range(workers):
        spec = {"url": url, "forum": args.forum, "viewers": plan[w::workers], "end_at": end_at,
                "ice_addresses": ice, "sample_every": args.sample_every, "connect_timeout": args.connect_timeout}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streaming.load_viewers",  # a process: the packet path is never imported here
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        procs.append((proc, json.dumps(spec).encode()))
    outputs: list[dict[str, Any]] = []
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate(spec) for proc, spec in procs)),
            end_at - time.time() + args.connect_timeout + WORKER_GRACE_S)
    finally:
        for proc, _ in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    elapsed = time.monotonic() - t0
    cpu1 = procstat.tree_cpu_seconds(server_pid) if server_pid else 0.0
    counters1 = await _server_counters(url, admin_token)
    for (proc, _), (stdout, _) in zip(procs, results):
        if proc.returncode != 0 or not stdout.strip():
            raise LoadtestError(f"a load worker failed (exit {proc.returncode})")
        outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    viewers = [ViewerResult(**v) for out in outputs for v in out["viewers"]]
    viewers.sort(key=lambda v: int(v.viewer_id[1:]))
    ok = [v for v in viewers if v.ok]
    total_expected = sum(v.expected for v in viewers)
    return {
        "url": url, "forum": args.forum, "viewers": args.viewers, "workers": workers,
        "duration_s": args.duration, "ramp_s": args.ramp,
        "connected": sum(1 for v in viewers if v.joined_ms is not None),
        "receiving": len(ok),
        "join_ms": _percentiles([v.joined_ms for v in viewers if v.joined_ms is not None]),
        "first_video_ms": _percentiles([v.first_video_ms for v in viewers if v.first_video_ms is not None]),
        "kbps": _percentiles([v.kbps for v in viewers if v.joined_ms is not None]),
        "loss_ratio": (sum(v.lost for v in viewers) / total_expected) if total_expected else 0.0,
        "srtp_checked": sum(v.checked for v in viewers),
        "srtp_failures": sum(v.auth_failures for v in viewers),
        "server_pid": server_pid,
        "server_cpu_cores": round((cpu1 - cpu0) / elapsed, 3) if server_pid else None,
        "client_cpu_s": round(sum(out["cpu_s"] for out in outputs), 2),
        "received_packets": sum(v.packets for v in viewers),
        # the workers' receive path (C extension or Python fallback) and its cost
        "rx_path": ", ".join(sorted({str(out.get("rx_path", "?")) for out in outputs})),
        "client_cpu_ms_per_1000_packets": round(1e6 * sum(out["cpu_s"] for out in outputs)
                                                / max(1, sum(v.packets for v in viewers)), 3),
        # the node's own counts over the run (/metrics; with --mint), all its viewers
        "server": {name.removesuffix("_total").removeprefix("forumcast_"): counters1[name] - counters0[name]
                   for name in SERVER_COUNTERS if name in counters0 and name in counters1},
        "per_viewer": [
            {"id": v.viewer_id, "ok": v.ok, "error": v.error, "join_ms": v.joined_ms,
             "first_video_ms": v.first_video_ms, "kbps": round(v.kbps, 1),
             "loss_ratio": round(v.loss_ratio, 5), "packets": v.packets}
            for v in viewers
        ],
    }


def _text(report: dict[str, Any]) -> str:
    def pct(p: dict[str, float | None]) -> str:
        return " ".join(f"{k} {v}" for k, v in p.items())

    lines = [
        f"forumcast loadtest: {report['viewers']} viewers of {report['forum']} at {report['url']} "
        f"({report['workers']} workers, ramp {report['ramp_s']} s, then {report['duration_s']} s)",
        f"connected {report['connected']}, receiving video+audio {report['receiving']}",
        f"join ms:             {pct(report['join_ms'])}",
        f"first video ms:      {pct(report['first_video_ms'])}",
        f"received kb/s:       {pct(report['kbps'])}",
        f"loss (all viewers):  {report['loss_ratio']:.4%}",
        f"SRTP sampled:        {report['srtp_checked']} checked, {report['srtp_failures']} failed",
        ("server CPU:          " + (f"{report['server_cpu_cores']} cores (pid {report['server_pid']}, "
                                    "process tree, /proc)" if report["server_pid"] else "not local")),
        f"load tester CPU:     {report['client_cpu_s']} s ({report['client_cpu_ms_per_1000_packets']} ms "
        f"per 1,000 packets received, joins included; receive path {report['rx_path']})",
        f"packets received:    {report['received_packets']}"
        + ("; the node sent " + ", ".join(f"{k} {v:.0f}" for k, v in report["server"].items()) + " (/metrics)"
           if report["server"] else ""),
        "per viewer: id join_ms first_video_ms kb/s loss packets [error]",
    ]
    for v in report["per_viewer"]:
        lines.append(f"  {v['id']} {v['join_ms'] and round(v['join_ms'])} "
                     f"{v['first_video_ms'] and round(v['first_video_ms'])} {v['kbps']} "
                     f"{v['loss_ratio']:.4f} {v['packets']} {v['error']}".rstrip())
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the node, e.g. http://127.0.0.1:8080")
    parser.add_argument("--forum", required=True, help="forum id to watch")
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds after the last viewer started")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which viewers start")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--token", help="viewer token for every viewer ($FORUMCAST_TOKEN keeps it out of argv)")
    parser.add_argument("--mint", action="store_true", help="one viewer token per viewer, signed with the local secret")
    parser.add_argument("--ice-address", action="append", metavar="IP",
                        help="gather viewer candidates here only (default: 127.0.0.1 for a loopback URL)")
    parser.add_argument("--server-pid", type=int, help="read this process tree's CPU (default: the local listener)")
    parser.add_argument("--connect-timeout", type=float, default=20.0, metavar="S")
    parser.add_argument("--sample-every", type=int, default=50, help="SRTP-verify one RTP packet in N")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def cmd_loadtest(args: argparse.Namespace) -> int:
    """The CLI handler; LoadtestError propagates for the CLI to print (exit 2)."""
    report = asyncio.run(run(args))
    print(json.dumps(report) if args.json else _text(report), flush=True)
    return EXIT_OK if report["receiving"] == report["viewers"] else EXIT_VIEWERS_FAILED
