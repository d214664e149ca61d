"""Light WebRTC viewers: many in one process, cheap enough to be the load tester.

Each viewer uses aiortc only to negotiate (recvonly video + audio offer,
ICE, DTLS), like any client. Once ICE has nominated its pair, the viewer
takes the socket: one reader thread (streaming/rx_thread.py, one epoll for
every socket of the process) drains it into the viewer's counter
(streaming/rtp_count.py: in C with recvmmsg when the extension is built,
else Python), which counts RTP/RTCP (first byte 128..191) from their clear
headers and hands back 1 in `sample_every` RTP packets, unprotected here
with the viewer's own SRTP keys to prove the server encrypted it for this
viewer, and STUN (consent checks) and DTLS, which go to aioice/aiortc on
the event loop. aiortc's RTP receivers never see a packet, so they never
decode, depacketize or send RTCP; the pool sends one small receiver
report per viewer per `rr_interval` instead (a browser sends about one a
second).

Per viewer: join time (offer to connected, s), time to first video
packet (s; the server starts a viewer's video at a keyframe, so this is
when the first frame starts arriving), packets, bytes and the sequence
gaps of each SSRC (RFC 3550 A.3: expected = extended highest - first + 1).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from streaming.ice_policy import gathering_on
from streaming.rtp_count import NATIVE, RtpCounting, new_counter
from streaming.rx_thread import RxThread
from streaming.wire_path import DatagramHandler, WirePath, stop_decoder_threads, stop_receiver_rtcp, wire_path

Signal = Callable[[str, str], Awaitable[str]]  # (viewer_id, offer sdp) -> answer sdp


@dataclass
class StreamCount:
    """One SSRC's receive counters; `ext_highest` is the extended highest
    sequence number (RFC 3550 A.1), `first_seq` the first one seen."""

    kind: str
    packets: int = 0
    bytes: int = 0
    first_seq: int = 0
    ext_highest: int = 0

    @property
    def expected(self) -> int:
        return self.ext_highest - self.first_seq + 1 if self.packets else 0

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)


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
    expected: int = 0  # RTP packets the sequence numbers say were sent
    lost: int = 0  # expected - received (RFC 3550 A.3), never negative per SSRC
    malformed: int = 0  # datagrams too short for their RTP/RTCP header, dropped

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.rtp, self.rtp_bytes, self.rtcp, self.video, self.audio, self.checked,
                self.auth_failures, self.expected, self.lost, self.malformed)


def payload_kinds(sdp: str) -> dict[int, str]:
    """Payload type -> 'audio'/'video' from the m= lines of a description."""
    kinds: dict[int, str] = {}
    for match in re.finditer(r"^m=(audio|video) \d+ \S+ ([\d ]+)", sdp, re.MULTILINE):
        for pt in match.group(2).split():
            kinds[int(pt)] = match.group(1)
    return kinds


def viewer_configuration() -> RTCConfiguration:
    """No STUN/TURN server (the server's answer carries its candidates), one
    bundled transport per peer connection."""
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class LightViewer:
    """One viewer. `connect()` negotiates, then counting happens in
    `_on_datagram`. `ice_addresses` limits the host candidates (empty:
    every interface)."""

    def __init__(self, viewer_id: str, sample_every: int = 50, rx: RxThread | None = None,
                 ice_addresses: tuple[str, ...] = ()) -> None:
        self.viewer_id = viewer_id
        self._rx = rx  # None: count in the event loop's own datagram callback
        self._ice_addresses = ice_addresses
        self.pc = RTCPeerConnection(viewer_configuration())
        self._counter: RtpCounting | None = None
        self.checked = 0
        self.auth_failures = 0
        self.rtcp_ssrc = random.getrandbits(32)
        self.started_at = 0.0  # time.monotonic() when connect() began
        self.joined_s: float | None = None  # offer to connected
        self._sample_every = max(1, sample_every)
        self._kinds: dict[int, str] = {}
        self._wire: WirePath | None = None
        self._aioice_handler: DatagramHandler | None = None
        self._rx_srtp: pylibsrtp.Session | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def streams(self) -> dict[int, StreamCount]:
        """SSRC -> its counters so far (a copy)."""
        rows = self._counter.streams() if self._counter is not None else []
        return {ssrc: StreamCount(kind, packets, size, first, highest)
                for ssrc, kind, packets, size, first, highest in rows}

    @property
    def rtcp(self) -> int:
        return self._counter.rtcp if self._counter is not None else 0

    @property
    def first_video_at(self) -> float:
        """time.monotonic() of the first video packet; 0.0: none yet."""
        return self._counter.first_video_at if self._counter is not None else 0.0

    @property
    def first_video_s(self) -> float | None:
        """Seconds from the offer to the first video packet; None before it."""
        return self.first_video_at - self.started_at if self.first_video_at else None

    async def connect(self, signal: Signal, timeout: float = 20.0) -> None:
        self.started_at = time.monotonic()
        await asyncio.wait_for(self._negotiate(signal), timeout)
        self.joined_s = time.monotonic() - self.started_at
        await stop_receiver_rtcp(self.pc)  # after the join is timed

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

        with gathering_on(self._ice_addresses):
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

    def _counter_now(self) -> RtpCounting:
        """The counter, made once the answer's payload types are known (before
        ICE completes, so before any RTP can arrive)."""
        if self._counter is None:
            native = self._rx.native if self._rx is not None else NATIVE
            self._counter = new_counter(self._kinds, self._sample_every, native=native)
        return self._counter

    def _take_over(self) -> None:
        self._wire = wire_path(self.pc)
        self._loop = asyncio.get_running_loop()
        counter = self._counter_now()
        if self._rx is None:
            self._aioice_handler = self._wire.take_datagrams(self._on_datagram)
        else:
            self._aioice_handler = self._wire.aioice_handler()
            self._socket = self._wire.take_socket()
            self._rx.add(self._socket, counter, self._on_handed_back, self._wire.remote_addr)

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Without a reader thread: every datagram, from the event loop."""
        back = self._counter_now().feed(data)
        if back is not None:
            self._on_handed_back(back, addr)

    def _on_handed_back(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """What the counter hands back: a sampled RTP packet, or STUN/DTLS."""
        if 127 < data[0] < 192:
            self._verify(data)
        elif self._rx is None:
            self._aioice_handler(data, addr)  # type: ignore[misc]
        else:  # STUN or DTLS: aioice's, on its own loop
            self._loop.call_soon_threadsafe(self._aioice_handler, data, addr)  # type: ignore[union-attr,arg-type]

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
        streams = list(self.streams.values())  # one C call (or dict walk) per report, not per packet
        return Counts(
            rtp=sum(s.packets for s in streams),
            rtp_bytes=sum(s.bytes for s in streams),
            rtcp=self.rtcp,
            video=sum(s.packets for s in streams if s.kind == "video"),
            audio=sum(s.packets for s in streams if s.kind == "audio"),
            checked=self.checked, auth_failures=self.auth_failures,
            expected=sum(s.expected for s in streams),
            lost=sum(s.lost for s in streams),
            malformed=self._counter.malformed if self._counter is not None else 0,
        )

    def send_receiver_report(self) -> None:
        if self._wire is None or not self.streams:
            return
        session = self._wire.tx_srtp()
        if session is None:
            return
        reports = [
            RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=0,
                             highest_sequence=s.ext_highest & 0xFFFFFFFF, jitter=0, lsr=0, dlsr=0)
            for ssrc, s in list(self.streams.items())
        ]
        packet = RtcpRrPacket(ssrc=self.rtcp_ssrc, reports=reports)
        self._wire.send(session.protect_rtcp(bytes(packet)))

    async def close(self) -> None:
        if self._rx is not None and self._socket is not None:
            self._rx.remove(self._socket)  # before aioice closes the socket
        await self.pc.close()


