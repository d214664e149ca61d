"""Every reach into aiortc's, aioice's and pylibsrtp's private names.

forumcast keeps aiortc for ICE, DTLS and SDP and owns the per-packet path.
That needs a handful of private names (the SRTP session, the nominated ICE
pair, the receiver's jitter buffer, the sender's RTCP counters). They all
live here, pinned to the versions this was tested with; `check()` runs at
MediaPlane.start() and raises RuntimeError naming whatever moved.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextvars
import logging
import queue
import time
import weakref
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
import aioice.utils
import aiortc
import pylibsrtp
import pylibsrtp._binding
from aiortc import RTCIceTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import rtcrtpreceiver as _rtcrtpreceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from streaming import ice_tcp
from streaming.ice_tcp import TcpEndpoint
from streaming.udp_mux import MuxTransport, SharedPort

logger = logging.getLogger(__name__)

TESTED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
"""The versions this module was tested with; pyproject.toml pins exactly
these (tests/streaming/test_aiortc_internals.py holds the two together)."""


@dataclass(frozen=True)
class PrivateName:
    """One private name this module or wire_path.py (the load tester's
    light viewer) reads, replaces or calls, and what for. `owner` is a
    module or a class (probed on a real instance, `_instances()`, since
    many names are set in __init__)."""

    owner: object
    name: str
    why: str


_mangled_receiver = "_RTCRtpReceiver__"
_mangled_sender = "_RTCRtpSender__"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # ICE (aioice)
    PrivateName(aioice.ice, "get_host_addresses", "restricts gathering to ice_addresses"),
    PrivateName(aioice.ice, "Connection", "the ICE agent (aioice.ice, not its public re-export)"),
    PrivateName(aioice.ice, "StunProtocol", "the shared port's host candidates"),
    PrivateName(aioice.ice, "Candidate", "the shared port's host candidates"),
    PrivateName(aioice.ice, "candidate_foundation", "the shared port's host candidates"),
    PrivateName(aioice.ice, "candidate_priority", "the shared port's host candidates"),
    PrivateName(aioice.utils, "random_string", "a fresh ufrag when two agents drew the same"),
    PrivateName(aioice.ice.StunProtocol, "datagram_received", "viewers' SRTCP straight to ViewerRtcp"),
    PrivateName(aioice.ice.Connection, "get_component_candidates", "the shared port's host candidates"),
    PrivateName(aioice.ice.Connection, "local_username", "the ufrag that routes first contact"),
    PrivateName(aioice.ice.Connection, "_local_username", "a fresh ufrag"),
    PrivateName(aioice.ice.Connection, "_protocols", "the shared port's host candidates"),
    PrivateName(aioice.ice.Connection, "check_incoming", "ICE-TCP: a check on a connection pairs its "
                "peer-reflexive address with the passive candidate (we rely on its behaviour)"),
    PrivateName(aioice.ice.Connection, "_nominated", "the nominated pair a viewer is sent on"),
    PrivateName(aioice.ice.Connection, "query_consent", "publisher liveness instead of RFC 7675 consent"),
    PrivateName(aioice.ice.Connection, "_query_consent_task", "publisher liveness"),
    PrivateName(aioice.ice.Connection, "data_received", "publisher liveness"),
    PrivateName(aioice.ice.Connection, "request_received", "publisher liveness"),
    PrivateName(RTCIceTransport, "_connection", "the ICE connection under an aiortc transport"),
    # DTLS / SRTP (aiortc, pylibsrtp)
    PrivateName(RTCDtlsTransport, "_tx_srtp", "the SRTP session viewers' packets are protected with"),
    PrivateName(RTCDtlsTransport, "_rx_srtp", "unprotecting viewers' SRTCP"),
    PrivateName(pylibsrtp.Session, "_srtp", "srtp_protect called without pylibsrtp's wrapper"),
    PrivateName(pylibsrtp.Session, "_cdata", "the session's buffer, protected in place"),
    PrivateName(pylibsrtp.Session, "_buffer", "the session's buffer, protected in place"),
    PrivateName(pylibsrtp, "_binding", "pylibsrtp's cffi binding of libsrtp"),
    PrivateName(pylibsrtp._binding, "lib", "libsrtp's C functions"),
    PrivateName(pylibsrtp._binding, "ffi", "libsrtp's C types"),
    PrivateName(_srtp_lib, "srtp_protect", "SRTP protect, per packet per viewer"),
    PrivateName(_srtp_lib, "srtp_protect_rtcp", "SRTCP protect of our sender reports"),
    PrivateName(_srtp_ffi, "new", "the length argument of srtp_protect"),
    PrivateName(_srtp_ffi, "addressof", "srtp_protect's address for the C fan-out (streaming._fanout)"),
    PrivateName(_srtp_ffi, "cast", "an srtp_t's address for the C fan-out"),
    # receivers (publishers): taken before the jitter buffer, never decoded
    PrivateName(RTCRtpReceiver, _mangled_receiver + "jitter_buffer", "publishers' packets are taken at its door"),
    PrivateName(RTCRtpReceiver, _mangled_receiver + "decoder_queue", "marks a receiver that must never decode"),
    PrivateName(RTCRtpReceiver, _mangled_receiver + "stop_decoder", "the light viewer stops aiortc's decoder"),
    PrivateName(RTCRtpReceiver, _mangled_receiver + "rtcp_task", "the light viewer cancels aiortc's idle RTCP loop"),
    PrivateName(RTCRtpReceiver, _mangled_receiver + "rtcp_started", "... once it has started"),
    PrivateName(RTCRtpReceiver, "_handle_rtcp_packet", "publishers' sender reports (capture clock)"),
    PrivateName(RTCRtpReceiver, "_send_rtcp_pli", "keyframe requests to a publisher"),
    PrivateName(_rtcrtpreceiver, "decoder_worker", "the decoder thread's body, refused for our receivers"),
    # senders (viewers): forumcast sends, aiortc only negotiates
    PrivateName(RTCRtpSender, "_ssrc", "the SSRC in the answer"),
    PrivateName(RTCRtpSender, "_handle_rtcp_packet", "NACK and PLI from viewers"),
    PrivateName(RTCRtpSender, "_run_rtcp", "aiortc's per-sender RTCP task, replaced"),
    PrivateName(RTCRtpSender, _mangled_sender + "rtcp_started", "the replaced RTCP task's events"),
    PrivateName(RTCRtpSender, _mangled_sender + "rtcp_exited", "the replaced RTCP task's events"),
    PrivateName(RTCRtpTransceiver, "_codecs", "the negotiated codecs"),
    # asyncio: the nominated pair's socket, connect()ed
    PrivateName(asyncio.selector_events, "_SelectorDatagramTransport", "the UDP transport under aioice"),
    PrivateName(_SelectorDatagramTransport, "_sock", "the socket send() goes through"),
    PrivateName(_SelectorDatagramTransport, "_loop", "the light viewer's reader"),
    PrivateName(asyncio.selector_events.BaseSelectorEventLoop, "_remove_reader", "the light viewer takes the socket"),
)


def _instances() -> dict[type, object]:
    """Real objects of the probed classes: names assigned in __init__ exist
    only on instances. No network; aiortc wants an event loop (its
    futures), so a sync caller gets a short-lived one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(_async_instances())
        finally:
            loop.close()
    return _build_instances()


