"""RTCP sender reports for the fast path: packed with struct, no objects.

aiortc's own report loop (one task per sender, building report objects and
awaiting its send chain) is replaced by the media plane's housekeeping,
which reports each downtrack's true counts about once a second.
"""

from __future__ import annotations

import struct

_SR = struct.Struct("!BBHIQIII")  # V=2 RC=0, PT=200, length, ssrc, ntp, rtp, packets, octets
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def ntp_time(unix_seconds: float) -> int:
    seconds = unix_seconds + _NTP_EPOCH_OFFSET
    whole = int(seconds)
    return (whole << 32) | int((seconds - whole) * (1 << 32))


def ntp_to_unix(ntp: int) -> float:
    """A 64-bit NTP timestamp as unix seconds."""
    return (ntp >> 32) - _NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def sdes_cname(ssrc: int, cname: str) -> bytes:
    """An SDES packet with one CNAME chunk (RFC 3550 6.5)."""
    value = cname.encode("utf8")[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(value)) + value + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def sender_report(ssrc: int, unix_seconds: float, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    """An SR with no report blocks, for the packet sent at `unix_seconds`
    with `rtp_timestamp`."""
    return _SR.pack(
        0x80, 200, 6, ssrc, ntp_time(unix_seconds), rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF, octets & 0xFFFFFFFF,
    )