@dataclass
class ViewerPool:
    """N light viewers in this process, one reader thread and one
    receiver-report loop for all."""

    sample_every: int = 50
    rr_interval: float = 1.0
    concurrency: int = 10
    rx_thread: bool = True
    ice_addresses: tuple[str, ...] = ()
    viewers: list[LightViewer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _rr_task: asyncio.Task[None] | None = None
    _rx: RxThread | None = None

    def _start_reports(self) -> None:
        if self.rr_interval > 0 and self._rr_task is None:
            self._rr_task = asyncio.create_task(self._report_loop())

    async def connect_one(self, viewer_id: str, signal: Signal, timeout: float = 20.0) -> LightViewer | None:
        """Connect one viewer; a failure is recorded in `errors` (the run
        fails on errors, nothing is hidden) and returns None."""
        if self.rx_thread and self._rx is None:
            self._rx = RxThread()
        viewer = LightViewer(viewer_id, self.sample_every, self._rx, self.ice_addresses)
        try:
            await viewer.connect(signal, timeout)
        except Exception as exc:
            self.errors.append(f"{viewer_id}: {type(exc).__name__}: {exc}")
            await viewer.close()
            return None
        self.viewers.append(viewer)
        self._start_reports()
        return viewer

    async def connect(self, count: int, signal: Signal, prefix: str = "v", timeout: float = 20.0) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int) -> None:
            async with gate:
                await self.connect_one(f"{prefix}{index}", signal, timeout)

        await asyncio.gather(*(one(i) for i in range(count)))

    async def _report_loop(self) -> None:
        tick = 0.05  # s: spread over the interval, not one burst, nor one wake-up per viewer
        while True:
            viewers = list(self.viewers)
            per_tick = max(1, math.ceil(len(viewers) * tick / self.rr_interval))
            chunks = max(1, math.ceil(len(viewers) / per_tick))
            for start in range(0, chunks * per_tick, per_tick):
                for viewer in viewers[start:start + per_tick]:
                    viewer.send_receiver_report()
                await asyncio.sleep(self.rr_interval / chunks)

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
