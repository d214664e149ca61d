"""RTMP chunk stream, AMF0 and FLV bytes (no sockets)."""

from __future__ import annotations

import pytest

from streaming.rtmp_codec import (
    AUDIO,
    DATA_AMF0,
    FLV_HEADER,
    MAX_MESSAGE,
    VIDEO,
    RtmpChunkReader,
    RtmpMessage,
    RtmpProtocolError,
    amf0_encode,
    amf0_values,
    chunk_message,
    command_of,
    flv_script_body,
    flv_tag,
)


def test_amf0_round_trips_what_the_gate_writes() -> None:
    values = ["_result", 1.0, None, {"level": "status", "code": "NetStream.Publish.Start", "n": 2.0, "ok": True}]
    assert amf0_values(amf0_encode(*values)) == values


def test_timestamps_follow_header_types_0_to_3_and_extended_ones() -> None:
    """RTMP 1.0 section 5.3.1.2: type 0 is absolute, types 1 and 2 add a
    delta, a type 3 header that starts a message adds the last delta; a
    0xFFFFFF field means a 4-byte extended timestamp follows."""
    csid = 6
    first = chunk_message(csid, VIDEO, b"a" * 10, stream_id=1, timestamp=1000)
    type1 = bytes([0x40 | csid]) + (40).to_bytes(3, "big") + (5).to_bytes(3, "big") + bytes([AUDIO]) + b"b" * 5
    type2 = bytes([0x80 | csid]) + (20).to_bytes(3, "big") + b"c" * 5  # same length and type
    type3 = bytes([0xC0 | csid]) + b"d" * 5  # a new message: adds the last delta (20)
    extended = chunk_message(7, VIDEO, b"e" * 300, stream_id=1, timestamp=0x1234567, chunk_size=128)
    reader = RtmpChunkReader()
    data = first + type1 + type2 + type3 + extended
    got: list[RtmpMessage] = []
    for at in range(0, len(data), 3):  # in pieces
        got += reader.feed(data[at:at + 3])
    assert [(m.type_id, m.timestamp, m.stream_id, m.body[:1], len(m.body)) for m in got] == [
        (VIDEO, 1000, 1, b"a", 10), (AUDIO, 1040, 1, b"b", 5), (AUDIO, 1060, 1, b"c", 5),
        (AUDIO, 1080, 1, b"d", 5), (VIDEO, 0x1234567, 1, b"e", 300)]


def test_set_chunk_size_applies_to_what_follows() -> None:
    reader = RtmpChunkReader()
    body = amf0_encode("publish", 5.0, None, "k" * 300, "live")
    data = chunk_message(2, 1, (4096).to_bytes(4, "big")) + chunk_message(8, 20, body, stream_id=1, chunk_size=4096)
    (_, publish) = reader.feed(data)
    assert command_of(publish) == ("publish", [5.0, None, "k" * 300, "live"])


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    header = bytes([3]) + bytes(3) + (MAX_MESSAGE + 1).to_bytes(3, "big") + bytes([VIDEO]) + bytes(4)
    with pytest.raises(RtmpProtocolError):
        RtmpChunkReader().feed(header)


def test_flv_tags_and_metadata() -> None:
    """FLV 10.1 annex E: 11-byte tag header (type, size, timestamp with its
    high byte last, stream id 0), body, then the previous tag size."""
    tag = flv_tag(VIDEO, 0x01020304, b"xyz")
    assert tag == bytes([9, 0, 0, 3, 0x02, 0x03, 0x04, 0x01, 0, 0, 0]) + b"xyz" + (14).to_bytes(4, "big")
    assert FLV_HEADER[:3] == b"FLV" and len(FLV_HEADER) == 13
    meta = amf0_encode("@setDataFrame", "onMetaData", {"width": 320.0})
    body = flv_script_body(RtmpMessage(DATA_AMF0, 0, 1, meta))
    assert body is not None and amf0_values(body) == ["onMetaData", {"width": 320.0}]
    assert flv_script_body(RtmpMessage(DATA_AMF0, 0, 1, amf0_encode("onCuePoint"))) is None