async def _async_instances() -> dict[type, object]:
    return _build_instances()


def _build_instances() -> dict[type, object]:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("video")
    dtls = transceiver.receiver.transport
    ice = dtls.transport
    return {
        RTCRtpTransceiver: transceiver,
        RTCRtpReceiver: transceiver.receiver,
        RTCRtpSender: transceiver.sender,
        RTCDtlsTransport: dtls,
        RTCIceTransport: ice,
        aioice.ice.Connection: ice._connection,
        pylibsrtp.Session: pylibsrtp.Session(),
    }


def _present(owner: object, name: str, instances: dict[type, object]) -> bool:
    if not isinstance(owner, type):
        return hasattr(owner, name)
    probe = instances.get(owner)
    if probe is not None:
        return hasattr(probe, name)
    # only the owner's own package counts: StunProtocol.datagram_received must be
    # aioice's override, not asyncio.DatagramProtocol's empty one
    package = owner.__module__.split(".")[0]
    mro = [cls for cls in owner.__mro__ if cls.__module__.split(".")[0] == package]
    if any(name in vars(cls) for cls in mro):
        return True
    # no probe (asyncio's transport needs a loop and a socket): assigned in an __init__
    return any(name in getattr(vars(cls).get("__init__"), "__code__", _NO_CODE).co_names for cls in mro)


