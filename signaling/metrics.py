"""GET /metrics: the node in the Prometheus text exposition format
(prometheus-client; format 0.0.4).

Series (labels in braces):
- forumcast_viewers{forum}: WebRTC viewers connected to this node.
- forumcast_program_info{forum,source}: 1 for the source the program bus
  carries ("" when nothing is on air, i.e. before the slate is up).
- forumcast_viewer_worst_loss_ratio{forum}: the highest fraction lost a
  viewer's RTCP receiver report gave (RFC 3550 6.4.1), 0..1.
- forumcast_packets_out_total, forumcast_bytes_out_total: RTP packets and
  bytes (header + payload, before SRTP) sent to viewers since start;
  forumcast_retransmitted_packets_total (NACK answers among them) and
  forumcast_viewer_dropped_frames_total (frames a backed-up viewer skipped),
  forumcast_viewer_send_errors (refused sends, connected viewers only).
- forumcast_source_packets_received_total{forum,source,kind,source_kind}
- forumcast_source_bitrate_kbps / _loss_ratio / _jitter_ms
  {forum,source,kind,source_kind}: over the last 2 s (plane_snapshot.py).
- forumcast_publishers, forumcast_viewers_total_connected: peers.
- forumcast_event_loop_lag_seconds (histogram) and
  forumcast_event_loop_lag_max_seconds: how late a 0.25 s timer fired,
  the worst since the previous scrape.
- process_cpu_seconds_total, process_resident_memory_bytes ...: the
  library's ProcessCollector (from /proc): this Python process only.
- forumcast_node_cpu_seconds_total: the node's CPU, its ffmpeg children
  (encoders, restreams, recorders, venue legs) included, live and reaped
  (signaling/procstat.py): most of a forum's cost with outputs is there.

The plane's figures are read by a custom Collector at scrape time from the
counters the packet path already keeps: no metric is touched per packet.

Who may read it: an admin token (`Authorization: Bearer`), or anyone
connecting from a loopback address when `metrics_loopback_open` is true
(a Prometheus on the same host). Off by default: behind a reverse proxy
on the same host every request comes from loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rooms.errors import RoomError
from rooms.models import Role
from signaling import procstat
from signaling.app_keys import MEDIA, SETTINGS, TOKENS
from signaling.http_api import bearer_token
from streaming.plane_snapshot import PlaneSnapshot

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_PROBE_INTERVAL_S = 0.25
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

METRICS_REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics_registry", CollectorRegistry)


class PlaneCollector(Collector):
    """Reads one PlaneSnapshot per scrape; `snapshot` is MediaPlane.snapshot
    (None before the plane has started)."""

    def __init__(self, snapshot: Callable[[], PlaneSnapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        viewers = GaugeMetricFamily("forumcast_viewers", "WebRTC viewers on this node", labels=["forum"])
        program = GaugeMetricFamily(
            "forumcast_program_info", "the source on the forum's program bus", labels=["forum", "source"])
        worst = GaugeMetricFamily(
            "forumcast_viewer_worst_loss_ratio", "highest fraction lost reported by a viewer (RTCP RR)",
            labels=["forum"])
        for forum in snap.forums:
            viewers.add_metric([forum.forum_id], forum.viewers)
            program.add_metric([forum.forum_id, forum.program_source or ""], 1)
            if forum.worst_viewer_loss_ratio is not None:
                worst.add_metric([forum.forum_id], forum.worst_viewer_loss_ratio)
        yield viewers
        yield program
        yield worst
        yield GaugeMetricFamily("forumcast_publishers", "WebRTC publishers (browser, WHIP) on this node",
                                value=snap.publishers)
        yield GaugeMetricFamily("forumcast_viewers_connected", "WebRTC viewers on this node, all forums",
                                value=snap.viewers)
        yield CounterMetricFamily("forumcast_packets_out", "RTP packets sent to viewers", value=snap.packets_out)
        yield CounterMetricFamily("forumcast_bytes_out", "RTP bytes (before SRTP) sent to viewers",
                                  value=snap.bytes_out)
        yield CounterMetricFamily("forumcast_retransmitted_packets", "packets resent to viewers on NACK",
                                  value=snap.retransmitted)
        yield GaugeMetricFamily("forumcast_viewer_send_errors",
                                "packets to the connected viewers that SRTP or the socket refused",
                                value=snap.send_errors)
        yield CounterMetricFamily("forumcast_viewer_dropped_frames",
                                  "video frames skipped for viewers whose socket was backed up",
                                  value=snap.dropped_frames)
        if snap.udp_port_dropped:
            dropped = CounterMetricFamily(
                "forumcast_udp_port_dropped", "datagrams the shared udp_port dropped: not STUN/DTLS/RTP "
                "(unclassified), STUN for no live ICE agent (stun_unknown_ufrag), from no known peer "
                "(unknown_address), ICMP errors (icmp_error); tcp_*: ICE-TCP connections refused and frames "
                "dropped on the same port number", labels=["reason"])
            for reason, count in snap.udp_port_dropped:
                dropped.add_metric([reason], count)
            yield dropped
        labels = ["forum", "source", "kind", "source_kind"]
        received = CounterMetricFamily(
            "forumcast_source_packets_received", "RTP packets received from a source track", labels=labels)
        bitrate = GaugeMetricFamily(
            "forumcast_source_bitrate_kbps", "a source track's received bitrate over 2 s, kb/s", labels=labels)
        loss = GaugeMetricFamily(
            "forumcast_source_loss_ratio", "a source track's missing sequence numbers over 2 s, 0..1",
            labels=labels)
        jitter = GaugeMetricFamily(
            "forumcast_source_jitter_ms", "a source track's RFC 3550 interarrival jitter over 2 s, ms",
            labels=labels)
        for source in snap.sources:
            values = [source.forum_id, source.source_id, source.kind, source.source_kind]
            received.add_metric(values, source.packets_received)
            bitrate.add_metric(values, source.window.bitrate_kbps)
            if source.window.loss_ratio is not None:
                loss.add_metric(values, source.window.loss_ratio)
            if source.window.jitter_ms is not None:
                jitter.add_metric(values, source.window.jitter_ms)
        yield received
        yield bitrate
        yield loss
        yield jitter


class LoopLagProbe(Collector):
    """A timer that asks to fire every LAG_PROBE_INTERVAL_S and records how
    late it fired: what every callback on this loop waits, at most. Start
    and stop it with the app (lifecycle: start(), idempotent stop())."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "forumcast_event_loop_lag_seconds", "how late a periodic timer on the event loop fired",
            buckets=LAG_BUCKETS, registry=registry)
        self._worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_INTERVAL_S
            await asyncio.sleep(LAG_PROBE_INTERVAL_S)
            lag = max(0.0, loop.time() - due)
            self.histogram.observe(lag)
            self._worst = max(self._worst, lag)

    def collect(self) -> Iterator[Metric]:
        worst, self._worst = self._worst, 0.0
        yield GaugeMetricFamily("forumcast_event_loop_lag_max_seconds",
                                "the latest timer lag since the previous scrape", value=worst)


