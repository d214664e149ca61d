"""ICE-TCP passive candidates on the shared port's number (RFC 6544), for
peers whose network drops UDP: one TCP listener per ICE address on
`udp_port`, next to its UDP socket (streaming/udp_mux.py).

Each accepted connection carries RFC 4571 frames (a 16-bit big-endian
length, then that many bytes: one STUN, DTLS or SRTP/SRTCP datagram). Its
first frame must be a STUN Binding request whose USERNAME names one of our
ICE agents ("<our ufrag>:<theirs>", RFC 8445 s7.2.2; the same demux as
the UDP port's first contact); otherwise the connection is closed and
counted. From then on the connection belongs to that agent: its frames go
to the agent's `TcpEndpoint` receiver (an aioice StunProtocol) as
datagrams from the connection's remote address, and what the agent sends
to that address goes out framed on it. aioice learns the remote address
as a peer-reflexive candidate from the check (RFC 8445 s7.3.1.3, RFC 6544
s7.2) and pairs it with the passive candidate whose protocol received it.

Bounds: a frame longer than MAX_FRAME closes its connection; at most
MAX_CONNECTIONS per listening address (of which MAX_PENDING not yet
identified), MAX_PER_AGENT per ICE agent; a connection without a valid
first frame after FIRST_FRAME_TIMEOUT seconds is closed; a connection's
write backlog over WRITE_LIMIT drops frames (whole ones: framing stays
intact). Each connection buffers its own partial frame, so a slow or
stalled peer never holds up another. An agent's connections close with it.

When an agent's last connection closes, its protocol hears
connection_lost (aioice then ends the peer if its nominated pair was on
it); a peer that keeps another connection open ends by consent (viewers)
or liveness (publishers) as on UDP. Passive only: the server never
connects out; a peer's active candidates reach us through their checks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from streaming.stun_demux import DatagramReceiver, stun_recipient

logger = logging.getLogger(__name__)

HEADER = 2
"""RFC 4571 s2: the 16-bit length before each frame."""
MAX_FRAME = 1500
"""Bytes of one frame's payload we accept (an Ethernet MTU: browsers keep
DTLS and SRTP under ~1,200); a longer one closes its connection."""
MAX_CONNECTIONS = 4096
"""Open connections per listening address, identified or not."""
MAX_PENDING = 256
"""Connections per listening address whose first frame has not come yet."""
MAX_PER_AGENT = 8
"""Connections one ICE agent may hold (a browser opens one per local
active candidate and our passive one)."""
FIRST_FRAME_TIMEOUT = 5.0
"""Seconds a connection may take to send a STUN request naming an agent."""
WRITE_LIMIT = 1 << 20
"""Bytes queued on one connection beyond which frames to it are dropped
(the fan-out drops video to the next keyframe long before: 64 KB)."""

TYPE_PREFERENCE = 90
"""Host TCP type preference, below UDP host (126) and server-reflexive
(100), as libwebrtc's: a peer prefers any UDP path (RFC 6544 s4.2)."""
PASSIVE_DIRECTION = 4
"""RFC 6544 s4.2 direction-pref of a passive host candidate (active 6, S-O 2)."""


def candidate_priority(component: int, other_preference: int = 8191) -> int:
    """Priority of a passive TCP host candidate, RFC 6544 s4.2: local
    preference = 2^13 * direction-pref + other-pref, in RFC 8445 s5.1.2.1's
    formula with type preference TYPE_PREFERENCE."""
    local_preference = (PASSIVE_DIRECTION << 13) + other_preference
    return (TYPE_PREFERENCE << 24) + (local_preference << 8) + (256 - component)


def frame(data: bytes | bytearray | memoryview) -> bytes:
    """One RFC 4571 frame; raises ValueError over 65,535 bytes."""
    n = len(data)
    if n > 0xFFFF:
        raise ValueError(f"an RFC 4571 frame holds at most 65535 bytes, not {n}")
    return struct.pack("!H", n) + bytes(data)


class TcpEndpoint(asyncio.DatagramTransport):
    """One ICE agent's passive candidate on a listener, as the datagram
    transport aioice's StunProtocol expects: sendto(data, addr) writes a
    frame on the connection from `addr`; close() closes its connections."""

    def __init__(self, listener: IceTcpListener, ufrag: str, receiver: DatagramReceiver) -> None:
        super().__init__()
        self._listener = listener
        self.ufrag = ufrag
        self.receiver = receiver
        self.connections: dict[tuple[str, int], IceTcpConnection] = {}
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        connection = self.connections.get((addr[0], addr[1]))
        if connection is None:  # e.g. a check towards a peer's TCP candidate: we never connect out
            self._listener.dropped["no_connection"] += 1
            return
        connection.send_frame(data)

    def sender_to(self, addr: tuple[str, int]) -> Callable[[Any], None]:
        """send(datagram) to `addr`: a framed write on its connection (the
        fan-out's per-packet call; never raises for a full buffer)."""
        key = (addr[0], addr[1])
        return lambda data: self.sendto(data, key)

    def get_write_buffer_size(self) -> int:
        return sum(c.write_buffer_size() for c in self.connections.values())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._listener.sockname
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._listener.forget(self)
        for connection in list(self.connections.values()):
            connection.close()
        self.connections.clear()
        asyncio.get_running_loop().call_soon(self.receiver.connection_lost, None)

    def abort(self) -> None:
        self.close()


