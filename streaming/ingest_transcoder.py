"""The one encode at ingest for a venue feed browsers cannot play.

A venue leg's ffmpeg copies the encoder's video twice, with no encode:
as RTP to the plane (what viewers get when it plays as it is) and as
MPEG-TS datagrams to this module's `TsTap` on loopback. The tap holds the
run's first datagrams (from its first IDR, with timestamps intact) until
the leg has read the first SPS and decided:

- copy: the tap drops what it holds and, from then on, everything it gets
  (no process, no encode: the cost is one extra remux in ffmpeg);
- transcode: an `IngestTranscoder` starts (one ffmpeg: MPEG-TS on a
  loopback TCP port -> libx264 constrained baseline, zerolatency, no
  B-frames, 2 s GOP -> RTP to an RtpUdpIngest), the tap sends it what it
  held and then each datagram as it comes. Nothing of the run is lost, so
  viewers get the feed from its first frame, late by the encoder's start
  (a few hundred ms) and its zerolatency delay.

One transcoder per feed, never per viewer; it ends with the run (the tap
closes its connection at the run's end and stop() reaps it).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from collections.abc import Callable

import ffmpeg

from streaming.ffmpeg_process import FfmpegProcess
from streaming.h264_sps import H264Sps
from streaming.ingest_check import transcode_options
from streaming.rtp_udp_ingest import rtp_output_options

logger = logging.getLogger(__name__)

TS_DATAGRAM = 1316  # 7 TS packets: ffmpeg's usual MPEG-TS over UDP size
HOLD_LIMIT = 16 * 1024 * 1024  # bytes held before a decision (~1 min at 2 Mb/s); beyond: the oldest go
CONNECT_TIMEOUT_S = 10.0


class _TapMode(enum.Enum):
    HOLD = "hold"  # no decision yet for this run
    DROP = "drop"  # copied: nobody needs the TS
    RELAY = "relay"  # to the transcoder


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tap_output(port: int) -> tuple[str, dict[str, object]]:
    """The (url, muxer options) of an ffmpeg output (a tee slave) that
    sends the copied video as MPEG-TS datagrams to the tap on 127.0.0.1:port."""
    # max_delay 0: no 0.7 s of added buffering in the TS muxer
    return f"udp://127.0.0.1:{port}?pkt_size={TS_DATAGRAM}", {"f": "mpegts", "max_delay": 0}


class TsTap(asyncio.DatagramProtocol):
    """Receives one leg's MPEG-TS datagrams on 127.0.0.1:`port` (a free one
    after start()); holds, drops or relays them (see the module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._mode = _TapMode.HOLD
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._writer: asyncio.StreamWriter | None = None
        self.received = 0
        self.relayed = 0

    @property
    def mode(self) -> str:
        return self._mode.value

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self._mode is _TapMode.DROP:
            return
        if self._mode is _TapMode.RELAY and self._writer is not None:
            self._write(data)
            return
        self._held.append(data)  # held, or relaying while the transcoder is not connected yet
        self._held_bytes += len(data)
        while self._held_bytes > HOLD_LIMIT and self._held:
            self._held_bytes -= len(self._held.pop(0))

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > HOLD_LIMIT:
            return  # the transcoder fell far behind: let its decoder resync rather than grow
        writer.write(data)
        self.relayed += 1

    def hold(self) -> None:
        """A new run: hold its datagrams until the next decision."""
        self._close_writer()
        self._mode = _TapMode.HOLD
        self._held.clear()
        self._held_bytes = 0

    def forget(self) -> None:
        """Undecided: let go of what is held so far (a leg not on air)."""
        if self._mode is _TapMode.HOLD:
            self._held.clear()
            self._held_bytes = 0

    def drop(self) -> None:
        """Copied: forget what is held and what comes."""
        self._mode = _TapMode.DROP
        self._held.clear()
        self._held_bytes = 0

    def relay(self, writer: asyncio.StreamWriter) -> None:
        """Send what is held, then every datagram, to `writer`."""
        self._close_writer()
        self._writer = writer
        self._mode = _TapMode.RELAY
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            self._write(data)

    def relay_pending(self) -> None:
        """Transcoding is decided but not connected yet: keep holding."""
        self._mode = _TapMode.RELAY

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()  # EOF: the transcoder ends by itself
            self._writer = None

    def error_received(self, exc: Exception) -> None:
        logger.debug("TsTap(%s) socket error: %s", self.name, exc)

    def close(self) -> None:
        self._close_writer()
        self._held.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def transcoder_args(listen_port: int, rtp_port: int, sps: H264Sps | None) -> list[str]:
    """ffmpeg: MPEG-TS from tcp://127.0.0.1:listen_port (listening) ->
    the ingest encode (ingest_check.transcode_options) -> RTP to rtp_port."""
    filters, options = transcode_options(sps)
    # small probe: the held datagrams start at an IDR with its SPS/PPS
    stream = ffmpeg.input(f"tcp://127.0.0.1:{listen_port}?listen=1", f="mpegts", probesize=500_000,
                          analyzeduration=500_000, fflags="nobuffer")["v:0"]
    for name, kwargs in filters:
        stream = stream.filter(name, **kwargs)
    url, rtp = rtp_output_options("video", rtp_port)
    return stream.output(url, **options, **rtp).get_args()


class IngestTranscoder:
    """One ffmpeg encoding one leg's video; fed by `tap`, writing RTP to
    127.0.0.1:`rtp_port`. start() returns once the tap relays to it
    (RuntimeError if ffmpeg never listens); `on_failed(description)` is
    called if the encoder ends by itself while wanted; stop() is
    idempotent and reaps the child."""

    def __init__(self, name: str, tap: TsTap, rtp_port: int, sps: H264Sps | None, *, ffmpeg_path: str = "",
                 on_failed: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._tap = tap
        self._rtp_port = rtp_port
        self._sps = sps
        self._ffmpeg = ffmpeg_path
        self.process: FfmpegProcess | None = None
        self._stopped = False
        self._on_failed = on_failed
        self.started_at = 0.0

    async def start(self) -> None:
        port = _free_tcp_port()
        self._tap.relay_pending()
        self.process = FfmpegProcess(transcoder_args(port, self._rtp_port, self._sps), name=self.name,
                                     ffmpeg=self._ffmpeg, loglevel="error", on_state=self._state)
        self.started_at = time.monotonic()
        await self.process.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not self._stopped:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline or self.process.exited.is_set():
                    raise RuntimeError(f"the transcoder did not listen: {self.process.result().describe()}")
                await asyncio.sleep(0.02)  # ffmpeg opens its listener within a few tens of ms
        else:
            return
        self._tap.relay(writer)
        logger.info("IngestTranscoder(%s) encoding (connected in %.2f s)", self.name,
                    time.monotonic() - self.started_at)

    def _state(self, state: str) -> None:
        if state == "exited" and not self._stopped and self._on_failed is not None and self.process is not None:
            self._stopped = True
            self._on_failed(self.process.result().describe())

    async def stop(self) -> None:
        self._stopped = True
        if self.process is not None:
            await self.process.stop(grace=0.5)
