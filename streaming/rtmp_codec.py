"""RTMP and FLV bytes, without sockets: the chunk stream, AMF0, FLV tags.

What the venue's key gate (rtmp_gate.py) needs to be an RTMP server for
one publisher and hand its media to ffmpeg as FLV:

- `RtmpChunkReader`: the client's chunk stream (Adobe RTMP specification
  1.0, section 5.3: basic and message headers of types 0-3, extended
  timestamps, Set Chunk Size from 5.4.1) reassembled into messages with
  absolute timestamps (ms).
- `chunk_message()`: one message as chunks (type 0 header, then type 3).
- AMF0 (Adobe AMF0 specification): `amf0_values()` reads numbers,
  booleans, strings, null/undefined, objects, ECMA and strict arrays,
  dates; `amf0_encode()` writes numbers, booleans, strings, null, objects.
- FLV (Adobe FLV specification 10.1, annex E): `FLV_HEADER` and
  `flv_tag()`; an RTMP audio (8), video (9) or data (18) message body is
  an FLV tag body as is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

HANDSHAKE_SIZE = 1536  # C1, C2, S1, S2 (section 5.2)
RTMP_VERSION = 3
MAX_MESSAGE = 1 << 22  # 4 MiB: a video frame is smaller; a bigger message is not an encoder's

# message type ids (sections 5.4, 7.1)
SET_CHUNK_SIZE, ACKNOWLEDGEMENT, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0 = 8, 9, 15, 17, 18, 20


class RtmpProtocolError(ValueError):
    """Bytes that are not the RTMP (or AMF0) we understand."""


@dataclass(frozen=True)
class RtmpMessage:
    type_id: int
    timestamp: int  # ms, absolute, 32 bits
    stream_id: int  # message stream id
    body: bytes


# --- AMF0 ----------------------------------------------------------------------


def amf0_values(data: bytes, limit: int = 8) -> list[object]:
    """The first `limit` AMF0 values of `data` (objects as dicts of their
    values). Raises RtmpProtocolError on a marker not understood or
    truncated data."""
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


def amf0_encode(*values: object) -> bytes:
    """AMF0 for numbers (int/float), booleans, strings, None (null) and
    dicts (objects) of those."""
    out = bytearray()
    for value in values:
        if value is None:
            out += b"\x05"
        elif isinstance(value, bool):
            out += b"\x01" + bytes([value])
        elif isinstance(value, (int, float)):
            out += b"\x00" + struct.pack(">d", float(value))
        elif isinstance(value, str):
            raw = value.encode()
            out += b"\x02" + struct.pack(">H", len(raw)) + raw
        elif isinstance(value, dict):
            out += b"\x03"
            for key, item in value.items():
                raw = key.encode()
                out += struct.pack(">H", len(raw)) + raw + amf0_encode(item)
            out += b"\x00\x00\x09"
        else:
            raise TypeError(f"no AMF0 for {type(value).__name__}")
    return bytes(out)


# --- the chunk stream ---------------------------------------------------------------


@dataclass
class _ChunkStream:
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    timestamp: int = 0  # of the message being read or last read
    delta: int = 0  # what a type 3 header that starts a message adds
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)


class RtmpChunkReader:
    """Reassembles the messages of one side's chunk stream (after the
    handshake). Feed bytes in order; each call returns the messages
    completed. Set Chunk Size is applied as it is read (and returned)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._chunk_size = 128
        self._streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes) -> list[RtmpMessage]:
        self._buffer += data
        messages: list[RtmpMessage] = []
        while (parsed := self._chunk()) is not None:
            if isinstance(parsed, RtmpMessage):
                messages.append(parsed)
        return messages

    def _chunk(self) -> RtmpMessage | bool | None:
        """One chunk off the buffer: a completed message, True for a chunk
        that completed none, None when the buffer holds no whole chunk."""
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
        stream = self._streams.get(csid) or _ChunkStream()  # a first header of type 1-3 counts from 0
        field3 = int.from_bytes(buf[at:at + 3], "big") if fmt < 3 else 0
        extended = field3 == 0xFFFFFF if fmt < 3 else stream.extended
        end = at + header + (4 if extended else 0)
        if len(buf) < end:
            return None
        if extended:
            field3 = int.from_bytes(buf[at + header:end], "big")
        length, type_id, stream_id = stream.length, stream.type_id, stream.stream_id
        if fmt <= 1:
            length = int.from_bytes(buf[at + 3:at + 6], "big")
            type_id = buf[at + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[at + 7:at + 11], "little")
        if length > MAX_MESSAGE:
            raise RtmpProtocolError(f"message of {length} bytes")
        starts = not stream.body or fmt < 3  # a new message header mid-message starts over
        take = min(self._chunk_size, length - (0 if starts else len(stream.body)))
        if len(buf) < end + take:
            return None
        self._streams[csid] = stream
        if starts:
            stream.body.clear()
            if fmt == 0:
                stream.timestamp, stream.delta = field3, 0
            elif fmt in (1, 2):
                stream.delta = field3
                stream.timestamp = (stream.timestamp + field3) & 0xFFFFFFFF
            else:
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
        stream.length, stream.type_id, stream.stream_id, stream.extended = length, type_id, stream_id, extended
        stream.body += buf[end:end + take]
        del buf[:end + take]
        if len(stream.body) < length:
            return True
        message = RtmpMessage(type_id, stream.timestamp, stream_id, bytes(stream.body))
        stream.body.clear()
        if type_id == SET_CHUNK_SIZE and len(message.body) >= 4:
            self._chunk_size = max(1, int.from_bytes(message.body[:4], "big") & 0x7FFFFFFF)
        return message


