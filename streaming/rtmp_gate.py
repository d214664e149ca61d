"""The venue's RTMP port: an RTMP server for one publisher, which checks
the stream key and hands the media to ffmpeg's stdin as FLV.

Why not ffmpeg's own RTMP listener behind a proxy (what this was): its
listener accepts ANY app and stream name (a wrong one only logs
"Unexpected stream X", checked with the imageio ffmpeg 9 binary), and its
loopback port is visible in `ps`, so anyone on the machine could publish
to it directly, skipping the key check. A random internal key would not
help (the listener ignores the name), and a listener bound before the gate
connects leaves a window. So there is no internal listener at all: this
gate is the RTMP server (Adobe RTMP specification 1.0: handshake 5.2,
chunk stream 5.3, protocol control 5.4, NetConnection connect and
createStream 7.2.1, NetStream publish 7.2.2), and once the publisher named
the right key it writes the publisher's audio, video and metadata
messages as FLV tags into a sink (`FlvSink`: the venue's ffmpeg started
with `-f flv -i pipe:0`). Only the server holds the write end of that
pipe. What a wrong key sends never reaches ffmpeg: ffmpeg does not even
run until a publish is accepted.

Refused: bytes that are not RTMP, a wrong key in releaseStream, FCPublish
or publish, a second publisher while one is connected. Closed: a
publisher silent for `idle_timeout`, or whose sink went away (ffmpeg
ended: the encoder sees the close and reconnects). The key is never
logged.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from streaming.lifecycle import Lifecycle
from streaming.rtmp_codec import (
    ACKNOWLEDGEMENT,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    DATA_AMF3,
    FLV_HEADER,
    HANDSHAKE_SIZE,
    RTMP_VERSION,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    VIDEO,
    WINDOW_ACK_SIZE,
    RtmpChunkReader,
    RtmpMessage,
    RtmpProtocolError,
    amf0_encode,
    chunk_message,
    command_of,
    flv_script_body,
    flv_tag,
    stream_name,
)

logger = logging.getLogger(__name__)

_NAMING_COMMANDS = ("releaseStream", "FCPublish", "publish")
_END_COMMANDS = ("FCUnpublish", "deleteStream", "closeStream")
_OUT_CHUNK_SIZE = 4096
_WINDOW = 2_500_000  # bytes: our Window Acknowledgement Size and Set Peer Bandwidth
_PUBLISH_STREAM_ID = 1


class FlvSink(Protocol):
    """Where an accepted publisher's FLV goes (header first, then tags)."""

    async def write(self, data: bytes) -> None:
        """Raises ConnectionError once the consumer is gone."""

    async def close(self) -> None:
        """End of the stream (the publisher left). Idempotent."""


class _State(enum.Enum):
    NEW = "new"
    LISTENING = "listening"
    STOPPED = "stopped"


class _Refused(Exception):
    pass


