"""The one place the load tester (light viewers) reaches aiortc/aioice private names.

Tested on aiortc_internals.TESTED's versions only: any other fails loudly
at import, and a missing name fails loudly at first use (and in
aiortc_internals.check()), rather than letting the load tester silently
measure nothing.
"""

from __future__ import annotations

import asyncio

import socket
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from streaming.aiortc_internals import TESTED

# the server's pins (one list: streaming/aiortc_internals.py; its PRIVATE_NAMES cover this module too)
for _name in ("aiortc", "aioice"):
    if version(_name) != TESTED[_name]:
        raise RuntimeError(f"streaming/wire_path.py was written for {_name} {TESTED[_name]}, found {version(_name)}")

DatagramHandler = Callable[[bytes, tuple[Any, ...]], None]


@dataclass
class WirePath:
    """A connected peer's socket side: the nominated pair's protocol and its peer address."""

    dtls: RTCDtlsTransport
    protocol: StunProtocol
    remote_addr: tuple[str, int]

    def rx_srtp(self) -> pylibsrtp.Session | None:
        """Set by aiortc once DTLS completes; None before."""
        return self.dtls._rx_srtp

    def tx_srtp(self) -> pylibsrtp.Session | None:
        return self.dtls._tx_srtp

    def send(self, datagram: bytes) -> None:
        self.protocol.transport.sendto(datagram, self.remote_addr)

    def aioice_handler(self) -> DatagramHandler:
        """aioice's own handler: STUN to its agent, anything else to the DTLS transport."""
        return self.protocol.datagram_received

    def take_socket(self) -> socket.socket:
        """Stop the event loop reading this socket and return it; sending through
        asyncio keeps working, and closing the transport later is unaffected."""
        transport = self.protocol.transport
        sock: socket.socket = transport._sock  # type: ignore[attr-defined]
        transport._loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]
        return sock

    def take_datagrams(self, handler: DatagramHandler) -> DatagramHandler:
        """Route every datagram of this socket to `handler`; return aioice's own handler,
        which the caller must keep calling for STUN (consent) and DTLS."""
        original: DatagramHandler = self.protocol.datagram_received
        self.protocol.datagram_received = handler  # type: ignore[method-assign,assignment]
        return original


def dtls_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The (bundled) DTLS transport of a peer connection with at least one transceiver."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise RuntimeError("peer connection has no transceiver")
    return transceivers[0].receiver.transport


def stop_decoder_threads(pc: RTCPeerConnection) -> None:
    """aiortc starts a decoder thread per receiver; a viewer that never hands it a
    packet does not need it (300 viewers would keep 600 idle threads)."""
    for transceiver in pc.getTransceivers():
        stop = getattr(transceiver.receiver, "_RTCRtpReceiver__stop_decoder", None)
        if stop is None:
            raise RuntimeError("aiortc private names moved: update streaming/wire_path.py")
        stop()


async def stop_receiver_rtcp(pc: RTCPeerConnection, timeout: float = 5.0) -> None:
    """aiortc's receivers wake every 0.5-1.5 s to build receiver reports; one that
    never sees a packet has none to send, so the wake-ups are pure cost (two per
    viewer per second; the light viewers send their own). aiortc starts each loop
    just after DTLS connects; wait for that (at most `timeout` s), then cancel it:
    the loop ends on the cancel, so RTCRtpReceiver.stop() still finds it exited."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if not hasattr(receiver, "_RTCRtpReceiver__rtcp_task") or not hasattr(receiver, "_RTCRtpReceiver__rtcp_started"):
            raise RuntimeError("aiortc private names moved: update streaming/wire_path.py")
        try:
            # stop() waits for the loop's start before its exit: never cancel one not started
            await asyncio.wait_for(receiver._RTCRtpReceiver__rtcp_started.wait(), timeout)
        except asyncio.TimeoutError:
            continue
        task = receiver._RTCRtpReceiver__rtcp_task
        if task is not None:
            task.cancel()


def wire_path(pc: RTCPeerConnection) -> WirePath:
    """Valid once ICE has nominated a pair (iceConnectionState 'completed' or later)."""
    dtls = dtls_transport(pc)
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if pair is None:
        raise RuntimeError("ICE has no nominated pair yet")
    transport = getattr(pair.protocol, "transport", None)
    if not hasattr(dtls, "_rx_srtp") or not hasattr(transport, "_sock") or not hasattr(transport, "_loop"):
        raise RuntimeError("aiortc/aioice private names moved: update streaming/wire_path.py")
    return WirePath(dtls=dtls, protocol=pair.protocol, remote_addr=pair.remote_addr)
