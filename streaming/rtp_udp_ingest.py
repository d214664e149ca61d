"""RTP from a local ffmpeg, received on a loopback UDP port or a Unix
datagram socket.

ffmpeg's rtp muxer sends one stream per port, so there is one
`RtpUdpIngest` per track. Any local user can send to a loopback UDP port
(and read its number in ffmpeg's argv), so an ingest whose packets may
go on air behind a key check (venue feeds) listens on a Unix datagram
socket in a 0700 directory instead: only this user can reach it, and
ffmpeg's rtp muxer writes one packet per datagram there too
(`unix:<path>` with `-type datagram`). Each datagram is parsed with aiortc's RtpPacket
and pushed, in arrival order, into a sink (an RtpSource of the media plane,
or anything with `push(packet)`). Malformed datagrams are counted and
dropped.

`RtpContinuity` makes one stream out of an ffmpeg that restarts (a venue
encoder that reconnects): a fixed SSRC, sequence numbers that go on by one,
and timestamps that go on by the wall-clock time of the gap, so a viewer's
decoder and jitter buffer see a pause, not a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Protocol

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp

from rooms.models import SourceKind
from streaming.lifecycle import Lifecycle
from streaming.media_config import MediaConfig
from streaming.rtp_source import RtpSource, SourceFeed

logger = logging.getLogger(__name__)

# The payload types forumcast uses for its own RTP (ffmpeg's rtp muxer is
# told to use them too); viewers' payload types are rewritten per viewer.
H264_PAYLOAD_TYPE = 96
OPUS_PAYLOAD_TYPE = 111
# RTP packets ffmpeg may send: small enough for SRTP + header rewrite + a
# TURN relay under a 1280-byte path MTU.
RTP_PACKET_SIZE = 1200


def h264_codec(profile_level_id: str = "42e01f") -> RTCRtpCodecParameters:
    """H.264, packetization-mode=1 (single NAL, STAP-A, FU-A), 90 kHz."""
    return RTCRtpCodecParameters(
        mimeType="video/H264", clockRate=90000, payloadType=H264_PAYLOAD_TYPE,
        parameters={
            "packetization-mode": "1",
            "level-asymmetry-allowed": "1",
            "profile-level-id": profile_level_id,
        },
    )


def opus_codec() -> RTCRtpCodecParameters:
    """Opus 48000/2."""
    return RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=OPUS_PAYLOAD_TYPE,
        parameters={"minptime": "10", "useinbandfec": "1"},
    )


def rtp_output_options(kind: str, port: int, path: str | None = None) -> tuple[str, dict[str, object]]:
    """The ffmpeg-python output (url, kwargs) that sends one track of
    `kind` as RTP to 127.0.0.1:port, or to the Unix datagram socket
    `path` when given, as RtpUdpIngest expects it."""
    payload_type = H264_PAYLOAD_TYPE if kind == "video" else OPUS_PAYLOAD_TYPE
    # skip_rtcp: nothing reads RTCP here, and port+1 may be another ingest
    options: dict[str, object] = {"f": "rtp", "payload_type": payload_type, "rtpflags": "skip_rtcp"}
    if path is not None:
        return f"unix:{path}", {**options, "type": "datagram", "pkt_size": RTP_PACKET_SIZE}
    return f"rtp://127.0.0.1:{port}?pkt_size={RTP_PACKET_SIZE}", options


def h264_nal_types(payload: bytes) -> list[int]:
    """The H.264 NAL unit types an RTP payload carries (STAP-A opened; for
    FU-A only the start fragment names its type)."""
    if not payload:
        return []
    nal_type = payload[0] & 0x1F
    if nal_type == 24:  # STAP-A: 16-bit size + NAL, repeated
        types, offset = [], 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset:offset + 2], "big")
            types.append(payload[offset + 2] & 0x1F)
            offset += 2 + size
        return types
    if nal_type == 28:  # FU-A
        return [payload[1] & 0x1F] if len(payload) > 1 and payload[1] & 0x80 else []
    return [nal_type]


def is_h264_keyframe_start(payload: bytes) -> bool:
    """True for the packet that begins an IDR access unit's data (SPS, or an
    IDR slice's first fragment)."""
    types = h264_nal_types(payload)
    return 7 in types or 5 in types


class PacketSink(Protocol):
    """Where received or generated RTP goes (the media plane's RtpSource)."""

    def push(self, packet: RtpPacket) -> None: ...