_NO_CODE = (lambda: None).__code__


def _owner_name(owner: object) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return getattr(owner, "__name__", repr(owner))


def missing_names() -> list[PrivateName]:
    """The PRIVATE_NAMES the installed aiortc/aioice/pylibsrtp lack."""
    try:
        instances = _instances()
    except Exception:  # a moved name broke aiortc's own constructors: read the classes' code instead
        logger.exception("could not build aiortc objects to probe")
        instances = {}
    return [p for p in PRIVATE_NAMES if not _present(p.owner, p.name, instances)]


def check() -> None:
    """Fail loudly if the installed versions or private names moved: runs
    at MediaPlane.start(), so a node never serves on internals it was not
    tested with. Raises RuntimeError naming every missing name (and what
    it is for) or the version that differs."""
    versions = {
        "aiortc": aiortc.__version__,
        "aioice": aioice.__version__,
        "pylibsrtp": pylibsrtp.__version__,
    }
    for name, tested in TESTED.items():
        if versions[name] != tested:
            raise RuntimeError(
                f"streaming.aiortc_internals was tested with {name} {tested}, "
                f"found {versions[name]}: re-check the private names it uses (PRIVATE_NAMES) "
                f"and the pin in pyproject.toml"
            )
    missing = missing_names()
    if missing:
        listed = "; ".join(f"{_owner_name(p.owner)} has no {p.name} ({p.why})" for p in missing)
        raise RuntimeError(f"aiortc internals moved: {listed}")


# --- ICE: host addresses ----------------------------------------------------

_ice_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "forumcast_ice_addresses", default=None
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    restricted = _ice_addresses.get()
    if restricted is None:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in restricted if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


@contextmanager
def host_addresses(addresses: tuple[str, ...]) -> Iterator[None]:
    """Gathering inside this block uses only `addresses` (empty = every
    interface). A context variable, so concurrent gatherings don't mix."""
    install()
    token = _ice_addresses.set(tuple(addresses) if addresses else None)
    try:
        yield
    finally:
        _ice_addresses.reset(token)


# --- ICE: one UDP port for every connection ---------------------------------

_shared_port: contextvars.ContextVar[SharedPort | None] = contextvars.ContextVar(
    "forumcast_shared_port", default=None
)
_original_component_candidates = aioice.ice.Connection.get_component_candidates