def command_of(message: RtmpMessage) -> tuple[str, list[object]] | None:
    """(name, values after the name) of an AMF0/AMF3 command message, else None."""
    if message.type_id not in (COMMAND_AMF0, COMMAND_AMF3):
        return None
    values = amf0_values(message.body[1:] if message.type_id == COMMAND_AMF3 else message.body)
    if values and isinstance(values[0], str):
        return values[0], values[1:]
    return None


class RtmpCommandReader:
    """The commands a client sends, from the first byte (C0) on: skips the
    handshake, reports each AMF command as (name, values)."""

    def __init__(self) -> None:
        self._handshake_left = 1 + 2 * HANDSHAKE_SIZE  # C0, C1, C2
        self._chunks = RtmpChunkReader()

    def feed(self, data: bytes) -> list[tuple[str, list[object]]]:
        if self._handshake_left:
            if self._handshake_left == 1 + 2 * HANDSHAKE_SIZE and data and data[0] != RTMP_VERSION:
                raise RtmpProtocolError(f"not RTMP (version byte {data[0]})")
            skipped = min(self._handshake_left, len(data))
            self._handshake_left -= skipped
            data = data[skipped:]
        found = [command_of(message) for message in self._chunks.feed(data)]
        return [command for command in found if command is not None]


def stream_name(values: list[object]) -> str | None:
    """The stream name argument of releaseStream/FCPublish/publish (values
    after the command name: transaction id, null, name, ...), without a
    query string."""
    name = values[2] if len(values) > 2 and isinstance(values[2], str) else None
    return name.split("?", 1)[0] if name is not None else None


def chunk_message(csid: int, type_id: int, body: bytes, *, stream_id: int = 0, timestamp: int = 0,
                  chunk_size: int = 128) -> bytes:
    """`body` as chunks on chunk stream `csid` (2-63): a type 0 header,
    then a type 3 header before each further `chunk_size` bytes."""
    assert 2 <= csid <= 63
    out = bytearray([csid])
    out += min(timestamp, 0xFFFFFF).to_bytes(3, "big") + len(body).to_bytes(3, "big") + bytes([type_id])
    out += stream_id.to_bytes(4, "little")
    if timestamp >= 0xFFFFFF:
        out += timestamp.to_bytes(4, "big")
    for at in range(0, len(body), chunk_size):
        if at:
            out.append(0xC0 | csid)
            if timestamp >= 0xFFFFFF:
                out += timestamp.to_bytes(4, "big")
        out += body[at:at + chunk_size]
    return bytes(out)


# --- FLV ------------------------------------------------------------------------------

# signature, version 1, audio and video present, header size 9; then PreviousTagSize0 = 0
FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4)


def flv_tag(type_id: int, timestamp: int, body: bytes) -> bytes:
    """One FLV tag (audio 8, video 9, script data 18) and the
    PreviousTagSize that follows it. `timestamp` in ms (32 bits)."""
    timestamp &= 0xFFFFFFFF
    header = (bytes([type_id]) + len(body).to_bytes(3, "big") + (timestamp & 0xFFFFFF).to_bytes(3, "big")
              + bytes([timestamp >> 24]) + bytes(3))
    return header + body + (len(header) + len(body)).to_bytes(4, "big")


_SET_DATA_FRAME = amf0_encode("@setDataFrame")


def flv_script_body(message: RtmpMessage) -> bytes | None:
    """The FLV script tag body of a data message an encoder sends
    ("@setDataFrame", "onMetaData", {...}: the first value dropped), or
    None for data that is not metadata."""
    body = message.body[1:] if message.type_id == DATA_AMF3 else message.body
    if body.startswith(_SET_DATA_FRAME):
        body = body[len(_SET_DATA_FRAME):]
    return body if body.startswith(amf0_encode("onMetaData")) else None