def new_source_feed(
    source_id: str,
    kind: SourceKind,
    *,
    audio: bool = True,
    config: MediaConfig | None = None,
    keyframe_requester: Callable[[], None] | None = None,
) -> SourceFeed:
    """A SourceFeed whose RtpSources carry what forumcast's own producers
    send (H.264 packetization-mode=1 and Opus 48000/2): hand `feed.video`
    and `feed.audio` to a VenueIngest, FilePlayout or Slate as its sinks,
    then MediaPlane.add_feed(forum_id, feed)."""
    config = config or MediaConfig()
    history, interval = config.history_packets, config.keyframe_request_interval
    video_source = RtpSource("video", h264_codec(), name=f"{source_id}-video",
                             history_packets=history, keyframe_request_interval=interval)
    audio_source = RtpSource("audio", opus_codec(), name=f"{source_id}-audio",
                             history_packets=history, keyframe_request_interval=interval) if audio else None
    if keyframe_requester is not None:
        video_source.set_keyframe_requester(keyframe_requester)
    return SourceFeed(source_id, video_source, audio_source, kind)


class RtpContinuity:
    """Rewrites SSRC, sequence number and timestamp so that restarts of
    the sender look like a pause in one stream."""

    def __init__(self, clock_rate: int, ssrc: int | None = None) -> None:
        self.clock_rate = clock_rate
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._in_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_in_seq = 0
        self._last_ts = random.getrandbits(32)
        self._last_at = 0.0

    def rewrite(self, packet: RtpPacket, now: float | None = None) -> RtpPacket:
        now = time.monotonic() if now is None else now
        if packet.ssrc != self._in_ssrc:
            # a new upstream stream: continue from where the last one ended
            gap = 0 if self._in_ssrc is None else max(1, round((now - self._last_at) * self.clock_rate))
            self._ts_offset = (self._last_ts + gap - packet.timestamp) & 0xFFFFFFFF
            self._seq_offset = (self._seq + 1 - packet.sequence_number) & 0xFFFF
            self._in_ssrc = packet.ssrc
        packet.ssrc = self.ssrc
        packet.sequence_number = (packet.sequence_number + self._seq_offset) & 0xFFFF
        packet.timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        self._seq = packet.sequence_number
        self._last_ts = packet.timestamp
        self._last_at = now
        return packet


class _State(enum.Enum):
    NEW = "new"
    RECEIVING = "receiving"
    STOPPED = "stopped"


class RtpUdpIngest(Lifecycle[_State], asyncio.DatagramProtocol):
    """Receives one RTP stream on 127.0.0.1:`port` (0: a free one, see
    `port` after start()), or on the Unix datagram socket `path` (its
    directory must be private; the socket is removed on stop), and pushes
    each packet into `sink`.

    `on_packet` (optional) is called after each push; keep it cheap.
    States: new -> receiving -> stopped.
    """

    _STATE_LOG_LEVEL = logging.DEBUG

    def __init__(
        self,
        sink: PacketSink,
        *,
        kind: str,
        name: str = "rtp",
        port: int = 0,
        continuity: RtpContinuity | None = None,
        on_packet: Callable[[RtpPacket], None] | None = None,
        path: str | None = None,
    ) -> None:
        assert kind in ("video", "audio")
        super().__init__(_State.NEW, f"RtpUdpIngest({name})")
        self.path = path
        self.kind = kind
        self.name = name
        self.codec = h264_codec() if kind == "video" else opus_codec()
        self.sink = sink
        self.continuity = continuity
        self._requested_port = port
        self._on_packet = on_packet
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.received = 0
        self.malformed = 0
        self.rtcp = 0
        self.last_arrival = 0.0  # monotonic time of the last good packet

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self) -> None:
        assert self._state is _State.NEW, f"RtpUdpIngest({self.name}) started twice"
        loop = asyncio.get_running_loop()
        if self.path is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=self.path, family=socket.AF_UNIX  # type: ignore[arg-type]
            )
            self._transport = transport
            os.chmod(self.path, 0o600)  # the directory already keeps others out; this says so too
            self._set_state(_State.RECEIVING)
            logger.info("RtpUdpIngest(%s) %s on %s", self.name, self.kind, self.path)
            return
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", self._requested_port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._set_state(_State.RECEIVING)
        logger.info("RtpUdpIngest(%s) %s on 127.0.0.1:%d", self.name, self.kind, self.port)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self._state is not _State.RECEIVING:
            return
        if is_rtcp(data):
            self.rtcp += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            self.malformed += 1
            return
        if self.continuity is not None:
            packet = self.continuity.rewrite(packet)
        self.received += 1
        self.last_arrival = time.monotonic()
        try:
            self.sink.push(packet)
            if self._on_packet is not None:
                self._on_packet(packet)
        except Exception:
            # a sink's bug must not close the socket for the whole stream
            logger.exception("RtpUdpIngest(%s) sink failed", self.name)

    def error_received(self, exc: Exception) -> None:
        logger.debug("RtpUdpIngest(%s) socket error: %s", self.name, exc)

    async def stop(self) -> None:
        """Close the socket. Idempotent; concurrent callers await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        # at once, as before: not one more packet is pushed
        if self._transport is not None:
            self._transport.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._set_state(_State.STOPPED)

    async def _stop(self) -> None:
        pass  # all done in _stop_begins: closing a datagram socket does not block