async def _component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[aioice.Candidate]:
    """aioice's gathering, except that a host candidate on an address the
    shared port serves is that port, through a MuxTransport (no socket of
    its own), followed by a passive ICE-TCP candidate on the same port
    number where the port listens for TCP (a TcpEndpoint); other
    addresses, STUN and TURN go through aioice as before."""
    shared = _shared_port.get()
    if shared is None:
        return await _original_component_candidates(self, component, addresses, timeout)
    candidates: list[aioice.Candidate] = []
    rest: list[str] = []
    served = [shared.muxes[a] for a in addresses if a in shared.muxes]
    served_tcp = [shared.listeners[a] for a in addresses if a in shared.listeners]
    while any(self.local_username in mux.by_ufrag for mux in served) or any(
            self.local_username in listener.by_ufrag for listener in served_tcp):
        # the ufrag routes first contact: two live agents must not share one (aioice draws
        # 4 characters, ~1 in 15M; aiortc reads it for the SDP only after gathering)
        self._local_username = aioice.utils.random_string(4)
    tcp_candidates: list[aioice.Candidate] = []
    for address in addresses:
        mux = shared.muxes.get(address)
        if mux is None:
            rest.append(address)
            continue
        protocol = aioice.ice.StunProtocol(self)
        protocol.connection_made(mux.endpoint(self.local_username, protocol))
        host, port = mux.sockname
        protocol.local_candidate = aioice.ice.Candidate(
            foundation=aioice.ice.candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=aioice.ice.candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        self._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
        listener = shared.listeners.get(address)
        if listener is not None:
            # ICE-TCP (RFC 6544): a passive host candidate on the same port number. A
            # peer's check on a connection reaches this protocol; aioice's check_incoming
            # then learns the peer-reflexive address and pairs it with this candidate
            tcp = aioice.ice.StunProtocol(self)
            tcp.connection_made(listener.endpoint(self.local_username, tcp))
            tcp.local_candidate = aioice.ice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "tcp", host),
                component=component,
                transport="tcp",
                priority=ice_tcp.candidate_priority(component),
                host=host,
                port=listener.sockname[1],
                type="host",
                tcptype="passive",
            )
            self._protocols.append(tcp)
            tcp_candidates.append(tcp.local_candidate)
    candidates += tcp_candidates  # after UDP: the answer's c= line names the UDP host
    return candidates + await _original_component_candidates(self, component, rest, timeout)


@contextmanager
def shared_port(port: SharedPort | None) -> Iterator[None]:
    """Candidates gathered inside this block on an address `port` serves
    use its shared socket (None: a socket per candidate, aioice's way)."""
    install()
    token = _shared_port.set(port)
    try:
        yield
    finally:
        _shared_port.reset(token)


def host_addresses_of(addresses: tuple[str, ...]) -> list[str]:
    """The addresses ICE gathers on for `ice_addresses` (empty: every
    interface, as aioice lists them), IPv4 and IPv6."""
    if addresses:
        return list(addresses)
    return _original_get_host_addresses(use_ipv4=True, use_ipv6=True)


# --- ICE: liveness instead of consent, for publishers -----------------------


