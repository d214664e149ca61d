"""An edge's pull of one forum's program from its origin, over WHEP.

An edge node serves a forum's viewers without hosting the forum: it pulls
the program once from the origin's `/whep/{forum_id}` (RFC 9725 s4.2: one
POST of a recvonly SDP offer, 201 with the answer and the session's
Location; DELETE on that resource ends it) and hands the packets to its
own media plane as one more SourceFeed, which its fan-out forwards like
any source. The origin counts one WHEP viewer per edge, however many
viewers the edge has.

The received RTP is taken before aiortc's jitter buffer and never decoded,
exactly as a publisher's (aiortc_internals.tap_receiver; the plane's
DecoderCount stays 0). A local viewer that needs a keyframe reaches the
origin as a PLI (RFC 4585 s6.3.1) through the source's keyframe requester,
the same seam a publisher's PLI goes through; the origin's own viewer path
passes it on to whatever it has on air.

When the origin drops (its POST fails or is refused, ICE/DTLS fails,
nothing heard for `media_timeout` s), the pull tries again after 1 s,
doubling to 10 s, until stop(); `reason` says why in words. The wiring
may end a session sooner (`reconnect(why)`: the node it pulls from is
known dead): the pull connects again at once. Each new
connection is a new SourceFeed under the same source id: the plane's
program bus cuts to it at its first keyframe, as when a speaker reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtp import RtpPacket

from rooms.models import SourceKind
from streaming import aiortc_internals
from streaming.ice_policy import gathering_on
from streaming.lifecycle import Lifecycle
from streaming.media_config import MediaConfig
from streaming.offer_check import capabilities_for
from streaming.rtcp_reports import ntp_to_unix
from streaming.rtp_codecs import H264, OPUS, VP8, codec_key
from streaming.rtp_source import RtpSource, SourceFeed
from streaming.udp_mux import SharedPort

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
MAX_REDIRECTS = 5
# in a WHEP answer to an edge link: the answering node's instance id and its depth
# in the forum's tree (0 the origin); the pull reports both in its node's heartbeat
NODE_HEADER = "Forumcast-Node"
DEPTH_HEADER = "Forumcast-Edge-Depth"


@dataclass(frozen=True)
class Upstream:
    """The node a pull's current session is with (from the answer's
    NODE_HEADER/DEPTH_HEADER): its instance id, its URL (where the
    redirects ended) and its depth in the forum's tree (0: the origin)."""

    node_id: str
    url: str
    depth: int


class EdgeState(enum.StrEnum):
    CONNECTING = "connecting"  # the first attempt
    LIVE = "live"  # media from the origin flows
    RETRYING = "retrying"  # the origin dropped: waiting, then trying again
    STOPPED = "stopped"


class FeedTarget(Protocol):
    """Where the pulled feed goes: the edge's media plane (MediaPlane has
    these two methods)."""

    def add_feed(self, forum_id: str, feed: SourceFeed) -> None: ...

    def remove_feed(self, forum_id: str, source_id: str) -> None: ...


@dataclass(frozen=True)
class EdgePullStats:
    """`kbps_in`: RTP kb/s received over the last `window_s` s (header
    included, video + audio); `packets_lost`: RFC 3550 cumulative lost
    count from aiortc's receive statistics, summed over every connection
    so far; `connections`: successful WHEP sessions (1 + reconnects)."""

    state: str
    reason: str
    kbps_in: float
    packets_received: int
    packets_lost: int
    connections: int
    window_s: float


class WhepRefused(Exception):
    """The origin answered the POST with something other than 201."""


class _Inbound:
    """The tap's sink: packets go to the RtpSource once the answer told
    the codec (nothing arrives before DTLS anyway)."""

    __slots__ = ("source",)

    def __init__(self) -> None:
        self.source: RtpSource | None = None

    def __call__(self, packet: RtpPacket) -> None:
        source = self.source
        if source is not None:
            source.push(packet)


