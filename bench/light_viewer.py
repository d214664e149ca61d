"""Light WebRTC viewers: many in one process, cheap enough to be the load tester.

Each viewer uses aiortc only to negotiate (recvonly video + audio offer,
ICE, DTLS). Once ICE has nominated its pair, the viewer takes the socket's
datagram handler: RTP/RTCP (first byte 128..191) are only counted from
their clear headers, and 1 in `sample_every` RTP packets is unprotected
with the viewer's own SRTP keys to prove the server encrypted it for this
viewer; STUN (consent checks) and DTLS still go to aioice/aiortc. aiortc's
RTP receivers never see a packet, so they never decode, depacketize or
send RTCP; the pool sends one small receiver report per viewer per
`rr_interval` instead (a browser sends about one a second).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from bench import machine, procstat
from bench.aiortc_reach import DatagramHandler, WirePath, stop_decoder_threads, wire_path
from bench.loopback import loopback_configuration, restrict_ice_to_loopback
from bench.rx_thread import RxThread

Signal = Callable[[str, str], Awaitable[str]]  # (viewer_id, offer sdp) -> answer sdp


@dataclass
class StreamCount:
    kind: str
    packets: int = 0
    bytes: int = 0
    highest_seq: int = 0


@dataclass
class Counts:
    """Cumulative counters of one viewer (or a sum of them)."""

    rtp: int = 0
    rtp_bytes: int = 0
    rtcp: int = 0
    video: int = 0
    audio: int = 0
    checked: int = 0
    auth_failures: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.rtp, self.rtp_bytes, self.rtcp, self.video, self.audio, self.checked, self.auth_failures)


def payload_kinds(sdp: str) -> dict[int, str]:
    """Payload type -> 'audio'/'video' from the m= lines of a description."""
    kinds: dict[int, str] = {}
    for match in re.finditer(r"^m=(audio|video) \d+ \S+ ([\d ]+)", sdp, re.MULTILINE):
        for pt in match.group(2).split():
            kinds[int(pt)] = match.group(1)
    return kinds


class LightViewer:
    """One viewer. `connect()` negotiates, then counting happens in `_on_datagram`."""

    def __init__(self, viewer_id: str, sample_every: int = 50, rx: RxThread | None = None) -> None:
        self.viewer_id = viewer_id
        self._rx = rx  # None: count in the event loop's own datagram callback
        self.pc = RTCPeerConnection(loopback_configuration())
        self.streams: dict[int, StreamCount] = {}
        self.rtcp = 0
        self.checked = 0
        self.auth_failures = 0
        self.rtcp_ssrc = random.getrandbits(32)
        self._sample_every = max(1, sample_every)
        self._until_check = self._sample_every
        self._kinds: dict[int, str] = {}
        self._wire: WirePath | None = None
        self._aioice_handler: DatagramHandler | None = None
        self._rx_srtp: pylibsrtp.Session | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self, signal: Signal, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self._negotiate(signal), timeout)

    async def _negotiate(self, signal: Signal) -> None:
        video = self.pc.addTransceiver("video", direction="recvonly")
        capabilities = RTCRtpReceiver.getCapabilities("video")
        assert capabilities is not None
        h264 = [c for c in capabilities.codecs if c.mimeType == "video/H264"]
        video.setCodecPreferences(h264)  # one codec per forum, H.264: see docs/DESIGN.md
        self.pc.addTransceiver("audio", direction="recvonly")
        connected = asyncio.get_running_loop().create_future()

        @self.pc.on("iceconnectionstatechange")
        def _ice_state() -> None:
            # take the socket as soon as a pair is nominated, before any RTP can arrive
            if self.pc.iceConnectionState == "completed" and self._wire is None:
                self._take_over()

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState in ("connected", "failed", "closed") and not connected.done():
                connected.set_result(self.pc.connectionState)

        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await signal(self.viewer_id, self.pc.localDescription.sdp)
        self._kinds = payload_kinds(answer)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        state = await connected
        if state != "connected":
            raise ConnectionError(f"viewer {self.viewer_id}: peer connection {state}")
        if self._wire is None:
            self._take_over()
        stop_decoder_threads(self.pc)

    def _take_over(self) -> None:
        self._wire = wire_path(self.pc)
        self._loop = asyncio.get_running_loop()
        if self._rx is None:
            self._aioice_handler = self._wire.take_datagrams(self._on_datagram)
        else:
            self._aioice_handler = self._wire.aioice_handler()
            self._socket = self._wire.take_socket()
            self._rx.add(self._socket, self._on_datagram, self._wire.remote_addr)

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        first = data[0]
        if not 127 < first < 192:  # STUN or DTLS: aioice's, on its own loop
            if self._rx is None:
                self._aioice_handler(data, addr)  # type: ignore[misc]
            else:
                self._loop.call_soon_threadsafe(self._aioice_handler, data, addr)  # type: ignore[union-attr,arg-type]
            return
        if 191 < data[1] < 224:  # RTCP packet types 192..223 (RFC 5761)
            self.rtcp += 1
            return
        # no tuple per packet (unpack_from would make one): fewer GC-tracked allocations
        ssrc = int.from_bytes(data[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self.streams[ssrc] = StreamCount(self._kinds.get(data[1] & 0x7F, "?"))
        stream.packets += 1
        stream.bytes += len(data)
        stream.highest_seq = data[2] << 8 | data[3]
        self._until_check -= 1
        if self._until_check == 0:
            self._until_check = self._sample_every
            self._verify(data)

    def _verify(self, data: bytes) -> None:
        session = self._rx_srtp
        if session is None:
            session = self._rx_srtp = self._wire.rx_srtp() if self._wire else None
            if session is None:
                return  # our DTLS is finishing: the server may already send
        self.checked += 1
        try:
            clear = session.unprotect(data)
        except pylibsrtp.Error:
            self.auth_failures += 1
            return
        if clear[:12] != data[:12]:
            self.auth_failures += 1  # SRTP keeps the header in clear: anything else is wrong

    def counts(self) -> Counts:
        video = sum(s.packets for s in self.streams.values() if s.kind == "video")
        audio = sum(s.packets for s in self.streams.values() if s.kind == "audio")
        return Counts(
            rtp=sum(s.packets for s in self.streams.values()),
            rtp_bytes=sum(s.bytes for s in self.streams.values()),
            rtcp=self.rtcp, video=video, audio=audio,
            checked=self.checked, auth_failures=self.auth_failures,
        )

    def send_receiver_report(self) -> None:
        if self._wire is None or not self.streams:
            return
        session = self._wire.tx_srtp()
        if session is None:
            return
        reports = [
            RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=0,
                             highest_sequence=s.highest_seq, jitter=0, lsr=0, dlsr=0)
            for ssrc, s in self.streams.items()
        ]
        packet = RtcpRrPacket(ssrc=self.rtcp_ssrc, reports=reports)
        self._wire.send(session.protect_rtcp(bytes(packet)))

    async def close(self) -> None:
        if self._rx is not None and self._socket is not None:
            self._rx.remove(self._socket)  # before aioice closes the socket
        await self.pc.close()


@dataclass
class ViewerPool:
    """N light viewers in this process, one receiver-report loop for all."""

    sample_every: int = 50
    rr_interval: float = 1.0
    concurrency: int = 10
    rx_thread: bool = True
    viewers: list[LightViewer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _rr_task: asyncio.Task[None] | None = None
    _rx: RxThread | None = None

    async def connect(self, count: int, signal: Signal, prefix: str = "v", timeout: float = 20.0) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        if self.rx_thread and self._rx is None:
            self._rx = RxThread()

        async def one(index: int) -> None:
            viewer = LightViewer(f"{prefix}{index}", self.sample_every, self._rx)
            async with gate:
                try:
                    await viewer.connect(signal, timeout)
                except Exception as exc:  # reported, never hidden: the run fails on errors
                    self.errors.append(f"{viewer.viewer_id}: {type(exc).__name__}: {exc}")
                    await viewer.close()
                    return
            self.viewers.append(viewer)

        await asyncio.gather(*(one(i) for i in range(count)))
        if self.rr_interval > 0 and self._rr_task is None:
            self._rr_task = asyncio.create_task(self._report_loop())

    async def _report_loop(self) -> None:
        while True:
            # spread the viewers' reports over the interval rather than in one burst
            step = self.rr_interval / max(1, len(self.viewers))
            for viewer in list(self.viewers):
                viewer.send_receiver_report()
                await asyncio.sleep(step)

    async def wait_receiving(self, timeout: float) -> int:
        """Wait until every viewer has video and audio; return how many have."""
        deadline = time.monotonic() + timeout
        while True:
            ready = sum(1 for v in self.viewers if (c := v.counts()).video > 0 and c.audio > 0)
            if ready == len(self.viewers) or time.monotonic() > deadline:
                return ready
            await asyncio.sleep(0.2)

    def per_viewer(self) -> list[Counts]:
        return [v.counts() for v in self.viewers]

    async def close(self) -> None:
        if self._rr_task is not None:
            self._rr_task.cancel()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(v.close() for v in self.viewers), return_exceptions=True), 30
            )
        finally:
            if self._rx is not None:
                self._rx.stop()


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
                      concurrency=args.concurrency, rx_thread=not args.asyncio_rx)
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
