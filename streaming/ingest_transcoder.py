"""The one encode at ingest for a venue feed browsers cannot play.

A venue leg's ffmpeg copies the encoder's video twice, with no encode:
as RTP to the plane (what viewers get when it plays as it is) and as
MPEG-TS datagrams to this module's `TsTap`, a Unix datagram socket in the
ingest's private (0700) directory (a loopback port would take forged
media from any local user, as it would for the RTP). The tap holds the
run's first datagrams (from its first IDR, with timestamps intact) until
the leg has read the first SPS and decided:

- copy: the tap drops what it holds and, from then on, everything it gets
  (no process, no encode: the cost is one extra remux in ffmpeg);
- transcode: an `IngestTranscoder` starts (one ffmpeg: MPEG-TS on its
  stdin -> libx264 constrained baseline, zerolatency, no B-frames, 2 s
  GOP -> RTP to an RtpUdpIngest on a Unix datagram socket in the same
  private directory), the tap sends it what it held and then each
  datagram as it comes. No port is opened: nothing but the tap can feed
  the encoder. Nothing of the run is lost, so
  viewers get the feed from its first frame, late by the encoder's start
  (a few hundred ms) and its zerolatency delay.

One transcoder per feed, never per viewer; it ends with the run (the tap
lets go of it at the run's end and stop() closes its stdin and reaps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

import ffmpeg

from streaming.ffmpeg_process import FfmpegProcess
from streaming.h264_sps import H264Sps
from streaming.ingest_check import transcode_options
from streaming.lifecycle import Lifecycle
from streaming.rtp_udp_ingest import rtp_output_options

logger = logging.getLogger(__name__)

TS_DATAGRAM = 1316  # 7 TS packets: ffmpeg's usual MPEG-TS over UDP size
HOLD_LIMIT = 16 * 1024 * 1024  # bytes held before a decision (~1 min at 2 Mb/s); beyond: the oldest go


class _TapMode(enum.Enum):
    HOLD = "hold"  # no decision yet for this run
    DROP = "drop"  # copied: nobody needs the TS
    RELAY = "relay"  # to the transcoder


class TsSink(Protocol):
    """Where a relaying tap writes (an IngestTranscoder's stdin)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def tap_output(path: str) -> tuple[str, dict[str, object]]:
    """The (url, muxer and protocol options) of an ffmpeg output (a tee
    slave) that sends the copied video as MPEG-TS datagrams of at most
    TS_DATAGRAM bytes to the tap's Unix datagram socket `path`."""
    # max_delay 0: no 0.7 s of added buffering in the TS muxer
    return f"unix:{path}", {"f": "mpegts", "max_delay": 0, "type": "datagram", "pkt_size": TS_DATAGRAM}


class TsTap(asyncio.DatagramProtocol):
    """Receives one leg's MPEG-TS datagrams on the Unix datagram socket
    `path` (set before start(); its directory must be private; removed on
    close()); holds, drops or relays them (see the module doc)."""

    def __init__(self, name: str, path: str | None = None) -> None:
        self.name = name
        self.path = path
        self._transport: asyncio.DatagramTransport | None = None
        self._mode = _TapMode.HOLD
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._writer: TsSink | None = None
        self.received = 0
        self.relayed = 0

    @property
    def mode(self) -> str:
        return self._mode.value

    async def start(self) -> None:
        assert self.path is not None, f"TsTap({self.name}) has no socket path"
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=self.path, family=socket.AF_UNIX  # type: ignore[arg-type]
        )
        self._transport = transport
        os.chmod(self.path, 0o600)  # the directory already keeps others out; this says so too

    def datagram_received(self, data: bytes, addr: object) -> None:
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
        if self._writer is None:
            return
        self._writer.write(data)
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

    def relay(self, writer: TsSink) -> None:
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
            self._writer.close()  # the run ended: the transcoder gets nothing more
            self._writer = None

    def error_received(self, exc: Exception) -> None:
        logger.debug("TsTap(%s) socket error: %s", self.name, exc)

    def close(self) -> None:
        self._close_writer()
        self._held.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def transcoder_args(rtp_path: str, sps: H264Sps | None) -> list[str]:
    """ffmpeg: MPEG-TS on stdin -> the ingest encode
    (ingest_check.transcode_options) -> RTP to the Unix datagram socket
    `rtp_path`."""
    filters, options = transcode_options(sps)
    # small probe: the held datagrams start at an IDR with its SPS/PPS
    stream = ffmpeg.input("pipe:0", f="mpegts", probesize=500_000, analyzeduration=500_000,
                          fflags="nobuffer")["v:0"]
    for name, kwargs in filters:
        stream = stream.filter(name, **kwargs)
    url, rtp = rtp_output_options("video", 0, rtp_path)
    return stream.output(url, **options, **rtp).get_args()


