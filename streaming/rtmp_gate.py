"""A stream-key check in front of ffmpeg's RTMP listener.

ffmpeg's RTMP server (`-listen 1`) accepts ANY app and stream name: a wrong
one only logs "Unexpected stream X, expecting Y" and the media is taken
(checked with the imageio ffmpeg 9 binary). So the venue's public RTMP
port is this gate, not ffmpeg: it accepts the encoder's TCP connection,
opens one to ffmpeg (listening on a private loopback port) and copies
bytes both ways, while reading the encoder's side just far enough to find
the stream name it names in releaseStream / FCPublish / publish. A wrong
name closes both connections before ffmpeg sees that command; the right
one turns the gate into a plain copy. Only one publisher at a time: while
one is connected, further connections are closed at once.

Parsing is the RTMP chunk stream (handshake, basic/message headers,
extended timestamps, Set Chunk Size) and enough AMF0 to read a command's
name and string arguments; nothing is rewritten.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_HANDSHAKE_BYTES = 1 + 1536 + 1536  # C0, C1, C2
_NAMING_COMMANDS = ("releaseStream", "FCPublish", "publish")
_MAX_MESSAGE = 1 << 20  # a command this large is not an encoder's


class RtmpProtocolError(ValueError):
    pass


@dataclass
class _ChunkStream:
    length: int = 0
    type_id: int = 0
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)


def _amf0_values(data: bytes, limit: int = 8) -> list[object]:
    """The first `limit` AMF0 values of a command (objects as dicts of
    their simple values)."""
    values: list[object] = []
    offset = 0

    def read(at: int) -> tuple[object, int]:
        marker = data[at]
        at += 1
        if marker == 0x00:
            return struct.unpack_from(">d", data, at)[0], at + 8
        if marker == 0x01:
            return bool(data[at]), at + 1
        if marker == 0x02:
            (size,) = struct.unpack_from(">H", data, at)
            return data[at + 2:at + 2 + size].decode("utf-8", "replace"), at + 2 + size
        if marker == 0x0C:
            (size,) = struct.unpack_from(">I", data, at)
            return data[at + 4:at + 4 + size].decode("utf-8", "replace"), at + 4 + size
        if marker in (0x05, 0x06):
            return None, at
        if marker in (0x03, 0x08):
            if marker == 0x08:
                at += 4  # ECMA array: a count, then like an object
            result: dict[str, object] = {}
            while True:
                (size,) = struct.unpack_from(">H", data, at)
                key = data[at + 2:at + 2 + size].decode("utf-8", "replace")
                at += 2 + size
                if data[at] == 0x09:
                    return result, at + 1
                result[key], at = read(at)
        if marker == 0x0A:
            (count,) = struct.unpack_from(">I", data, at)
            at += 4
            items = []
            for _ in range(count):
                item, at = read(at)
                items.append(item)
            return items, at
        if marker == 0x0B:
            return struct.unpack_from(">d", data, at)[0], at + 10
        raise RtmpProtocolError(f"AMF0 marker {marker:#x} not understood")

    try:
        while offset < len(data) and len(values) < limit:
            value, offset = read(offset)
            values.append(value)
    except (struct.error, IndexError) as error:
        raise RtmpProtocolError(f"truncated AMF0: {error}") from None
    return values


class RtmpCommandReader:
    """Reads the client's side of an RTMP connection and reports each AMF
    command as (name, values). Feed it bytes in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._handshake_left = _HANDSHAKE_BYTES
        self._chunk_size = 128
        self._streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes) -> list[tuple[str, list[object]]]:
        self._buffer += data
        if self._handshake_left:
            skipped = min(self._handshake_left, len(self._buffer))
            if self._handshake_left == _HANDSHAKE_BYTES and skipped and self._buffer[0] != 3:
                raise RtmpProtocolError(f"not RTMP (version byte {self._buffer[0]})")
            del self._buffer[:skipped]
            self._handshake_left -= skipped
            if self._handshake_left:
                return []
        commands: list[tuple[str, list[object]]] = []
        while (parsed := self._chunk()) is not None:
            if parsed:
                commands.append(parsed)
        return commands

    def _chunk(self) -> tuple[str, list[object]] | tuple[()] | None:
        """One chunk off the buffer: a finished command, () for any other
        chunk, None when the buffer holds no whole chunk yet."""
        buf = self._buffer
        if not buf:
            return None
        fmt, csid, at = buf[0] >> 6, buf[0] & 0x3F, 1
        if csid == 0:
            if len(buf) < 2:
                return None
            csid, at = 64 + buf[1], 2
        elif csid == 1:
            if len(buf) < 3:
                return None
            csid, at = 64 + buf[1] + 256 * buf[2], 3
        header = (11, 7, 3, 0)[fmt]
        if len(buf) < at + header:
            return None
        stream = self._streams.setdefault(csid, _ChunkStream())
        timestamp = int.from_bytes(buf[at:at + 3], "big") if fmt < 3 else 0
        if fmt <= 1:
            length = int.from_bytes(buf[at + 3:at + 6], "big")
            type_id = buf[at + 6]
        else:
            length, type_id = stream.length, stream.type_id
        extended = timestamp == 0xFFFFFF if fmt < 3 else stream.extended
        at += header + (4 if extended else 0)
        if fmt < 3 and stream.body:
            stream.body.clear()  # a new message header mid-message: start over
        if length > _MAX_MESSAGE:
            raise RtmpProtocolError(f"message of {length} bytes")
        take = min(self._chunk_size, length - len(stream.body))
        if len(buf) < at + take:
            return None
        stream.length, stream.type_id, stream.extended = length, type_id, extended
        stream.body += buf[at:at + take]
        del buf[:at + take]
        if len(stream.body) < length:
            return ()
        body = bytes(stream.body)
        stream.body.clear()
        if type_id == 1 and len(body) >= 4:  # Set Chunk Size
            self._chunk_size = max(1, int.from_bytes(body[:4], "big") & 0x7FFFFFFF)
        elif type_id in (20, 17):  # AMF0 command, or AMF3 command (a 0 byte then AMF0)
            values = _amf0_values(body[1:] if type_id == 17 else body)
            if values and isinstance(values[0], str):
                return values[0], values[1:]
        return ()


