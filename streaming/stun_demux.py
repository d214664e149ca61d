"""First contact on a shared port: which of our ICE agents a STUN request
is for, read from its USERNAME (RFC 8445 s7.2.2: "<recipient's ufrag>:
<sender's ufrag>"). Used by the UDP port (streaming/udp_mux.py) and the
ICE-TCP listener (streaming/ice_tcp.py)."""

from __future__ import annotations

import struct
from typing import Any, Protocol

_MAGIC_COOKIE = 0x2112A442
_USERNAME = 0x0006


class DatagramReceiver(Protocol):
    """What a MuxTransport or a TcpEndpoint delivers to (an aioice StunProtocol)."""

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


def stun_recipient(data: bytes) -> str | None:
    """Our ufrag from a STUN request's USERNAME ("ours:theirs"), or None
    if `data` is not a STUN request with one (RFC 8489 s5, s14.3)."""
    if len(data) < 20 or data[0] > 1 or data[0] & 0x01 or data[1] & 0x10:
        return None  # not a request (class bits C1/C0 both zero)
    length, cookie = struct.unpack_from("!HI", data, 2)
    if cookie != _MAGIC_COOKIE or 20 + length > len(data):
        return None
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        kind, size = struct.unpack_from("!HH", data, pos)
        if kind == _USERNAME:
            if pos + 4 + size > end:
                return None
            try:
                username = data[pos + 4 : pos + 4 + size].decode()
            except UnicodeDecodeError:
                return None
            return username.partition(":")[0]
        pos += 4 + ((size + 3) & ~3)
    return None