class _State(enum.Enum):
    NEW = "new"
    ENCODING = "encoding"
    FAILED = "failed"  # the encoder ended by itself while wanted
    STOPPED = "stopped"


class IngestTranscoder(Lifecycle[_State]):
    """One ffmpeg encoding one leg's video; fed by `tap` through its stdin,
    writing RTP to the Unix datagram socket `rtp_path`. start() returns
    once the tap relays to it (the OSError of a child that cannot start
    propagates); `on_failed(description)` is called if the encoder ends by
    itself while wanted; stop() is idempotent and reaps the child.
    States: new -> encoding -> failed | stopped."""

    def __init__(self, name: str, tap: TsTap, rtp_path: str, sps: H264Sps | None, *, ffmpeg_path: str = "",
                 on_failed: Callable[[str], None] | None = None) -> None:
        super().__init__(_State.NEW, f"IngestTranscoder({name})")
        self.name = name
        self._tap = tap
        self._rtp_path = rtp_path
        self._sps = sps
        self._ffmpeg = ffmpeg_path
        self.process: FfmpegProcess | None = None
        self._on_failed = on_failed
        self.started_at = 0.0
        # datagrams on their way to stdin; full: the encoder fell far behind and
        # its decoder resyncs rather than the queue growing
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=HOLD_LIMIT // TS_DATAGRAM)
        self._pump: asyncio.Task[None] | None = None
        self.dropped = 0

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self) -> None:
        self._tap.relay_pending()
        self.process = FfmpegProcess(transcoder_args(self._rtp_path, self._sps), name=self.name,
                                     ffmpeg=self._ffmpeg, loglevel="error", on_state=self._process_state, feed_stdin=True)
        self.started_at = time.monotonic()
        await self.process.start()
        if self.stop_requested or self._state is _State.FAILED:
            return
        self._pump = self._start_task(self._feed(self.process), name=f"{self.name}-stdin")
        self._tap.relay(self)
        self._set_state(_State.ENCODING)
        logger.info("IngestTranscoder(%s) encoding (started in %.2f s)", self.name,
                    time.monotonic() - self.started_at)

    def write(self, data: bytes) -> None:
        """A TS datagram from the tap (TsSink)."""
        if self._pump is None or self._pump.done():
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        """The tap lets go (TsSink): nothing more is fed; stop() ends the child."""
        if self._pump is not None:
            self._pump.cancel()

    async def _feed(self, process: FfmpegProcess) -> None:
        while True:
            data = await self._queue.get()
            try:
                await process.feed(data)
            except ConnectionError:
                return  # the child is gone: _process_state reports it

    def _process_state(self, state: str) -> None:
        if state != "exited" or self.stop_requested or self._state is _State.FAILED or self.process is None:
            return
        self._set_state(_State.FAILED)
        if self._on_failed is not None:
            self._on_failed(self.process.result().describe())

    async def stop(self) -> None:
        """Stop feeding and reap the child. Idempotent; concurrent callers
        await one stop."""
        await super().stop()

    async def _stop(self) -> None:
        self.close()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.process is not None:
            await self.process.stop(grace=0.5)  # stdin closed: ffmpeg flushes and exits
        self._set_state(_State.STOPPED)
