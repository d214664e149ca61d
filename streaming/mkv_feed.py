"""Frames of RTP sources handed to an ffmpeg as live Matroska over a Unix
socket (streaming/live_mkv.py): the program into its encoder, a raw
source into its iso recording. A Unix socket in a private 0700
directory, not a loopback port: any local user could send forged packets
to, or read, a port (and ffmpeg's RTP demuxer only reads the UDP ports
an SDP names).

`FeedEgress` rebuilds one track's frames from RTP (H.264 access units per
RFC 6184, Opus packets as they are; nothing is decoded in Python) and
hands them to an `MkvFeed`, which writes them to the ffmpeg connected to
it. It is a `ProgramSink` on a program bus lane, and a plain RtpSource
sink (`__call__`) on a source.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from streaming import live_mkv
from streaming.h264_depacketize import H264Depacketizer
from streaming.rtp_source import ForwardPacket

if TYPE_CHECKING:
    from streaming.program_bus import Lane

logger = logging.getLogger(__name__)

SOCKET_BUFFER = 64 * 1024  # bytes in flight to the reader before our own queue grows


class MkvFeed:
    """An ffmpeg's input: a Unix stream server at `path` (in a private
    0700 directory) to which the ffmpeg connects, reading `tracks` as
    live Matroska (streaming/live_mkv.py). Each connection (a
    restarted ffmpeg makes a new one) gets the header, then video from the
    next IDR (a CFR output would otherwise fill from 0 to the first
    picture) and audio from then on (at once without a video track);
    timestamps start at 0 on both tracks.
    `end()` closes the connection: end of input, ffmpeg flushes and exits.

    A reader that falls behind (more than `max_lag` bytes wait for it
    beyond a `SOCKET_BUFFER` socket buffer: about 0.5 s of a 3 Mb/s
    source, what a loopback UDP port's receive buffer held before it
    dropped packets, corrupting frames) loses frames instead of piling up
    latency: audio until it catches up, video until the next IDR once it
    has. One `max_buffer` bytes behind is dropped (its ffmpeg restarts)."""

    def __init__(self, path: Path, *, tracks: tuple[live_mkv.Track, ...] = live_mkv.PROGRAM_TRACKS,
                 max_lag: int = 128 * 1024, max_buffer: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.tracks = tracks
        self.max_lag = max_lag
        self.max_buffer = max_buffer
        self._skipping = False  # video waits for an IDR after frames were dropped
        self.skipped = 0  # frames dropped because the reader was behind
        self._has_video = any(t.number == live_mkv.VIDEO for t in tracks)
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.video_started = False
        self._clock: dict[int, tuple[int, int]] = {}  # track -> (last RTP ts, ticks since the first)
        self.frames = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path))

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.close()
            return
        self._drop()
        self._writer = writer
        self.connections += 1
        self.video_started = False
        self._skipping = False
        self._clock.clear()
        sock = writer.get_extra_info("socket")
        if sock is not None:  # a small socket buffer: a lag shows in our queue, where frames can be chosen
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        writer.write(live_mkv.header(self.tracks))
        try:
            await reader.read()  # ffmpeg sends nothing: EOF when it goes
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._drop()

    def _drop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _ms(self, track: int, ts: int, clock: int) -> int:
        last = self._clock.get(track)
        if last is None:
            ticks = 0
        else:
            step = (ts - last[0]) & 0xFFFFFFFF
            ticks = last[1] + (step - (1 << 32) if step >= 1 << 31 else step)
        self._clock[track] = (ts, ticks)
        return ticks * 1000 // clock

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            return
        if writer.transport.get_write_buffer_size() > self.max_buffer:
            logger.warning("MkvFeed(%s) encoder too far behind: dropped", self.path.name)
            self._drop()
            return
        writer.write(data)
        self.frames += 1

    def _behind(self) -> bool:
        writer = self._writer
        return writer is not None and writer.transport.get_write_buffer_size() > self.max_lag

    def video(self, ts: int, access_unit: bytes, idr: bool) -> None:
        if self._writer is None or not (self.video_started or idr):
            return
        if self._behind() or (self._skipping and not idr):
            self._skipping = True
            self.skipped += 1
            return
        self._skipping = False
        self.video_started = True
        self._write(live_mkv.frame(live_mkv.VIDEO, self._ms(live_mkv.VIDEO, ts, 90_000), access_unit, idr))

    def audio(self, ts: int, packet: bytes) -> None:
        if self._writer is None or (self._has_video and not self.video_started):
            return
        if self._behind():
            self.skipped += 1
            return
        self._write(live_mkv.frame(live_mkv.AUDIO, self._ms(live_mkv.AUDIO, ts, 48_000), packet, True))

    def end(self) -> None:
        """End of input for the encoder; no new connection is taken."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._drop()


class FeedEgress:
    """A `ProgramSink` on one lane that hands its frames to a MkvFeed:
    H.264 access units rebuilt from RTP (h264_depacketize.py), Opus
    packets as they are. Takes only codec family `codec`."""

    __slots__ = ("kind", "codec", "ssrc", "lane", "active", "primed", "feed", "packets", "_depacketizer")

    def __init__(self, kind: str, codec: str, feed: MkvFeed) -> None:
        self.kind = kind
        self.codec = codec
        self.ssrc = 0  # nothing goes out as RTP
        self.lane: Lane | None = None
        self.active = False
        self.primed = False  # video: has seen a keyframe's first packet
        self.feed = feed
        self.packets = 0
        self._depacketizer = H264Depacketizer()

    def set_codec(self, key: str | None) -> None:
        self.active = key == self.codec

    def __call__(self, fp: ForwardPacket) -> None:
        """As an RtpSource sink (the source's own numbering)."""
        self.forward(fp, fp.seq, fp.timestamp)

    def forward(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        if not self.active or fp.late:
            return  # the encoder does its own concealment; no retransmissions
        self.packets += 1
        if self.kind == "audio":
            self.feed.audio(ts, fp.payload)
            return
        if not self.primed:
            if not fp.key:
                return
            self.primed = True
            for i, head in enumerate(fp.head):  # the keyframe's earlier packets (SPS, PPS)
                self._push(head, (seq - len(fp.head) + i) & 0xFFFF, ts)
        self._push(fp, seq, ts)

    def _push(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        for unit_ts, access_unit, idr in self._depacketizer.push(fp.payload, seq, ts, bool(fp.marker)):
            self.feed.video(unit_ts, access_unit, idr)
