"""One media track entering the server, received once.

Whoever receives media (a WebRTC publisher, the UDP ingest, file playout,
the slate) calls `RtpSource.push()` with each RTP packet in arrival order.
The source keeps a short history for NACKs, notices where keyframes
start, and hands each packet synchronously to its sinks (the forum's
program bus, preview buses). Keyframe requests from downstream are
coalesced here, so a thousand viewers joining at once cost one keyframe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from rooms.models import SourceKind
from streaming.h264_sps import H264Sps, SpsError, parse_sps, sps_from_rtp
from streaming.offer_answer import CodecFormat
from streaming.plane_snapshot import SourceWindow
from streaming.rtp_codecs import H264, codec_key, keyframe_detector

logger = logging.getLogger(__name__)

Sink = Callable[["ForwardPacket"], None]

# Largest RTP packet (header + payload) the fan-out can protect: pylibsrtp's
# 1500-byte buffer less the 16-byte SRTP trailer. Larger ones are dropped here.
MAX_PACKET_SIZE = 1500 - 16


class ForwardPacket:
    """A received packet as the fan-out needs it: header fields, the
    payload (no header extensions, no padding) and where it stands."""

    __slots__ = ("seq", "timestamp", "marker", "payload", "size", "key", "head", "late", "arrival")

    def __init__(
        self, seq: int, timestamp: int, marker: int, payload: bytes, arrival: float
    ) -> None:
        self.seq = seq
        self.timestamp = timestamp
        self.marker = marker  # 0x80 or 0: ORed into the second header byte
        self.payload = payload
        self.size = 12 + len(payload)  # on the wire, before SRTP
        self.key = False  # first packet of a keyframe seen in its frame
        self.head: tuple[ForwardPacket, ...] = ()  # earlier packets of that frame
        self.late = False  # older than the newest packet (a retransmission)
        self.arrival = arrival  # time.time() when it arrived


class RtpSource:
    """One video or audio track: `kind` is "video" or "audio", `codec` the
    negotiated RTCRtpCodecParameters (video/H264, video/VP8, audio/opus)."""

    def __init__(
        self,
        kind: str,
        codec: RTCRtpCodecParameters,
        *,
        history_packets: int = 1024,
        keyframe_request_interval: float = 0.5,
        name: str = "",
    ) -> None:
        if kind not in ("video", "audio"):
            raise ValueError(f"kind must be video or audio, not {kind!r}")
        self.kind = kind
        self.codec = codec
        self.format: CodecFormat | None = None
        """The payload format as the publisher offered it (its fmtp: H.264
        profile-level-id, packetization-mode); None for sources that did
        not come from an SDP offer. `codec` is aiortc's view of it."""
        self.codec_key = codec_key(codec)
        self.name = name
        self.clock_rate = codec.clockRate
        self._sinks: tuple[Sink, ...] = ()
        self._history: list[ForwardPacket | None] = [None] * history_packets
        self._history_size = history_packets
        self._detect = keyframe_detector(self.codec_key)
        self._reads_sps = self.codec_key == H264
        self._seen_frame = False
        self._max_seq = -1
        self._frame_ts = -1
        self._frame_key = False
        self._frame_packets: list[ForwardPacket] = []
        # counters and liveness
        self.packets_received = 0
        self.keyframes_seen = 0
        self.oversize = 0  # packets too large to forward
        self.last_arrival = 0.0  # time.monotonic() of the newest packet
        self.last_packet: ForwardPacket | None = None
        self.ssrc: int | None = None  # upstream SSRC (for PLIs)
        self.idle = True
        self.on_resume: Callable[[], None] | None = None
        # the upstream's clock: (wall seconds, rtp timestamp) from its reports
        self.clock_reference: tuple[float, int] | None = None
        # keyframe requests upstream
        self._requester: Callable[[], None] | None = None
        self._request_interval = keyframe_request_interval
        self._last_request = float("-inf")
        self._wanted_at = 0.0
        self._last_keyframe_at = 0.0
        self._pending_request: asyncio.TimerHandle | None = None
        self.keyframe_requests_sent = 0
        # what the stream is (H.264: its SPS, read at keyframes when it changes)
        # and whether its frames come out of display order (B-frames)
        self.sps: H264Sps | None = None
        self._sps_bytes = b""
        self.reordered_frames = 0  # new frames whose timestamp is older than the previous frame's
        self.on_format: Callable[[RtpSource], None] | None = None  # the SPS changed, or frames reordered

    # --- input ---------------------------------------------------------

    def push(self, packet: RtpPacket) -> None:
        """Take one packet (in arrival order) and hand it to every sink."""
        now = time.monotonic()
        seq = packet.sequence_number
        fp = ForwardPacket(
            seq, packet.timestamp, 0x80 if packet.marker else 0, packet.payload, time.time()
        )
        if fp.size > MAX_PACKET_SIZE:
            self.oversize += 1
            return
        history = self._history
        slot = seq % self._history_size
        if self._max_seq < 0 or ((seq - self._max_seq) & 0xFFFF) < 0x8000:
            if seq == self._max_seq:
                return  # duplicate of the newest
            self._max_seq = seq
            if fp.timestamp != self._frame_ts:
                if self._seen_frame and ((self._frame_ts - fp.timestamp) & 0xFFFFFFFF) < 0x80000000:
                    self._reordered()  # presentation time went back: a B-frame
                self._frame_ts = fp.timestamp
                self._seen_frame = True
                self._frame_key = False
                self._frame_packets.clear()
            if not self._frame_key:
                if self._detect(fp.payload):
                    self._frame_key = True
                    fp.key = True
                    if self._frame_packets:
                        fp.head = tuple(self._frame_packets)
                        self._frame_packets.clear()
                    self.keyframes_seen += 1
                    self._last_keyframe_at = now
                    if self._reads_sps:
                        self._read_sps(fp.payload)
                else:
                    self._frame_packets.append(fp)
        else:
            old = history[slot]
            if old is not None and old.seq == seq:
                return  # already have it
            fp.late = True
        history[slot] = fp
        self.packets_received += 1
        self.ssrc = packet.ssrc
        self.last_arrival = now
        self.last_packet = fp
        if self.idle:
            self.idle = False
            if self.on_resume is not None:
                asyncio.get_running_loop().call_soon(self.on_resume)
        for sink in self._sinks:
            try:
                sink(fp)
            except Exception:  # a broken sink must not take the publisher down
                logger.exception("RtpSource(%s) sink %r failed: removed", self.name, sink)
                self.remove_sink(sink)

    def window(self, now: float, seconds: float) -> SourceWindow:
        """Receive figures over the packets that arrived in the last
        `seconds` before `now` (time.time()), read from the history ring:
        nothing is counted per packet for this. See SourceWindow for units."""
        since = now - seconds
        recent = sorted(
            (fp for fp in self._history if fp is not None and fp.arrival >= since),
            key=lambda fp: fp.arrival,
        )
        if not recent:
            return SourceWindow(0, 0.0, None, None)
        octets = sum(fp.size for fp in recent)
        bitrate = octets * 8 / 1000 / seconds
        if len(recent) < 2:
            return SourceWindow(len(recent), bitrate, None, None)
        # extend sequence numbers from the first packet (wrap-safe within 32k)
        base = recent[0].seq
        offsets = [((fp.seq - base + 0x8000) & 0xFFFF) - 0x8000 for fp in recent]
        expected = max(offsets) - min(offsets) + 1
        loss = max(0.0, 1.0 - len(set(offsets)) / expected)
        jitter = 0.0  # RFC 3550 6.4.1, in seconds here
        in_order = sorted(zip(offsets, recent), key=lambda pair: pair[0])
        previous = None
        for _, fp in in_order:
            if fp.late:
                continue  # a retransmission's arrival says nothing about the path's jitter
            if previous is not None:
                transit_delta = (fp.arrival - previous.arrival) - (
                    ((fp.timestamp - previous.timestamp + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                ) / self.clock_rate
                jitter += (abs(transit_delta) - jitter) / 16
            previous = fp
        return SourceWindow(len(recent), bitrate, loss, jitter * 1000)

    def _read_sps(self, payload: bytes) -> None:
        """At a keyframe: note the SPS if it is new (once per stream in
        practice; the bytes compare costs next to nothing)."""
        nal = sps_from_rtp(payload)
        if nal is None or nal == self._sps_bytes:
            return
        self._sps_bytes = bytes(nal)
        try:
            self.sps = parse_sps(nal)
        except SpsError as exc:
            logger.warning("RtpSource(%s) unreadable SPS: %s", self.name, exc)
            self.sps = None
        self._tell_format()

    def _reordered(self) -> None:
        self.reordered_frames += 1
        if self.reordered_frames == 1:
            logger.warning("RtpSource(%s) frames arrive out of display order (B-frames)", self.name)
            self._tell_format()

    def _tell_format(self) -> None:
        if self.on_format is not None:
            try:
                self.on_format(self)
            except Exception:
                logger.exception("RtpSource(%s) format callback failed", self.name)

    @property
    def profile_level_id(self) -> str | None:
        """What this source sends, as an SDP profile-level-id (H.264: from
        its SPS once seen), else None."""
        return self.sps.profile_level_id if self.sps is not None else None

    def set_clock_reference(self, wall: float, rtp_timestamp: int) -> None:
        """The upstream sampled `rtp_timestamp` at `wall` (unix seconds, its
        clock), e.g. from an RTCP sender report. Viewers' sender reports
        are then derived from it, so their audio and video line up as the
        publisher captured them rather than as packets happened to arrive."""
        self.clock_reference = (wall, rtp_timestamp & 0xFFFFFFFF)

    def wall_time(self, rtp_timestamp: int) -> float | None:
        """When (upstream clock) this timestamp was sampled, if known."""
        ref = self.clock_reference
        if ref is None:
            return None
        delta = (rtp_timestamp - ref[1]) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return ref[0] + delta / self.clock_rate

    def lookup(self, seq: int) -> ForwardPacket | None:
        """The packet with this sequence number, if still in the history."""
        fp = self._history[seq % self._history_size]
        if fp is not None and fp.seq == seq:
            return fp
        return None

    # --- sinks -------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        if sink not in self._sinks:
            self._sinks = self._sinks + (sink,)

    def remove_sink(self, sink: Sink) -> None:
        # a new tuple: push() may be iterating the old one right now
        self._sinks = tuple(s for s in self._sinks if s != sink)

    @property
    def sink_count(self) -> int:
        return len(self._sinks)

    # --- keyframes -----------------------------------------------------

    def set_keyframe_requester(self, request: Callable[[], None]) -> None:
        """How to ask upstream for a keyframe (a PLI for WebRTC; a no-op
        for files with a short GOP)."""
        self._requester = request

    def request_keyframe(self) -> None:
        """Ask upstream for a keyframe, at most once per interval. A request
        inside the interval is deferred to its end, and dropped if a
        keyframe has arrived by then."""
        if self._requester is None or self.kind != "video":
            return
        now = time.monotonic()
        self._wanted_at = now
        if self._pending_request is not None:
            return
        wait = self._last_request + self._request_interval - now
        if wait <= 0:
            self._send_request(now)
        else:
            self._pending_request = asyncio.get_running_loop().call_later(
                wait, self._deferred_request
            )

    @property
    def keyframe_request_pending(self) -> bool:
        """A request waits for the end of the interval."""
        return self._pending_request is not None

    def _deferred_request(self) -> None:
        self._pending_request = None
        if self._last_keyframe_at > self._wanted_at:
            return  # a keyframe came after the latest want: nobody waits
        self._send_request(time.monotonic())

    def _send_request(self, now: float) -> None:
        self._last_request = now
        self.keyframe_requests_sent += 1
        requester = self._requester
        if requester is not None:
            try:
                requester()
            except Exception:  # an upstream that went away must not break viewers
                logger.exception("RtpSource(%s) keyframe request failed", self.name)

    def close(self) -> None:
        """Forget sinks and cancel a deferred request (idempotent)."""
        self._sinks = ()
        self._requester = None
        if self._pending_request is not None:
            self._pending_request.cancel()
            self._pending_request = None


@dataclass
class SourceFeed:
    """One MediaSource as media: up to one video and one audio track.
    `kind` (added to the agreed API, default LIVE) tells the program policy
    which feed is the forum's slate."""

    source_id: str
    video: RtpSource | None
    audio: RtpSource | None
    kind: SourceKind = SourceKind.LIVE

    def sources(self) -> list[RtpSource]:
        return [s for s in (self.video, self.audio) if s is not None]