def liveness_instead_of_consent(ice: RTCIceTransport, timeout: float) -> None:
    """The connection of `ice` ends when no datagram (RTP, RTCP, DTLS or a
    STUN request) has arrived for `timeout` seconds, instead of when the
    peer stops answering our consent checks (RFC 7675 s5.1: aioice sends
    one every ~5 s and closes after 6 unanswered, ~30 s).

    Why: consent governs what we may send, and a publisher is sent almost
    nothing; ffmpeg's WHIP muxer answers none of these checks, so it was
    cut off at ~30 s. Like an ICE-lite server (RFC 8445 s2.5), forumcast
    then sends no checks of its own to a publisher and judges it by what
    it hears. Call before ICE completes (aioice starts the task then)."""
    connection = ice._connection
    heard = [time.monotonic()]
    data_received = connection.data_received
    request_received = connection.request_received

    def on_data(data: bytes, component: int) -> None:
        heard[0] = time.monotonic()
        data_received(data, component)

    def on_request(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        heard[0] = time.monotonic()
        request_received(message, addr, protocol)

    async def liveness() -> None:
        interval = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            silent = time.monotonic() - heard[0]
            if silent > timeout:
                logger.info("ICE connection %s: nothing heard for %.1f s: closing", connection, silent)
                connection._query_consent_task = None  # as aioice does: close() must not cancel us
                await connection.close()
                return

    heard[0] = time.monotonic()
    connection.data_received = on_data  # type: ignore[method-assign]
    connection.request_received = on_request  # type: ignore[method-assign]
    connection.query_consent = liveness  # type: ignore[method-assign]


def ice_transports(pc: Any) -> list[RTCIceTransport]:
    """The distinct ICE transports of a peer connection's transceivers
    (after setRemoteDescription, so BUNDLE has merged them)."""
    found: dict[int, RTCIceTransport] = {}
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        found.setdefault(id(ice), ice)
    return list(found.values())


# --- decoders: count any the server would create ---------------------------


class DecoderCount:
    """Encoded frames that reached the decoder thread of a receiver marked
    with it (one per MediaPlane; must stay 0): each one is a publisher
    whose packets went past our tap. Such a frame is dropped, never
    decoded."""

    def __init__(self) -> None:
        self.value = 0


_server_queues: weakref.WeakKeyDictionary[queue.Queue[Any], DecoderCount] = weakref.WeakKeyDictionary()
_original_decoder_worker = _rtcrtpreceiver.decoder_worker
_installed = False


def _decoder_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
    count = _server_queues.get(input_q)
    if count is None:  # not ours (a test peer's receiver): aiortc's own decoding
        _original_decoder_worker(loop, input_q, output_q, decode_error)
        return
    # a receiver we only forward: its thread never decodes. aiortc starts it
    # for every receiver; it waits for the stop sentinel, and any frame that
    # arrives (our tap was bypassed) is counted and dropped
    while (task := input_q.get()) is not None:
        count.value += 1
        codec = task[0]
        logger.error("a forwarded %s track reached aiortc's decoder: frame dropped", codec.mimeType)


def install() -> None:
    """Put the seams in place (idempotent): host address restriction, the
    shared port's candidates and decoder threads that never decode for our
    receivers. Each falls through to aiortc's own behaviour for anything
    forumcast did not mark."""
    global _installed
    if _installed:
        return
    aioice.ice.get_host_addresses = _get_host_addresses
    aioice.ice.Connection.get_component_candidates = _component_candidates  # type: ignore[method-assign]
    _rtcrtpreceiver.decoder_worker = _decoder_worker
    _installed = True


# --- receivers: take packets before the jitter buffer ----------------------


class _Tap:
    """Stands in for the receiver's jitter buffer: aiortc has already
    unwrapped RTX, fed its statistics and generated NACKs; the packet goes
    to forumcast and never reaches a decoder."""

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[RtpPacket], None]) -> None:
        self.sink = sink

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self.sink(packet)
        return False, None


def tap_receiver(
    receiver: RTCRtpReceiver, sink: Callable[[RtpPacket], None], count: DecoderCount
) -> None:
    """Route `receiver`'s packets to `sink` (call before receive() runs)
    and mark it as never decoding. Raises RuntimeError (the publisher's
    start fails) if aiortc's receiver has no jitter buffer or decoder queue
    under the names we replace: assigning them would then tap nothing and
    aiortc would decode the publisher."""
    names = receiver.__dict__
    for name in ("jitter_buffer", "decoder_queue"):
        if _mangled_receiver + name not in names:
            raise RuntimeError(f"aiortc internals moved: RTCRtpReceiver has no __{name}: "
                               "a forwarded publisher would be decoded")
    if not isinstance(names[_mangled_receiver + "decoder_queue"], queue.Queue):
        raise RuntimeError("aiortc internals moved: RTCRtpReceiver.__decoder_queue is not a queue.Queue")
    receiver._RTCRtpReceiver__jitter_buffer = _Tap(sink)  # type: ignore[attr-defined]
    mark_server_receiver(receiver, count)


def mark_server_receiver(receiver: RTCRtpReceiver, count: DecoderCount) -> None:
    """The decoder thread of `receiver` never decodes; a frame that reaches
    it anyway is counted in `count` (tap_receiver does this)."""
    install()
    _server_queues[receiver._RTCRtpReceiver__decoder_queue] = count  # type: ignore[attr-defined]