def stream_name(values: list[object]) -> str | None:
    """The stream name argument of releaseStream/FCPublish/publish
    (values after the command name: transaction id, null, name, ...)."""
    name = values[2] if len(values) > 2 and isinstance(values[2], str) else None
    return name.split("?", 1)[0] if name is not None else None


class _State(enum.Enum):
    NEW = "new"
    LISTENING = "listening"
    STOPPED = "stopped"


class RtmpKeyGate:
    """Listens on `host`:`port`; proxies a publisher whose stream name is
    `stream_key` to ffmpeg on 127.0.0.1:`upstream_port()`. `on_refused(reason)` is
    called for each refused connection."""

    def __init__(
        self,
        port: int,
        stream_key: str,
        upstream_port: Callable[[], int],
        *,
        name: str = "rtmp",
        idle_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        on_refused: Callable[[str], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self._key = stream_key
        self._upstream_port = upstream_port
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._session: asyncio.Task[None] | None = None
        self._state = _State.NEW
        self.refused = 0
        self.accepted = 0

    @property
    def state(self) -> str:
        return self._state.value

    def _set_state(self, state: _State) -> None:
        if state is not self._state:
            logger.info("RtmpKeyGate(%s) %s -> %s", self.name, self._state.value, state.value)
            self._state = state

    async def start(self) -> None:
        assert self._state is _State.NEW
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self._set_state(_State.LISTENING)

    async def stop(self) -> None:
        """Close the port and any session. Idempotent."""
        if self._state is _State.STOPPED:
            return
        self._set_state(_State.STOPPED)
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
        try:
            await self._proxy(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while loop.time() < deadline:  # ffmpeg may be restarting right now
            try:
                return await asyncio.open_connection("127.0.0.1", self._upstream_port())
            except OSError:
                await asyncio.sleep(0.1)  # retry the listener; nothing to await on a process's bind
        return None

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect_upstream()
        if upstream is None:
            logger.error("RtmpKeyGate(%s) ffmpeg is not listening: dropping the publisher", self.name)
            return
        up_reader, up_writer = upstream
        back = asyncio.create_task(self._copy(up_reader, writer))
        commands = RtmpCommandReader()
        checking = True
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), self._idle_timeout)
                if not data:
                    break
                if checking:
                    try:
                        found = commands.feed(data)
                    except RtmpProtocolError as error:
                        self._refuse(f"bad RTMP: {error}")
                        return
                    for command, values in found:
                        if command in _NAMING_COMMANDS:
                            name = stream_name(values)
                            if name != self._key:
                                self._refuse(f"wrong stream key in {command}")
                                return  # this data, with the wrong name, never reaches ffmpeg
                            if command == "publish":
                                checking = False
                                self.accepted += 1
                                logger.info("RtmpKeyGate(%s) publisher accepted", self.name)
                up_writer.write(data)
                await up_writer.drain()
        except asyncio.TimeoutError:
            logger.warning("RtmpKeyGate(%s) publisher silent for %.0fs: closing", self.name, self._idle_timeout)
        except ConnectionError:
            pass
        finally:
            back.cancel()
            up_writer.close()
            try:
                await back
            except asyncio.CancelledError:
                pass

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()  # ffmpeg went away: the publisher must see it and reconnect
