"""H.264 RTP payloads (RFC 6184, packetization-mode 1) back into Annex B
access units, for outputs that hand the program to a muxer instead of
an RTP reader.

Single NAL unit packets (types 1-23, RFC 6184 5.6), STAP-A (24, 5.7.1)
and FU-A (28, 5.8) are handled; a fragmented NAL unit with a missing
fragment (a sequence-number gap) is dropped whole, so the decoder sees
a missing slice rather than a corrupt one. An access unit ends at the
marker bit or when the timestamp changes (5.1).

Pure: no I/O, no clock.
"""

from __future__ import annotations

START_CODE = b"\x00\x00\x00\x01"
IDR = 5


class H264Depacketizer:
    """`push(payload, seq, ts, marker)` returns the access units it
    completed (usually none or one), each `(ts, annex_b_bytes, idr)`."""

    __slots__ = ("_nals", "_ts", "_fu", "_last_seq")

    def __init__(self) -> None:
        self._nals: list[bytes] = []
        self._ts: int | None = None
        self._fu: bytearray | None = None  # the fragmented NAL unit being rebuilt
        self._last_seq: int | None = None

    def push(self, payload: bytes, seq: int, ts: int, marker: bool) -> list[tuple[int, bytes, bool]]:
        done = []
        if self._ts is not None and ts != self._ts:
            self._fu = None
            if self._nals:
                done.append(self._flush())  # the previous unit ended without its marker
        gap = self._last_seq is not None and (seq - self._last_seq) & 0xFFFF != 1
        self._last_seq = seq
        self._ts = ts
        if gap:
            self._fu = None
        if payload:
            self._add(payload)
        if marker and self._nals:
            done.append(self._flush())
        return done

    def _add(self, payload: bytes) -> None:
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            self._nals.append(payload)
        elif nal_type == 24:  # STAP-A: 16-bit size, NAL unit, ...
            i = 1
            while i + 2 <= len(payload):
                size = int.from_bytes(payload[i:i + 2], "big")
                if size == 0 or i + 2 + size > len(payload):
                    break
                self._nals.append(payload[i + 2:i + 2 + size])
                i += 2 + size
        elif nal_type == 28 and len(payload) > 2:  # FU-A
            fu_header = payload[1]
            if fu_header & 0x80:  # start: rebuild the NAL header
                self._fu = bytearray(((payload[0] & 0xE0) | (fu_header & 0x1F),))
            if self._fu is None:
                return  # a middle or end without its start: dropped
            self._fu += payload[2:]
            if fu_header & 0x40:  # end
                self._nals.append(bytes(self._fu))
                self._fu = None

    def _flush(self) -> tuple[int, bytes, bool]:
        assert self._ts is not None
        nals, self._nals = self._nals, []
        idr = any(nal[0] & 0x1F == IDR for nal in nals)
        return self._ts, b"".join(START_CODE + nal for nal in nals), idr
