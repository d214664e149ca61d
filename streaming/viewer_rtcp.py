"""What a viewer sends us, read without aiortc: its SRTCP feedback.

Once a viewer's DTLS is connected, its RTP/RTCP datagrams (first byte
128-191, RFC 7983) come here straight from the socket (see
aiortc_internals.route_srtp); STUN and DTLS still go to aioice/aiortc. We
unprotect with the viewer's receive keys and read only what we act on:

- NACK (RTPFB fmt 1): resent from the source's history (Downtrack.retransmit)
- PLI / FIR (PSFB fmt 1 / 4): a keyframe request, coalesced per source
- RR / SR report blocks: the latest loss and jitter per downtrack (stats)

Everything else (REMB, SDES, BYE, XR, a recvonly viewer's stray RTP) is
counted and dropped. Nothing here allocates RTCP objects.
"""

from __future__ import annotations

from collections.abc import Callable

from streaming.downtrack import Downtrack

_SR, _RR, _RTPFB, _PSFB = 200, 201, 205, 206
_NACK, _PLI, _FIR = 1, 1, 4


class ViewerRtcp:
    """One viewer's feedback: `datagram(data)` per SRTCP datagram."""

    __slots__ = (
        "_unprotect", "_by_ssrc", "received", "rejected", "ignored", "malformed",
        "nacks", "keyframe_requests", "reports", "loss",
    )

    def __init__(self, unprotect: Callable[[bytes], bytes | None], downtracks: list[Downtrack]) -> None:
        self._unprotect = unprotect
        self._by_ssrc = {dt.ssrc: dt for dt in downtracks}
        self.received = 0  # SRTCP datagrams that authenticated
        self.rejected = 0  # failed SRTCP authentication or replay check: dropped
        self.ignored = 0  # SRTP (not RTCP) from a recvonly viewer: dropped
        self.malformed = 0  # compound packets cut short
        self.nacks = 0
        self.keyframe_requests = 0
        self.reports = 0
        # ssrc -> (fraction lost /256, cumulative lost, jitter) from its latest report block
        self.loss: dict[int, tuple[int, int, int]] = {}

    def datagram(self, data: bytes) -> None:
        if len(data) < 8 or not 191 < data[1] < 224:  # RTCP packet types 192..223 (RFC 5761)
            self.ignored += 1
            return
        clear = self._unprotect(data)
        if clear is None:
            self.rejected += 1
            return
        self.received += 1
        self._parse(clear)

    def _parse(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos + 8 <= end:
            first, pt = data[pos], data[pos + 1]
            size = ((data[pos + 2] << 8 | data[pos + 3]) + 1) * 4
            if first >> 6 != 2 or pos + size > end:
                self.malformed += 1
                return
            fmt = first & 0x1F
            if pt == _RTPFB and fmt == _NACK:
                self._nack(data, pos, size)
            elif pt == _PSFB and fmt == _PLI:
                self._keyframe(int.from_bytes(data[pos + 8:pos + 12], "big"))
            elif pt == _PSFB and fmt == _FIR:
                # FIR names its media in each FCI entry (RFC 5104 4.3.1)
                for at in range(pos + 12, pos + size - 7, 8):
                    self._keyframe(int.from_bytes(data[at:at + 4], "big"))
            elif pt == _RR or pt == _SR:
                self._report_blocks(data, pos, size, fmt, 8 if pt == _RR else 28)
            pos += size

    def _nack(self, data: bytes, pos: int, size: int) -> None:
        dt = self._by_ssrc.get(int.from_bytes(data[pos + 8:pos + 12], "big"))
        if dt is None:
            return
        lost: list[int] = []
        for at in range(pos + 12, pos + size - 3, 4):
            pid = data[at] << 8 | data[at + 1]
            blp = data[at + 2] << 8 | data[at + 3]
            lost.append(pid)
            bit = 0
            while blp:
                if blp & 1:
                    lost.append((pid + bit + 1) & 0xFFFF)
                blp >>= 1
                bit += 1
        self.nacks += 1
        dt.retransmit(lost)

    def _keyframe(self, media_ssrc: int) -> None:
        dt = self._by_ssrc.get(media_ssrc)
        lane = dt.lane if dt is not None else None
        if lane is not None:
            self.keyframe_requests += 1
            lane.request_keyframe()

    def _report_blocks(self, data: bytes, pos: int, size: int, count: int, offset: int) -> None:
        self.reports += 1
        at = pos + offset
        for _ in range(count):
            if at + 24 > pos + size:
                return
            ssrc = int.from_bytes(data[at:at + 4], "big")
            if ssrc in self._by_ssrc:
                lost = int.from_bytes(data[at + 5:at + 8], "big", signed=True)
                jitter = int.from_bytes(data[at + 12:at + 16], "big")
                self.loss[ssrc] = (data[at + 4], lost, jitter)
            at += 24
