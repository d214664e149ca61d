"""ICE on one UDP port: one socket per host address, shared by every peer
connection of the node (setting `udp_port`), so a firewall opens one port.

Each ICE agent's local candidate on that address gets a `MuxTransport`, an
asyncio datagram transport that writes through the shared socket with the
peer's address. Incoming datagrams are handed to one of them:

- a STUN request names its recipient in USERNAME ("<our ufrag>:<theirs>",
  RFC 8445 s7.2.2): routed by our ufrag (first contact), and its source
  address is then remembered for that agent;
- anything else (STUN responses, DTLS, SRTP/SRTCP) is routed by its source
  address, known from a STUN request it sent or from a datagram the agent
  sent to it (its checks, RFC 8445 s7.2.4);
- the first byte classes the datagram (RFC 7983 s7: 0-3 STUN, 20-63 DTLS,
  128-191 RTP/RTCP); any other first byte, a STUN request for an unknown
  ufrag and anything from an unknown address are dropped and counted.

The agent's own handler then splits STUN, DTLS and SRTP as it does on a
socket of its own. Limits: a remote transport address belongs to one of
our agents at a time (a peer multiplexing several of its connections onto
one port towards this node would see only the last one that sent a
request). The same port number also takes ICE-TCP (RFC 6544) passive
connections when `SharedPort(tcp=True)`: streaming/ice_tcp.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from streaming.ice_tcp import IceTcpListener
from streaming.stun_demux import DatagramReceiver, stun_recipient

__all__ = ["DatagramReceiver", "MuxTransport", "SharedPort", "UdpMux", "stun_recipient"]

logger = logging.getLogger(__name__)

SEND_BUFFER = 4 << 20
"""Bytes of kernel send and receive buffer asked for on a shared socket:
every peer of the address queues behind it, so it is the per-connection
default times many. Linux caps SO_RCVBUF/SO_SNDBUF at net.core.rmem_max /
wmem_max (212992 on a stock Debian): root's SO_*BUFFORCE goes past the
cap; otherwise the size got is logged with the sysctl to raise."""
DRAIN_MAX = 256
"""Datagrams read per wake-up of the shared socket. asyncio's datagram
transport reads ONE per event-loop iteration, which is fine for a socket
per peer but slows the one socket every peer shares to the loop's
iteration rate, however long iterations get (joins' DTLS handshakes, a
fan-out to many viewers). bench/scale.py saw an edge's shared socket
overflow at 600 viewers (its pull of the origin lost 7-18%); draining
per wake-up is needed for that, though one stepped run still showed
drops with it (docs/DESIGN.md, "one port")."""
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux, <asm-generic/socket.h>; not in the socket module


def _size_buffer(sock: socket.socket, option: int, force: int, name: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, SEND_BUFFER)  # past the sysctl cap (CAP_NET_ADMIN)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
    got = sock.getsockopt(socket.SOL_SOCKET, option) // 2  # the kernel reports twice what it grants
    if got < SEND_BUFFER:
        sysctl = "net.core.rmem_max" if name == "receive" else "net.core.wmem_max"
        logger.warning("the shared UDP port's %s buffer is %d KB, not %d: raise %s (sysctl -w %s=%d)",
                       name, got >> 10, SEND_BUFFER >> 10, sysctl, sysctl, SEND_BUFFER)


class SharedSocketTransport(asyncio.DatagramTransport):
    """The shared socket's own asyncio side: it drains up to DRAIN_MAX
    datagrams per wake-up into the mux, and sendto() writes at once or,
    when the kernel buffer is full, queues (in order) until it drains."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, mux: UdpMux) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._mux = mux
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._queued = 0
        self._closing = False
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        received = self._mux.datagram_received
        for _ in range(DRAIN_MAX):
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on Linux
                self._mux.error_received(exc)
                continue
            received(data, addr)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._write_ready)
            except OSError as exc:
                self._mux.error_received(exc)
                return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)

    def _write_ready(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._mux.error_received(exc)
            self._queue.popleft()
            self._queued -= len(data)
        self._loop.remove_writer(self._sock.fileno())

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        if self._queue:
            self._loop.remove_writer(fd)
            self._queue.clear()
        self._sock.close()

    def abort(self) -> None:
        self.close()


class MuxTransport(asyncio.DatagramTransport):
    """One ICE agent's view of the shared socket: sendto() goes out of it
    with the peer's address; close() frees this agent's demux entries."""

    def __init__(self, mux: UdpMux, ufrag: str, receiver: DatagramReceiver) -> None:
        super().__init__()
        self._mux = mux
        self.ufrag = ufrag
        self.receiver = receiver
        self.addresses: set[tuple[str, int]] = set()
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        key = (addr[0], addr[1])
        if key not in self.addresses:
            self._mux.learn(key, self, override=False)
        self._mux.transport.sendto(data, key)

    def sender_to(self, addr: tuple[str, int]) -> Callable[[Any], int]:
        """send(datagram) to `addr` straight on the shared socket (the
        fast path; raises BlockingIOError when the kernel buffer is full,
        the caller then goes through sendto())."""
        sendto = self._mux.sock.sendto
        key = (addr[0], addr[1])
        return lambda data: sendto(data, key)  # type: ignore[no-any-return]

    def fileno(self) -> int:
        """The shared socket's descriptor (the C fan-out sends on it with sendmmsg)."""
        return self._mux.sock.fileno()

    def get_write_buffer_size(self) -> int:
        return self._mux.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.sockname
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._mux.forget(self)
        asyncio.get_running_loop().call_soon(self.receiver.connection_lost, None)

    def abort(self) -> None:
        self.close()


class UdpMux(asyncio.DatagramProtocol):
    """The shared socket of one host address and its demux tables."""

    def __init__(self) -> None:
        self.transport: SharedSocketTransport = None  # type: ignore[assignment]
        self.sock: socket.socket = None  # type: ignore[assignment]
        self.sockname: tuple[str, int] = ("", 0)
        self.by_ufrag: dict[str, MuxTransport] = {}
        self.by_address: dict[tuple[str, int], MuxTransport] = {}
        self.dropped: Counter[str] = Counter()

    @classmethod
    async def open(cls, address: str, port: int) -> UdpMux:
        """Bind (address, port); raises OSError if it is taken."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
            sock.setblocking(False)
            _size_buffer(sock, socket.SO_SNDBUF, _SO_SNDBUFFORCE, "send")
            _size_buffer(sock, socket.SO_RCVBUF, _SO_RCVBUFFORCE, "receive")
        except OSError:
            sock.close()
            raise
        mux = cls()
        mux.sock = sock  # ours: the fast path sends on it directly
        mux.connection_made(SharedSocketTransport(asyncio.get_running_loop(), sock, mux))
        return mux

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        name = transport.get_extra_info("sockname")
        self.sockname = (name[0], name[1])

    def endpoint(self, ufrag: str, receiver: DatagramReceiver) -> MuxTransport:
        """The transport of a new local candidate of the agent whose local
        ufrag is `ufrag` (unique per agent: aioice draws 4 random chars,
        and a collision is refused rather than misrouted)."""
        if ufrag in self.by_ufrag:
            raise OSError(f"ICE ufrag {ufrag!r} already on the shared port")
        transport = MuxTransport(self, ufrag, receiver)
        self.by_ufrag[ufrag] = transport
        return transport

    def learn(self, addr: tuple[str, int], transport: MuxTransport, override: bool) -> None:
        current = self.by_address.get(addr)
        if current is transport or (current is not None and not override):
            return
        if current is not None:
            current.addresses.discard(addr)
        self.by_address[addr] = transport
        transport.addresses.add(addr)

    def forget(self, transport: MuxTransport) -> None:
        for addr in transport.addresses:
            if self.by_address.get(addr) is transport:
                del self.by_address[addr]
        transport.addresses.clear()
        if self.by_ufrag.get(transport.ufrag) is transport:
            del self.by_ufrag[transport.ufrag]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        first = data[0] if data else 255
        key = (addr[0], addr[1])
        if first < 4:
            ufrag = stun_recipient(data)
            if ufrag is not None:
                target = self.by_ufrag.get(ufrag)
                if target is None:
                    self.dropped["stun_unknown_ufrag"] += 1
                    return
                self.learn(key, target, override=True)
                target.receiver.datagram_received(data, key)
                return
        elif not (19 < first < 64 or 127 < first < 192):
            self.dropped["unclassified"] += 1  # RFC 7983: not STUN, DTLS, RTP/RTCP
            return
        target = self.by_address.get(key)
        if target is None:
            self.dropped["unknown_address"] += 1
            return
        target.receiver.datagram_received(data, key)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from one peer must not disturb the others
        self.dropped["icmp_error"] += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SharedPort:
    """The node's shared sockets, one per host address, all on `port`:
    UDP, and with `tcp` an ICE-TCP listener on the same number."""

    def __init__(self, port: int, tcp: bool = False) -> None:
        self.port = port
        self.tcp = tcp
        self.muxes: dict[str, UdpMux] = {}
        self.listeners: dict[str, IceTcpListener] = {}

    async def open(self, addresses: list[str]) -> None:
        """Bind `port` on each address (UDP, and TCP with `tcp`); raises
        OSError naming the first that cannot be bound (closing the ones
        already bound)."""
        kind = "udp_port"
        try:
            for address in addresses:
                kind = "udp_port"
                self.muxes[address] = await UdpMux.open(address, self.port)
                if self.tcp:
                    kind = "ICE-TCP port"
                    self.listeners[address] = await IceTcpListener.open(address, self.port)
        except OSError as exc:
            self.close()
            raise OSError(f"{kind} {self.port} on {address}: {exc}") from exc
        logger.info("ICE on one UDP port%s: %d on %s", " and ICE-TCP" if self.tcp else "", self.port,
                    ", ".join(addresses))

    def close(self) -> None:
        for mux in self.muxes.values():
            mux.close()
        self.muxes.clear()
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()

    def dropped(self) -> tuple[tuple[str, int], ...]:
        """(reason, datagrams or TCP connections dropped) since start,
        summed over addresses; ICE-TCP reasons start with "tcp_"."""
        total: Counter[str] = Counter()
        for mux in self.muxes.values():
            total.update(mux.dropped)
        for listener in self.listeners.values():
            total.update({f"tcp_{reason}": count for reason, count in listener.dropped.items()})
        return tuple(sorted(total.items()))

    def stats(self) -> dict[str, int]:
        """Demux table sizes and what was dropped, summed over addresses."""
        out: Counter[str] = Counter()
        for mux in self.muxes.values():
            out["udp_mux_ufrags"] += len(mux.by_ufrag)
            out["udp_mux_addresses"] += len(mux.by_address)
            for reason, count in mux.dropped.items():
                out[f"udp_mux_dropped_{reason}"] += count
        for listener in self.listeners.values():
            out.update(listener.stats())
            for reason, count in listener.dropped.items():
                out[f"ice_tcp_dropped_{reason}"] += count
        return dict(out)