def on_sender_report(receiver: RTCRtpReceiver, callback: Callable[[int, int], None]) -> None:
    """callback(ntp_timestamp, rtp_timestamp) for each RTCP sender report
    the receiver gets (the publisher's capture clock), before aiortc's own
    handling."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            callback(packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp)
        await original(packet)

    receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    return receiver._send_rtcp_pli(media_ssrc)  # type: ignore[no-any-return]


# --- senders: RTCP in, sender-report counters ------------------------------


def intercept_sender_rtcp(
    sender: RTCRtpSender, handler: Callable[[Any, Callable[[Any], Awaitable[None]]], Awaitable[None]]
) -> None:
    """RTCP routed to `sender` goes to handler(packet, original) instead;
    `original` is aiortc's own handling (RR statistics)."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        await handler(packet, original)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


def quiet_sender_rtcp(sender: RTCRtpSender) -> None:
    """Replace aiortc's per-sender RTCP task (object-built reports every
    0.5-1.5 s through its async send chain) with one that only waits: the
    media plane sends this sender's reports itself (rtcp_reports.py)."""
    started: asyncio.Event = sender._RTCRtpSender__rtcp_started  # type: ignore[attr-defined]
    exited: asyncio.Event = sender._RTCRtpSender__rtcp_exited  # type: ignore[attr-defined]

    async def run_rtcp() -> None:
        started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            pass
        finally:
            exited.set()

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]


def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC aiortc put in the answer and sends reports for."""
    return int(sender._ssrc)


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The negotiated codecs, in preference order (after setRemoteDescription)."""
    return list(transceiver._codecs)


# --- the send path: SRTP session and nominated pair -------------------------


@dataclass
class SendPath:
    """What a viewer's packets go through: the DTLS transport's outbound
    SRTP session (protected in place in `buffer`) and the nominated pair's
    datagram transport. `relayed` pairs must not be written per packet:
    aioice's TURN transport creates a task per datagram."""

    srtp: Any  # srtp_t
    cdata: Any  # char[1500] owned by the pylibsrtp Session
    buffer: memoryview
    length: Any  # int *
    protect: Callable[[Any, Any, Any], int]
    protect_rtcp: Callable[[Any, Any, Any], int]
    transport: Any  # asyncio.DatagramTransport
    sock_send: Callable[[Any], Any] | None  # send() of the socket, connected to remote_addr
    remote_addr: tuple[str, int]
    relayed: bool
    session: pylibsrtp.Session  # keeps cdata/srtp alive
    srtp_address: int = 0  # the srtp_t as an address, for streaming._fanout (0: none)
    fd: int = -1  # the socket's descriptor for streaming._fanout (-1: none, e.g. TURN)
    shared: bool = False  # fd is the shared UDP port's socket: send with remote_addr, never connect()
    framed: bool = False
    """An ICE-TCP pair: `sock_send` is not a socket's send() but a framed
    write (RFC 4571) through asyncio's transport; no socket to batch on."""


def send_path(dtls: RTCDtlsTransport) -> SendPath | None:
    """The send path of a connected DTLS transport, or None if it is not
    connected (yet) or has no nominated pair."""
    session = dtls._tx_srtp
    if session is None or dtls.state != "connected":
        return None
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    transport = getattr(pair.protocol, "transport", None)
    if transport is None:
        return None
    return send_path_for(
        session, transport, pair.remote_addr, relayed=pair.local_candidate.type == "relay"
    )


def send_path_for(
    session: pylibsrtp.Session, transport: Any, remote_addr: tuple[str, int], relayed: bool = False
) -> SendPath:
    """A send path over any outbound SRTP session and datagram transport
    (used by send_path(), and by tests and benchmarks without a peer)."""
    fd = -1  # the C fan-out's socket: none for ICE-TCP (framed writes stay in Python)
    framed = isinstance(transport, TcpEndpoint)
    if framed:  # ICE-TCP: each datagram a frame on the peer's connection (asyncio buffers)
        sock_send: Callable[[Any], Any] | None = transport.sender_to(remote_addr)
    elif isinstance(transport, MuxTransport):  # the shared port: never connect() it
        sock_send = transport.sender_to(remote_addr)
        fd = transport.fileno()
    else:
        sock_send = connected_send(transport, remote_addr)
        if sock_send is not None:
            fd = transport._sock.fileno()
    return SendPath(
        srtp=session._srtp[0],
        cdata=session._cdata,
        buffer=memoryview(session._buffer),
        length=_srtp_ffi.new("int *"),
        protect=_srtp_lib.srtp_protect,
        protect_rtcp=_srtp_lib.srtp_protect_rtcp,
        transport=transport,
        sock_send=sock_send,
        remote_addr=remote_addr,
        relayed=relayed or sock_send is None,
        session=session,
        srtp_address=int(_srtp_ffi.cast("uintptr_t", session._srtp[0])),
        fd=fd,
        shared=isinstance(transport, MuxTransport),
        framed=framed,
    )


