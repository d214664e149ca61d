"""The in-process tee of a forum's encoded program (MPEG-TS over Unix sockets).

All its sockets are Unix stream sockets in the encoder's private (0700)
directory, never loopback TCP ports, which any local user could connect
to (reading a forum's outputs) or write to (injecting into them).

The program encoder (one ffmpeg) connects to `ingest_path` and writes
one MPEG-TS stream (ISO/IEC 13818-1). Every output connects as a client
(ffmpeg's `unix:` protocol) to the shared `url` (restream destinations)
or to an output of its own (`open_output(name)`: HLS, the recorder, so
that `close_output(name)` ends exactly its input: ffmpeg then finishes
its files and exits by itself) and receives its own copy, starting clean: the
current PAT and PMT, then the stream from the next video random access
point (a TS packet with payload_unit_start on the video PID and the
adaptation field's random_access_indicator, 13818-1 2.4.3.5), so every
consumer starts, or resumes after a failure, at a keyframe.

Each consumer has its own socket buffer: one that stops reading is
dropped once `max_buffer` bytes wait for it (its process restarts and
resumes at a keyframe); the encoder and the other consumers never wait
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from streaming.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

TS_PACKET = 188
_SYNC = 0x47
_H264_STREAM_TYPES = {0x1B, 0x24}  # H.264, HEVC


def ts_pid(packet: bytes | memoryview) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def is_random_access(packet: bytes | memoryview) -> bool:
    """payload_unit_start_indicator and random_access_indicator set."""
    if not packet[1] & 0x40:
        return False
    if not packet[3] & 0x20 or packet[4] == 0:  # no adaptation field, or empty
        return False
    return bool(packet[5] & 0x40)


def _section(packet: bytes | memoryview) -> bytes | None:
    """The PSI section in a packet that starts one (pointer_field skipped)."""
    if not packet[1] & 0x40:
        return None
    start = 4
    if packet[3] & 0x20:
        start += 1 + packet[4]
    if start >= TS_PACKET:
        return None
    start += 1 + packet[start]
    return bytes(packet[start:])


def pat_pmt_pid(packet: bytes | memoryview) -> int | None:
    """The first program's PMT PID from a PAT packet (13818-1 2.4.4.3)."""
    sec = _section(packet)
    if sec is None or len(sec) < 12 or sec[0] != 0x00:
        return None
    return ((sec[10] & 0x1F) << 8) | sec[11]


def pmt_video_pid(packet: bytes | memoryview) -> int | None:
    """The video elementary PID from a PMT packet (13818-1 2.4.4.8)."""
    sec = _section(packet)
    if sec is None or len(sec) < 12 or sec[0] != 0x02:
        return None
    section_length = ((sec[1] & 0x0F) << 8) | sec[2]
    end = min(len(sec), 3 + section_length - 4)
    i = 12 + (((sec[10] & 0x0F) << 8) | sec[11])
    while i + 5 <= end:
        stream_type = sec[i]
        pid = ((sec[i + 1] & 0x1F) << 8) | sec[i + 2]
        if stream_type in _H264_STREAM_TYPES:
            return pid
        i += 5 + (((sec[i + 3] & 0x0F) << 8) | sec[i + 4])
    return None


@dataclass
class TeeConsumerStats:
    """One consumer connection: bytes handed to its socket so far."""

    peer: str
    connected_at: float
    sent: int = 0
    started: bool = False  # has had its first keyframe