class NodeCpuCollector(Collector):
    """forumcast_node_cpu_seconds_total: `cpu()` at scrape time (default:
    this process and its descendants, from /proc)."""

    def __init__(self, cpu: Callable[[], float] | None = None) -> None:
        self._cpu = cpu or (lambda: procstat.tree_cpu_seconds(os.getpid()))

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("forumcast_node_cpu_seconds",
                                  "CPU seconds of this node's process and its children (ffmpeg), live and ended",
                                  value=self._cpu())


def _from_loopback(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


async def get_metrics(request: web.Request) -> web.Response:
    """200 text/plain exposition; 401 token_missing/token_invalid, 403
    forbidden (a token below admin), unless loopback scrape is open."""
    if not (request.app[SETTINGS].metrics_loopback_open and _from_loopback(request)):
        grant = request.app[TOKENS].verify(bearer_token(request))
        if not grant.role.at_least(Role.ADMIN):
            raise RoomError("forbidden", f"/metrics needs the admin role; your token grants {grant.role.value}")
    started = time.perf_counter()
    body = generate_latest(request.app[METRICS_REGISTRY])
    logger.debug("scrape took %.1f ms", (time.perf_counter() - started) * 1000)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)

    def snapshot() -> PlaneSnapshot | None:
        plane = app.get(MEDIA)
        return plane.snapshot() if plane is not None and plane.state == "running" else None

    registry.register(PlaneCollector(snapshot))
    registry.register(NodeCpuCollector())
    probe = LoopLagProbe(registry)
    registry.register(probe)
    app[METRICS_REGISTRY] = registry
    probe.start()
    try:
        yield
    finally:
        await probe.stop()


def setup_metrics(app: web.Application) -> None:
    """GET /metrics (see the module docstring for series and access)."""
    app.cleanup_ctx.append(_metrics_ctx)
    app.router.add_get("/metrics", get_metrics)