class IceTcpConnection(asyncio.Protocol):
    """One accepted connection: RFC 4571 deframing, then its agent."""

    def __init__(self, listener: IceTcpListener) -> None:
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.endpoint: TcpEndpoint | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # --- asyncio ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1]) if peer else ("", 0)
        listener = self._listener
        if len(listener.connections) >= MAX_CONNECTIONS or listener.pending >= MAX_PENDING:
            listener.dropped["too_many_connections"] += 1
            self._closed = True
            transport.close()
            return
        listener.connections.add(self)
        listener.pending += 1
        self._timer = asyncio.get_running_loop().call_later(FIRST_FRAME_TIMEOUT, self._first_frame_late)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        while not self._closed and end - pos >= HEADER:
            (size,) = struct.unpack_from("!H", buffer, pos)
            if size > MAX_FRAME:
                self._refuse("oversize_frame")
                return
            if end - pos - HEADER < size:
                break  # a partial frame: wait for the rest of this connection's bytes
            payload = bytes(buffer[pos + HEADER : pos + HEADER + size])
            pos += HEADER + size
            self._frame(payload)
        if pos:
            del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._release()

    # --- frames ----------------------------------------------------------

    def _frame(self, payload: bytes) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = self._identify(payload)
            if endpoint is None:
                return
        first = payload[0] if payload else 255
        if not (first < 4 or 19 < first < 64 or 127 < first < 192):
            self._listener.dropped["unclassified"] += 1  # RFC 7983: not STUN, DTLS, RTP/RTCP
            return
        endpoint.receiver.datagram_received(payload, self.remote)

    def _identify(self, payload: bytes) -> TcpEndpoint | None:
        """The agent the first frame's STUN request names, or None (the
        connection is then closed and counted)."""
        ufrag = stun_recipient(payload)
        if ufrag is None:
            self._refuse("first_frame_not_stun")
            return None
        endpoint = self._listener.by_ufrag.get(ufrag)
        if endpoint is None:
            self._refuse("unknown_ufrag")
            return None
        if len(endpoint.connections) >= MAX_PER_AGENT:
            self._refuse("too_many_for_agent")
            return None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._listener.pending -= 1
        self.endpoint = endpoint
        endpoint.connections[self.remote] = self
        return endpoint

    def send_frame(self, data: Any) -> None:
        transport = self.transport
        if self._closed or transport is None:
            return
        if transport.get_write_buffer_size() > WRITE_LIMIT:
            self._listener.dropped["write_backlog"] += 1
            return
        try:
            transport.write(frame(data))
        except ValueError:
            self._listener.dropped["oversize_frame"] += 1

    def write_buffer_size(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None and not self._closed else 0

    # --- ending ----------------------------------------------------------

    def _first_frame_late(self) -> None:
        self._timer = None
        if self.endpoint is None and not self._closed:
            self._refuse("first_frame_timeout")

    def _refuse(self, reason: str) -> None:
        self._listener.dropped[reason] += 1
        logger.debug("ICE-TCP %s from %s:%d: closed", reason, *self.remote)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()
        if self.transport is not None:
            self.transport.close()

    def _release(self) -> None:
        """Free this connection's entries (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        listener = self._listener
        if self in listener.connections:
            listener.connections.discard(self)
            if self.endpoint is None:
                listener.pending -= 1
        endpoint = self.endpoint
        if endpoint is not None and endpoint.connections.get(self.remote) is self:
            del endpoint.connections[self.remote]
            if not endpoint.connections and not endpoint.is_closing():
                # the agent's last connection: its TCP candidate is lost (aioice ends a
                # peer whose nominated pair is on it now, not after consent or liveness)
                asyncio.get_running_loop().call_soon(endpoint.receiver.connection_lost, None)
        self._buffer.clear()


class IceTcpListener:
    """The TCP listener of one ICE address on the shared port number, and
    its demux table (our ufrag -> the agent's endpoint)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.sockname: tuple[str, int] = ("", 0)
        self.by_ufrag: dict[str, TcpEndpoint] = {}
        self.connections: set[IceTcpConnection] = set()
        self.pending = 0
        self.dropped: Counter[str] = Counter()

    @classmethod
    async def open(cls, address: str, port: int) -> IceTcpListener:
        """Listen on (address, port); raises OSError if it is taken."""
        listener = cls()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener.server = await asyncio.get_running_loop().create_server(
            lambda: IceTcpConnection(listener), host=address, port=port, family=family, reuse_address=True)
        name = listener.server.sockets[0].getsockname()
        listener.sockname = (name[0], name[1])
        return listener

    def endpoint(self, ufrag: str, receiver: DatagramReceiver) -> TcpEndpoint:
        """The passive candidate's transport of the agent whose local ufrag
        is `ufrag`; raises OSError if another live agent has it."""
        if ufrag in self.by_ufrag:
            raise OSError(f"ICE ufrag {ufrag!r} already on the ICE-TCP port")
        endpoint = TcpEndpoint(self, ufrag, receiver)
        self.by_ufrag[ufrag] = endpoint
        return endpoint

    def forget(self, endpoint: TcpEndpoint) -> None:
        if self.by_ufrag.get(endpoint.ufrag) is endpoint:
            del self.by_ufrag[endpoint.ufrag]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for connection in list(self.connections):
            connection.close()

    def stats(self) -> dict[str, int]:
        return {"ice_tcp_ufrags": len(self.by_ufrag), "ice_tcp_connections": len(self.connections),
                "ice_tcp_pending": self.pending}