@dataclass
class _Session:
    """One WHEP session: its peer, its resource and what it received."""

    pc: RTCPeerConnection
    feed: SourceFeed
    receivers: list[RTCRtpReceiver]
    inbound: dict[int, _Inbound]  # id(transceiver) -> its tap's sink
    location: str | None = None
    token: str | None = None  # the one the POST carried: the session's holder


class EdgePull(Lifecycle[EdgeState]):
    """Pulls `whep_url` (the origin's /whep/{forum_id}) into `target`
    under `source_id` (default "edge:<forum_id>"). `token` is the Bearer
    token, or a function called for each request (so a long-lived pull
    can present a fresh one: the origin ends a WHEP session when its
    token expires). `on_state(pull, state)` hears every change.
    Construct, `start()`, `stop()` (the shared Lifecycle: state listeners,
    one stop awaited by every caller, `started`/`exited` around its task)."""

    def __init__(
        self,
        forum_id: str,
        whep_url: str,
        token: str | Callable[[], str | None] | None,
        target: FeedTarget,
        config: MediaConfig,
        decoders: aiortc_internals.DecoderCount,
        *,
        source_id: str | None = None,
        on_state: Callable[["EdgePull", EdgeState], None] | None = None,
        media_timeout: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 10.0,
        http_timeout: float = 10.0,
        shared_port: SharedPort | None = None,
    ) -> None:
        super().__init__(EdgeState.CONNECTING, f"EdgePull({forum_id})")
        self.forum_id = forum_id
        self.whep_url = whep_url
        self.source_id = source_id or f"edge:{forum_id}"
        self._token = token
        self._target = target
        self._config = config
        self._decoders = decoders
        if on_state is not None:
            self.add_state_listener(lambda state: on_state(self, state))
        self.media_timeout = media_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._http_timeout = http_timeout
        self._shared_port = shared_port
        self.reason = ""
        """Why the pull is not live, in words ("" while live)."""
        self.recent_reasons: collections.deque[str] = collections.deque(maxlen=16)
        """The last reasons, oldest first (why an edge flapped)."""
        self._session: _Session | None = None
        self._feed: SourceFeed | None = None
        self._ice_servers: list[RTCIceServer] = []
        self._lost_before = 0
        self._received_before = 0
        self.connections = 0
        self._pli_tasks: set[asyncio.Task[None]] = set()
        self._reconnect_why: str | None = None
        self.upstream: Upstream | None = None
        """Who answered the last successful POST (None before, or when the
        answer did not say): the origin, or the edge it sent us to."""

    # --- lifecycle -----------------------------------------------------

    @property
    def state(self) -> EdgeState:
        return self._state

    @property
    def ice_servers(self) -> list[RTCIceServer]:
        """The STUN/TURN servers the origin listed (RFC 9725 s4.6), used
        for the next connection's gathering ([] = host candidates only)."""
        return list(self._ice_servers)

    @property
    def session_url(self) -> str | None:
        """The current WHEP session resource at the origin (absolute), or None."""
        session = self._session
        return session.location if session is not None else None

    @property
    def feed(self) -> SourceFeed | None:
        """The feed of the current connection (None before the first)."""
        return self._feed

    @property
    def last_media_at(self) -> float:
        """time.monotonic() of the newest packet of the current session (0.0: none yet)."""
        session = self._session
        if session is None:
            return 0.0
        return max((s.last_arrival for s in session.feed.sources()), default=0.0)

    def reconnect(self, why: str) -> None:
        """End the current session within one look (`_watch`'s interval)
        and connect again at once, without the backoff; `why` in words
        becomes the reason. No-op before the first session or once stopped."""
        if self._session is not None and not self.stop_requested:
            self._reconnect_why = why

    def _set_state(self, state: EdgeState, reason: str = "") -> None:
        """The base's change (logged, told to the listeners), with why in words."""
        changed_reason, self.reason = reason != self.reason, reason
        if changed_reason and reason:
            self.recent_reasons.append(reason)
            logger.info("EdgePull(%s) %s: %s", self.forum_id, state.value, reason)
        super()._set_state(state)

    async def start(self) -> None:
        """Begin pulling (returns at once; the first connection is made in
        the background). Raises RuntimeError if already started."""
        if self._own_task is not None or self.stop_requested:
            raise RuntimeError("EdgePull.start() called twice")
        aiortc_internals.install()
        self._start_task(self._run(), f"edge-pull-{self.forum_id}")

    async def stop(self) -> None:
        """End the pull: DELETE the WHEP session, close the peer, take the
        feed out of the target (idempotent; concurrent callers all wait
        for the one stop)."""
        await super().stop()

    async def _stop(self) -> None:
        task = self._own_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for pli in list(self._pli_tasks):
            pli.cancel()
        await self._end_session()
        if self._feed is not None:
            for source in self._feed.sources():
                source.close()
            self._target.remove_feed(self.forum_id, self.source_id)
            self._feed = None
        self._set_state(EdgeState.STOPPED, "stopped")

    # --- the retry loop ------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff_initial
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._http_timeout)) as http:
            while True:
                try:
                    why = await self._attempt(http)
                except asyncio.CancelledError:
                    raise
                except WhepRefused as exc:
                    why = f"the origin refused the pull: {exc}"
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    why = f"the origin did not answer: {exc.__class__.__name__} {exc}".strip()
                except ValueError as exc:  # aiortc refusing the answer's SDP
                    why = f"the origin's answer is unusable: {exc}"
                except Exception as exc:  # a bad answer must not end the pull for good
                    logger.exception("EdgePull(%s) attempt failed", self.forum_id)
                    why = f"the pull failed: {exc}"
                went_live = self._state == EdgeState.LIVE
                asked, self._reconnect_why = self._reconnect_why is not None, None
                await self._end_session(http)
                if asked:  # the wiring knows the upstream is gone: no point waiting
                    self._set_state(EdgeState.RETRYING, f"{why}; trying again now")
                    delay = self._backoff_initial
                    continue
                if went_live:
                    delay = self._backoff_initial
                self._set_state(EdgeState.RETRYING, f"{why}; next try in {delay:g} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    async def _attempt(self, http: aiohttp.ClientSession) -> str:
        """One WHEP session, from the POST until it drops; returns why it
        dropped (raises if it could not be set up)."""
        await self._read_ice_servers(http)
        session = self._new_session()
        self._session = session
        pc = session.pc
        with gathering_on(self._config.ice_addresses, self._shared_port):
            await pc.setLocalDescription(await pc.createOffer())
        session.token = self._current_token()
        answer, session.location = await self._post(http, pc.localDescription.sdp, session.token)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self._bind_sources(session)
        for ice in aiortc_internals.ice_transports(pc):
            # judged by what we hear, like a publisher (see liveness_instead_of_consent)
            aiortc_internals.liveness_instead_of_consent(ice, self.media_timeout)
        self.connections += 1
        old, self._feed = self._feed, session.feed
        self._target.add_feed(self.forum_id, session.feed)  # replaces the last connection's feed
        for source in old.sources() if old is not None else ():
            source.close()  # its deferred keyframe request, its sinks
        return await self._watch(session)

    async def _watch(self, session: _Session) -> str:
        """Until the session drops: LIVE at the first packet; the reason
        when ICE/DTLS fails or nothing arrives for media_timeout."""
        started = time.monotonic()
        connect_by = started + self._config.connect_timeout
        interval = min(0.25, self.media_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            if self._reconnect_why is not None:
                return self._reconnect_why
            now = time.monotonic()
            state = session.pc.connectionState
            if state in ("failed", "closed"):
                return "ICE/DTLS with the origin failed" if state == "failed" else "the origin closed the connection"
            sources = session.feed.sources()
            last = max((s.last_arrival for s in sources), default=0.0)
            if last > 0.0:
                if now - last > self.media_timeout:
                    return f"no media from the origin for {self.media_timeout:g} s"
                if self._state != EdgeState.LIVE:
                    self._set_state(EdgeState.LIVE)
            elif state != "connected" and now > connect_by:
                return f"not connected to the origin within {self._config.connect_timeout:g} s"
            elif now - started > self._config.connect_timeout + self.media_timeout:
                return f"connected, but no media from the origin for {self.media_timeout:g} s"

    # --- WHEP over HTTP ------------------------------------------------

    def _current_token(self) -> str | None:
        return self._token() if callable(self._token) else self._token

    @staticmethod
    def _headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _read_ice_servers(self, http: aiohttp.ClientSession) -> None:
        """RFC 9725 s4.6: an OPTIONS with the token may list STUN/TURN
        servers as `Link: rel="ice-server"`; none (or an error) = host
        candidates only. Kept for the next attempts if the OPTIONS fails."""
        try:
            async with http.options(self.whep_url, headers=self._headers(self._current_token())) as response:
                if response.status >= 300:
                    return
                self._ice_servers = ice_servers_from_links(response)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return

    async def _post(self, http: aiohttp.ClientSession, offer: str, token: str | None) -> tuple[str, str | None]:
        """POST the offer (following 307/308, RFC 9725 s4.5); returns the
        answer and the session resource's absolute URL."""
        url = self.whep_url
        for _ in range(MAX_REDIRECTS + 1):
            async with http.post(url, data=offer.encode(), headers=self._headers(token, SDP_TYPE),
                                 allow_redirects=False) as response:
                if response.status in (307, 308) and "Location" in response.headers:
                    url = urllib.parse.urljoin(url, response.headers["Location"])
                    continue
                body = await response.text()
                if response.status != 201:
                    raise WhepRefused(f"{response.status} {_error_words(body)}")
                location = response.headers.get("Location")
                self.upstream = _upstream(response, url)
                return body, urllib.parse.urljoin(url, location) if location else None
        raise WhepRefused(f"more than {MAX_REDIRECTS} redirects")

    async def _end_session(self, http: aiohttp.ClientSession | None = None) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        self._received_before += sum(s.packets_received for s in session.feed.sources())
        try:
            for receiver in session.receivers:
                self._lost_before += await _packets_lost(receiver)
            if session.location is not None:
                await self._delete(http, session.location, session.token)
        finally:  # a stop() cancelling the DELETE still closes the peer
            session.pc.remove_all_listeners()
            await session.pc.close()

    async def _delete(self, http: aiohttp.ClientSession | None, location: str, token: str | None) -> None:
        """RFC 9725 s4.2: DELETE the session resource with the token that
        created it (best effort: a dead origin has forgotten it anyway)."""
        try:
            if http is None or http.closed:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as own:
                    async with own.delete(location, headers=self._headers(token)):
                        pass
            else:
                async with http.delete(location, headers=self._headers(token),
                                       timeout=aiohttp.ClientTimeout(total=3)):
                    pass
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.info("EdgePull(%s) DELETE %s failed: %s", self.forum_id, location, exc)

    # --- the peer ------------------------------------------------------

    def _new_session(self) -> _Session:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
        feed = SourceFeed(source_id=self.source_id, video=None, audio=None, kind=SourceKind.LIVE)
        receivers = []
        inbound_by: dict[int, _Inbound] = {}
        for kind in ("video", "audio"):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            if kind == "video":
                transceiver.setCodecPreferences(capabilities_for("video", H264) + [
                    c for c in capabilities_for("video", VP8) if codec_key(c) != "rtx"])
            else:
                transceiver.setCodecPreferences(capabilities_for("audio", OPUS))
            inbound = _Inbound()
            # before the jitter buffer, never decoded (the plane's DecoderCount says so)
            aiortc_internals.tap_receiver(transceiver.receiver, inbound, self._decoders)
            receivers.append(transceiver.receiver)
            inbound_by[id(transceiver)] = inbound
        return _Session(pc, feed, receivers, inbound_by)

    def _bind_sources(self, session: _Session) -> None:
        """After the answer: one RtpSource per negotiated track."""
        for transceiver in session.pc.getTransceivers():
            inbound = session.inbound.get(id(transceiver))
            codecs = [c for c in aiortc_internals.transceiver_codecs(transceiver) if codec_key(c) != "rtx"]
            if inbound is None or not codecs or transceiver.currentDirection == "inactive":
                continue
            kind = transceiver.kind
            source = RtpSource(
                kind, codecs[0],
                history_packets=self._config.history_packets,
                keyframe_request_interval=self._config.keyframe_request_interval,
                name=f"{self.source_id}/{kind}",
            )
            receiver = transceiver.receiver
            aiortc_internals.on_sender_report(receiver, functools.partial(_clock_from_report, source))
            if kind == "video":
                source.set_keyframe_requester(functools.partial(self._send_pli, receiver, source))
                session.feed.video = source
            else:
                session.feed.audio = source
            inbound.source = source

    def _send_pli(self, receiver: RTCRtpReceiver, source: RtpSource) -> None:
        if source.ssrc is None or self.stop_requested:
            return
        task = asyncio.ensure_future(aiortc_internals.send_pli(receiver, source.ssrc))
        self._pli_tasks.add(task)
        task.add_done_callback(self._pli_tasks.discard)

    # --- numbers -------------------------------------------------------

    async def stats(self, window_s: float = 2.0) -> EdgePullStats:
        """Receive figures now (see EdgePullStats for units)."""
        session = self._session
        lost = self._lost_before
        received = self._received_before
        kbps = 0.0
        if session is not None:
            for receiver in session.receivers:
                lost += await _packets_lost(receiver)
            now = time.time()
            for source in session.feed.sources():
                received += source.packets_received
                kbps += source.window(now, window_s).bitrate_kbps
        return EdgePullStats(self._state.value, self.reason, round(kbps, 1), received, lost,
                             self.connections, window_s)


def ice_servers_from_links(response: aiohttp.ClientResponse) -> list[RTCIceServer]:
    """The `Link: <url>; rel="ice-server"; username=...; credential=...`
    headers of a WHIP/WHEP response (RFC 9725 s4.6) as RTCIceServers."""
    servers = []
    for link in response.links.getall("ice-server", []):
        url = str(link.get("url", ""))
        if not url:
            continue
        username = link.get("username")
        credential = link.get("credential")
        servers.append(RTCIceServer(
            urls=url,
            username=str(username) if username is not None else None,
            credential=str(credential) if credential is not None else None,
        ))
    return servers


def _upstream(response: aiohttp.ClientResponse, url: str) -> Upstream | None:
    node_id = response.headers.get(NODE_HEADER, "")
    depth = response.headers.get(DEPTH_HEADER, "")
    if not node_id or not depth.isdigit():
        return None
    return Upstream(node_id, url, int(depth))


def _clock_from_report(source: RtpSource, ntp_timestamp: int, rtp_timestamp: int) -> None:
    source.set_clock_reference(ntp_to_unix(ntp_timestamp), rtp_timestamp)


async def _packets_lost(receiver: RTCRtpReceiver) -> int:
    report = await receiver.getStats()
    return sum(int(getattr(stat, "packetsLost", 0) or 0) for stat in report.values()
               if getattr(stat, "type", "") == "inbound-rtp")


def _error_words(body: str) -> str:
    """The JSON error's code and message if the origin sent one."""
    try:
        error = json.loads(body)["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return body[:200]