class _Consumer:
    def __init__(self, writer: asyncio.StreamWriter, peer: str, output: str) -> None:
        self.writer = writer
        self.output = output
        self.stats = TeeConsumerStats(peer, time.time())


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class ProgramTee(Lifecycle[_State]):
    """States: new -> running -> stopped. `directory` must be private
    (0700); the tee's sockets are created in it by `start()`."""

    def __init__(self, name: str, directory: Path, *, max_buffer: int = 8 * 1024 * 1024) -> None:
        super().__init__(_State.NEW, f"ProgramTee({name})")
        self.name = name
        self.directory = directory
        self.max_buffer = max_buffer
        self.ingest_path = directory / "tee-in.sock"
        self._ingest_server: asyncio.Server | None = None
        self._outputs: dict[str, asyncio.Server] = {}  # output name -> its server
        self._consumers: list[_Consumer] = []
        self._ingest_tasks: set[asyncio.Task[None]] = set()
        self._pat: bytes | None = None
        self._pmt: bytes | None = None
        self._pmt_pid: int | None = None
        self._video_pid: int | None = None
        self.bytes_in = 0
        self.keyframes = 0
        self.first_keyframe_at: float | None = None  # time.monotonic() of the program's first keyframe
        self.dropped_consumers = 0

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def url(self) -> str:
        """The shared output (ffmpeg/libavformat URL)."""
        return f"unix:{self._path('program')}"

    def _path(self, output: str) -> Path:
        return self.directory / f"out-{output}.sock"

    async def start(self) -> None:
        assert self._state is _State.NEW, "started twice"
        self._ingest_server = await asyncio.start_unix_server(self._on_ingest, path=str(self.ingest_path))
        self._set_state(_State.RUNNING)
        await self.open_output("program")

    async def open_output(self, name: str) -> str:
        """An output of its own for one consumer (`name`: letters, digits,
        '-', '_'); its URL. Idempotent."""
        assert name.replace("-", "").replace("_", "").isalnum(), f"bad output name {name!r}"
        if name not in self._outputs and self._state is _State.RUNNING:
            self._outputs[name] = await asyncio.start_unix_server(
                lambda r, w: self._on_consumer(r, w, name), path=str(self._path(name)))
        return f"unix:{self._path(name)}"

    def close_output(self, name: str) -> None:
        """End the output `name`: its consumers see end of input, no new
        connection is taken. Idempotent."""
        server = self._outputs.pop(name, None)
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(self._path(name))
        for consumer in tuple(self._consumers):
            if consumer.output == name:
                self._drop(consumer, "ended")

    @property
    def consumers(self) -> list[TeeConsumerStats]:
        return [c.stats for c in self._consumers]

    async def _on_consumer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, output: str) -> None:
        if self._state is not _State.RUNNING or output not in self._outputs:
            writer.close()
            return
        peer = f"{output}#{id(writer) & 0xFFFF:04x}"
        consumer = _Consumer(writer, peer, output)
        self._consumers.append(consumer)
        logger.info("ProgramTee(%s) consumer %s connected", self.name, peer)
        try:
            await reader.read()  # consumers send nothing; EOF when they go
        except (ConnectionError, OSError):
            pass
        finally:
            self._drop(consumer, "disconnected")

    def _drop(self, consumer: _Consumer, why: str) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
            logger.info("ProgramTee(%s) consumer %s %s", self.name, consumer.stats.peer, why)
            consumer.writer.close()

    async def _on_ingest(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._ingest_tasks.add(task)
        rest = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                data = rest + data
                start = data.find(bytes((_SYNC,)))
                if start < 0:
                    rest = b""
                    continue
                whole = start + (len(data) - start) // TS_PACKET * TS_PACKET
                if whole > start:
                    self.feed(data[start:whole])
                rest = data[whole:]
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._ingest_tasks.discard(task)

    def feed(self, chunk: bytes) -> None:
        """Whole TS packets from the encoder: remember the tables, find
        the first random access point, hand the chunk to every consumer."""
        self.bytes_in += len(chunk)
        view = memoryview(chunk)
        first_key = -1
        for offset in range(0, len(chunk), TS_PACKET):
            packet = view[offset:offset + TS_PACKET]
            if packet[0] != _SYNC:
                continue
            pid = ts_pid(packet)
            if pid == 0:
                self._pat = bytes(packet)
                self._pmt_pid = pat_pmt_pid(packet) or self._pmt_pid
            elif pid == self._pmt_pid:
                self._pmt = bytes(packet)
                self._video_pid = pmt_video_pid(packet) or self._video_pid
            elif pid == self._video_pid and is_random_access(packet):
                self.keyframes += 1
                if self.first_keyframe_at is None:
                    self.first_keyframe_at = time.monotonic()
                if first_key < 0:
                    first_key = offset
        for consumer in tuple(self._consumers):
            stats = consumer.stats
            if not stats.started:
                if first_key < 0 or self._pat is None or self._pmt is None:
                    continue
                stats.started = True
                data: bytes | memoryview = self._pat + self._pmt + chunk[first_key:]
            else:
                data = chunk
            transport = consumer.writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() > self.max_buffer:
                self.dropped_consumers += 1
                self._drop(consumer, "too slow: dropped")
                continue
            transport.write(data)
            stats.sent += len(data)

    async def stop(self) -> None:
        """Close both servers and every connection. Idempotent. Concurrent callers
        await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPED)  # at once, as before: nothing new is taken on

    async def _stop(self) -> None:
        if self._ingest_server is not None:
            self._ingest_server.close()
        for name in list(self._outputs):
            self.close_output(name)
        for consumer in tuple(self._consumers):
            self._drop(consumer, "closed")
        for task in tuple(self._ingest_tasks):
            task.cancel()
        await asyncio.gather(*self._ingest_tasks, return_exceptions=True)
