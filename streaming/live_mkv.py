"""A live Matroska stream, written by hand: the program's frames as they
come (H.264 Annex B access units, Opus packets), no re-encode.

Why Matroska: the program encoder's ffmpeg must read the program over a
pipe or a Unix socket (a loopback RTP port takes forged packets from any
local user), and ffmpeg's RTP demuxer only reads UDP ports named in an
SDP. Matroska carries both codecs with their timestamps, is read from a
pipe, and is simple to write live (EBML, RFC 8794; Matroska, RFC 9559):
a Segment of unknown size, then one Cluster per frame holding one
SimpleBlock.

H.264 goes as Annex B with SPS/PPS in band before each IDR (no
CodecPrivate: ffmpeg's decoder then reads Annex B and takes size
changes from the in-band SPS); Opus as A_OPUS with its OpusHead
(RFC 7845 5.1) as CodecPrivate. Timestamps are in ms (TimestampScale
1 000 000 ns).

Pure: no I/O. `header()` once per stream, then `frame()` per frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VIDEO = 1  # track numbers
AUDIO = 2
_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def _vint(size: int) -> bytes:
    """An EBML variable-size integer (RFC 8794 4.1), shortest form that is
    not the all-ones "unknown" value."""
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"EBML element too large: {size}")


def _element(element_id: int, payload: bytes) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + _vint(len(payload)) + payload


def _uint(element_id: int, value: int) -> bytes:
    return _element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _text(element_id: int, value: str) -> bytes:
    return _element(element_id, value.encode("ascii"))


def _float(element_id: int, value: float) -> bytes:
    return _element(element_id, struct.pack(">d", value))


def opus_head(channels: int = 2, rate: int = 48000) -> bytes:
    """The OpusHead identification header (RFC 7845 5.1), mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, rate, 0, 0)


@dataclass(frozen=True)
class Track:
    number: int  # VIDEO or AUDIO
    kind: str  # "video" | "audio"
    codec_id: str  # "V_MPEG4/ISO/AVC", "V_VP8", "A_OPUS"


PROGRAM_TRACKS = (Track(VIDEO, "video", "V_MPEG4/ISO/AVC"), Track(AUDIO, "audio", "A_OPUS"))


def header(tracks: tuple[Track, ...] = PROGRAM_TRACKS) -> bytes:
    """EBML header, the Segment start (unknown size: a live stream), its
    Info and Tracks."""
    ebml = _element(0x1A45DFA3, b"".join((
        _uint(0x4286, 1), _uint(0x42F7, 1), _uint(0x42F2, 4), _uint(0x42F3, 8),
        _text(0x4282, "matroska"), _uint(0x4287, 4), _uint(0x4285, 2),
    )))
    info = _element(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _text(0x4D80, "forumcast") + _text(0x5741, "forumcast"))
    entries = []
    for track in tracks:
        body = [_uint(0xD7, track.number), _uint(0x73C5, track.number), _uint(0x9C, 0),
                _uint(0x83, 1 if track.kind == "video" else 2), _text(0x86, track.codec_id)]
        if track.codec_id == "A_OPUS":
            body += [_element(0x63A2, opus_head()), _uint(0x56BB, 80_000_000),
                     _element(0xE1, _float(0xB5, 48000.0) + _uint(0x9F, 2))]
        entries.append(_element(0xAE, b"".join(body)))
    tracks_element = _element(0x1654AE6B, b"".join(entries))
    return ebml + b"\x18\x53\x80\x67" + _UNKNOWN_SIZE + info + tracks_element


def frame(track: int, ms: int, data: bytes, key: bool) -> bytes:
    """One Cluster (Timestamp `ms`) holding one SimpleBlock of `track`."""
    block = _vint(track) + b"\x00\x00" + (b"\x80" if key else b"\x00") + data
    return _element(0x1F43B675, _uint(0xE7, max(0, ms)) + _element(0xA3, block))
