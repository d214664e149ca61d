"""A viewer's receive counters, from the clear RTP header of each datagram.

The load tester (streaming/light_viewer.py) counts per SSRC: packets,
bytes, the first sequence number and the extended highest one (RFC 3550
A.1, across the 16-bit wrap; loss = expected - received, A.3), RTCP
datagrams (second byte 192..223, RFC 5761 s4), and the monotonic time of
the first video packet. Only what Python must see is handed back: STUN and
DTLS (first byte outside 128..191, RFC 7983 s7) and 1 RTP packet in
`sample_every` for the SRTP check. Datagrams too short for their header
are dropped and counted as `malformed`.

Two implementations with one behaviour: `streaming._rtp_rx.RtpCounter` (C,
built by setup.py; it also drains a socket with recvmmsg) and
`PyRtpCounter` below (the reference, and the fallback when the extension
is not built). `new_counter` picks C unless `FORUMCAST_RX_PYTHON=1`;
`RX_PATH` says which one runs.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

try:
    from streaming import _rtp_rx
except ImportError:  # no C compiler where forumcast was installed: the Python path
    _rtp_rx = None  # type: ignore[assignment]

KIND_NAMES = ("?", "audio", "video")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}
NATIVE = _rtp_rx is not None and os.environ.get("FORUMCAST_RX_PYTHON", "") != "1"
RX_PATH = "C (streaming._rtp_rx, recvmmsg)" if NATIVE else "Python (streaming/rtp_count.py)"

StreamRow = tuple[int, str, int, int, int, int]  # (ssrc, kind, packets, bytes, first_seq, ext_highest)


class RtpCounting(Protocol):
    """What the light viewer reads; both implementations have it."""

    @property
    def rtcp(self) -> int: ...

    @property
    def malformed(self) -> int: ...

    @property
    def first_video_at(self) -> float: ...  # time.monotonic() of the first video packet; 0.0: none

    def feed(self, data: bytes) -> bytes | None:
        """Count one datagram; the datagram back when Python must see it."""

    def streams(self) -> list[StreamRow]:
        """One row per SSRC, in order of first arrival."""


def kind_table(kinds: dict[int, str]) -> bytes:
    """Payload type (0..127) -> kind code, 128 bytes: the C counter's argument."""
    table = bytearray(128)
    for pt, kind in kinds.items():
        if 0 <= pt < 128:
            table[pt] = KIND_CODES.get(kind, 0)
    return bytes(table)


class _Stream:
    __slots__ = ("ssrc", "kind", "packets", "bytes", "first_seq", "ext_highest")

    def __init__(self, ssrc: int, kind: str, seq: int) -> None:
        self.ssrc, self.kind = ssrc, kind
        self.packets = self.bytes = 0
        self.first_seq = self.ext_highest = seq


class PyRtpCounter:
    """The reference implementation (see the module docstring)."""

    def __init__(self, kinds: bytes, sample_every: int) -> None:
        if len(kinds) != 128:
            raise ValueError("kinds: 128 bytes, one per payload type (0 unknown, 1 audio, 2 video)")
        self._kinds = [KIND_NAMES[k] if k < len(KIND_NAMES) else "?" for k in kinds]
        self._streams: dict[int, _Stream] = {}
        self.rtcp = 0
        self.malformed = 0
        self.first_video_at = 0.0
        self.sample_every = max(1, sample_every)
        self._until_check = self.sample_every

    def feed(self, data: bytes) -> bytes | None:
        if not data:
            self.malformed += 1
            return None
        if not 127 < data[0] < 192:
            return data  # STUN or DTLS: aioice's and aiortc's
        if len(data) < 2:
            self.malformed += 1
            return None
        if 191 < data[1] < 224:
            self.rtcp += 1
            return None
        if len(data) < 12:
            self.malformed += 1
            return None
        # no tuple per packet (unpack_from would make one): fewer GC-tracked allocations
        ssrc = int.from_bytes(data[8:12], "big")
        seq = data[2] << 8 | data[3]
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = _Stream(ssrc, self._kinds[data[1] & 0x7F], seq)
            if stream.kind == "video" and not self.first_video_at:
                self.first_video_at = time.monotonic()
        else:
            delta = (seq - stream.ext_highest) & 0xFFFF
            if delta < 0x8000:  # newer (or equal): extend across the 16-bit wrap
                stream.ext_highest += delta
        stream.packets += 1
        stream.bytes += len(data)
        self._until_check -= 1
        if self._until_check == 0:
            self._until_check = self.sample_every
            return data
        return None

    def streams(self) -> list[StreamRow]:
        return [(s.ssrc, s.kind, s.packets, s.bytes, s.first_seq, s.ext_highest) for s in self._streams.values()]


def new_counter(kinds: dict[int, str], sample_every: int, native: bool = NATIVE) -> RtpCounting:
    """The C counter when built (and not switched off), else the Python one."""
    table = kind_table(kinds)
    if native and _rtp_rx is not None:
        counter: RtpCounting = _rtp_rx.RtpCounter(table, sample_every)
        return counter
    return PyRtpCounter(table, sample_every)