SRTP_PROTECT_ADDRESS = int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))
"""libsrtp's srtp_protect (the one pylibsrtp links), for streaming._fanout:
int srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr), libsrtp 2's
signature (pylibsrtp 1.0.0 is pinned, TESTED)."""


def connected_send(transport: Any, remote_addr: tuple[str, int]) -> Callable[[Any], int] | None:
    """Connect the datagram transport's socket to `remote_addr` and return
    its send(). A connected UDP socket skips the per-packet address parse
    (Python) and route lookup (kernel): 2.96-3.21 us a packet on lo against
    3.42-4.21 for sendto (bench/floor.py). It then hears only remote_addr,
    which after nomination is the one peer consent and SRTP come from (a
    viewer whose address changes is lost to consent, as it would be anyway:
    aioice does not follow a NAT rebinding). Callers go through
    transport.sendto whenever its buffer is not empty or the socket would
    block, so ordering and buffering stay asyncio's. None: not a plain
    socket (e.g. aioice's TurnTransport) or it cannot be connected."""
    sock = getattr(transport, "_sock", None)
    if sock is None or not hasattr(sock, "send"):
        return None
    try:
        sock.connect(remote_addr)
    except OSError:
        logger.warning("could not connect the socket to %s: sending with sendto", remote_addr)
        return None
    return sock.send  # type: ignore[no-any-return]


def nominated_pair_key(dtls: RTCDtlsTransport) -> object | None:
    """Identity of the current nominated pair (to notice a re-nomination)."""
    pair = dtls.transport._connection._nominated.get(1)
    return pair


# --- the receive path: viewers' SRTP/SRTCP without aioice's STUN parse ------


def route_srtp(dtls: RTCDtlsTransport, handler: Callable[[bytes], None]) -> Callable[[], None] | None:
    """After DTLS connected: datagrams on the nominated pair whose first
    byte is 128-191 (RFC 7983: RTP/RTCP) go to handler(data) directly;
    STUN (consent) and DTLS go to aioice and aiortc as before. Returns the
    undo, or None if there is no connected pair yet.

    Why: aioice parses every datagram as STUN first, then queues it for
    aiortc's DTLS task, which unprotects and builds RTCP objects."""
    if dtls._rx_srtp is None or dtls.state != "connected":
        return None
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol is None:
        return None
    protocol = pair.protocol
    # the class's own method: a second call replaces our hook, never wraps it
    original = type(protocol).datagram_received.__get__(protocol)

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:
            handler(data)
        else:
            original(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]

    def undo() -> None:
        if protocol.__dict__.get("datagram_received") is datagram_received:
            del protocol.datagram_received

    return undo


def rtcp_unprotector(dtls: RTCDtlsTransport) -> Callable[[bytes], bytes | None] | None:
    """unprotect(srtcp) -> the clear compound RTCP packet, or None if its
    authentication (or replay check) failed. None before DTLS connected."""
    session = dtls._rx_srtp
    if session is None:
        return None
    unprotect = session.unprotect_rtcp
    error = pylibsrtp.Error

    def unprotect_rtcp(data: bytes) -> bytes | None:
        try:
            return unprotect(data)  # type: ignore[no-any-return]
        except error:
            return None

    return unprotect_rtcp