class RtmpKeyGate(Lifecycle[_State]):
    """Listens on `host`:`port` for one RTMP publisher at a time. A
    publisher whose stream name is `stream_key` gets `on_publish()`'s sink
    (awaited once the key is checked) and its media goes there as FLV.
    `on_refused(reason)` is called for each refused connection.
    States: new -> listening -> stopped."""

    def __init__(
        self,
        port: int,
        stream_key: str,
        on_publish: Callable[[], Awaitable[FlvSink]],
        *,
        name: str = "rtmp",
        idle_timeout: float = 10.0,
        on_refused: Callable[[str], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(_State.NEW, f"RtmpKeyGate({name})")
        self.host = host
        self.port = port
        self.name = name
        self._key = stream_key
        self._on_publish = on_publish
        self._idle_timeout = idle_timeout
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._session: asyncio.Task[None] | None = None
        self.refused = 0
        self.accepted = 0

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def listening(self) -> bool:
        return self._state is _State.LISTENING

    async def start(self) -> None:
        """Bind the port. Raises OSError (e.g. the address is in use)."""
        assert self._state is _State.NEW
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self._set_state(_State.LISTENING)

    async def stop(self) -> None:
        """Close the port and any session. Idempotent. Concurrent callers
        await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPED)  # at once, as before: nothing new is taken on

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._session is not None:
            self._session.cancel()
            try:
                await self._session
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        logger.warning("RtmpKeyGate(%s) refused a publisher: %s", self.name, reason)
        if self._on_refused is not None:
            try:
                self._on_refused(reason)
            except Exception:
                logger.exception("RtmpKeyGate(%s) refusal callback failed", self.name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._state is not _State.LISTENING or (self._session is not None and not self._session.done()):
            self._refuse("another publisher is connected")
            writer.close()
            return
        self._session = asyncio.current_task()
        session = _Session(self, reader, writer)
        try:
            await session.run()
        except _Refused as refused:
            self._refuse(str(refused))
        except RtmpProtocolError as error:
            self._refuse(f"bad RTMP: {error}")
        except asyncio.TimeoutError:
            logger.warning("RtmpKeyGate(%s) publisher silent for %.0fs: closing", self.name, self._idle_timeout)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            await session.close()


class _Session:
    """One publisher's connection, from the handshake to the end."""

    def __init__(self, gate: RtmpKeyGate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gate = gate
        self.reader = reader
        self.writer = writer
        self.sink: FlvSink | None = None
        self.received = 0
        self.acked = 0
        self.peer_window = 0  # the publisher's Window Acknowledgement Size: ack every this many bytes

    async def _read(self, size: int | None = None) -> bytes:
        timeout = self.gate._idle_timeout
        if size is None:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        else:
            data = await asyncio.wait_for(self.reader.readexactly(size), timeout)
        self.received += len(data)
        return data

    async def _send(self, csid: int, type_id: int, body: bytes, stream_id: int = 0) -> None:
        self.writer.write(chunk_message(csid, type_id, body, stream_id=stream_id, chunk_size=_OUT_CHUNK_SIZE))
        await self.writer.drain()

    async def run(self) -> None:
        c0c1 = await self._read(1 + HANDSHAKE_SIZE)
        if c0c1[0] != RTMP_VERSION:
            raise RtmpProtocolError(f"not RTMP (version byte {c0c1[0]})")
        # S0, S1 (our time, zero, random), S2 (C1 echoed): the simple handshake of section 5.2
        s1 = struct.pack(">II", int(time.monotonic() * 1000) & 0xFFFFFFFF, 0) + os.urandom(HANDSHAKE_SIZE - 8)
        self.writer.write(bytes([RTMP_VERSION]) + s1 + c0c1[1:])
        await self.writer.drain()
        await self._read(HANDSHAKE_SIZE)  # C2
        chunks = RtmpChunkReader()
        while True:
            data = await self._read()
            if not data:
                return
            for message in chunks.feed(data):
                if not await self._handle(message):
                    return
            if self.peer_window and self.received - self.acked >= self.peer_window:
                self.acked = self.received
                await self._send(2, ACKNOWLEDGEMENT, (self.received & 0xFFFFFFFF).to_bytes(4, "big"))

    async def _handle(self, message: RtmpMessage) -> bool:
        """Act on one message; False ends the session."""
        if message.type_id in (AUDIO, VIDEO):
            if self.sink is not None:
                await self.sink.write(flv_tag(message.type_id, message.timestamp, message.body))
            return True
        if message.type_id in (DATA_AMF0, DATA_AMF3):
            body = flv_script_body(message)
            if self.sink is not None and body is not None:
                await self.sink.write(flv_tag(DATA_AMF0, message.timestamp, body))
            return True
        if message.type_id == WINDOW_ACK_SIZE and len(message.body) >= 4:
            self.peer_window = int.from_bytes(message.body[:4], "big")
            return True
        command = command_of(message)
        if command is None:
            return True  # user control, acknowledgements, AMF3 objects: nothing to do
        name, values = command
        transaction = values[0] if values and isinstance(values[0], float) else 0.0
        if name in _NAMING_COMMANDS and stream_name(values) != self.gate._key:
            raise _Refused(f"wrong stream key in {name}")  # never logged: it may be a near miss
        if name == "connect":
            await self._send(2, WINDOW_ACK_SIZE, _WINDOW.to_bytes(4, "big"))
            await self._send(2, SET_PEER_BANDWIDTH, _WINDOW.to_bytes(4, "big") + b"\x02")
            await self._send(2, SET_CHUNK_SIZE, _OUT_CHUNK_SIZE.to_bytes(4, "big"))
            await self._send(3, COMMAND_AMF0, amf0_encode(
                "_result", transaction, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                {"level": "status", "code": "NetConnection.Connect.Success",
                 "description": "Connection succeeded.", "objectEncoding": 0}))
        elif name == "createStream":
            await self._send(3, COMMAND_AMF0, amf0_encode("_result", transaction, None, _PUBLISH_STREAM_ID))
        elif name in ("releaseStream", "FCPublish"):
            await self._send(3, COMMAND_AMF0, amf0_encode("_result", transaction, None))
        elif name == "publish":
            if self.sink is not None:
                raise _Refused("a second publish on one connection")
            try:
                self.sink = await self.gate._on_publish()
            except Exception as error:
                logger.error("RtmpKeyGate(%s) cannot take the publisher: %s", self.gate.name, error)
                await self._status("error", "NetStream.Publish.BadName", "the server cannot take the stream now")
                return False
            await self.sink.write(FLV_HEADER)
            self.gate.accepted += 1
            logger.info("RtmpKeyGate(%s) publisher accepted", self.gate.name)
            await self._status("status", "NetStream.Publish.Start", "publishing")
        elif name in _END_COMMANDS:
            return self.sink is None  # the publisher is done: end the stream (before it, harmless)
        return True

    async def _status(self, level: str, code: str, description: str) -> None:
        await self._send(5, COMMAND_AMF0, amf0_encode(
            "onStatus", 0.0, None, {"level": level, "code": code, "description": description}),
            stream_id=_PUBLISH_STREAM_ID)

    async def close(self) -> None:
        if self.sink is not None:
            try:
                await self.sink.close()
            except Exception:
                logger.exception("RtmpKeyGate(%s) closing the sink failed", self.gate.name)
        self.writer.close()
