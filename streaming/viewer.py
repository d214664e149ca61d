"""A WebRTC/WHEP viewer: one peer connection that sends what a bus
carries, packet by packet, without aiortc's sender pipeline.

aiortc negotiates (H.264 preferred on the transceiver before the offer is
applied, VP8 too if the viewer offers it, Opus), gathers, and runs ICE and
DTLS. The sender's track never yields a frame, so aiortc's RTP loop idles
and no encoder exists, and its RTCP loop is replaced: forumcast's
Downtrack sends the packets and the sender reports (true counts, from the
plane's housekeeping), answers NACKs from the source history and turns
PLIs/FIRs into coalesced keyframe requests. Once connected, the viewer's
SRTCP goes from its socket straight to viewer_rtcp.ViewerRtcp; aioice and
aiortc only see its STUN and DTLS.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription, sdp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket

from streaming import aiortc_internals, peer_end
from streaming.answer_profile import format_for_profile
from streaming.downtrack import Downtrack
from streaming.ice_policy import gathering_on, usable_offer
from streaming.lifecycle import Lifecycle
from streaming.media_config import MediaConfig
from streaming.media_error import MediaError
from streaming.offer_answer import CodecFormat, offer_for_aiortc, shape_answer, tolerated
from streaming.offer_check import capabilities_for, parse_offer, watch_codecs
from streaming.peer_end import PeerEnd
from streaming.program_bus import ProgramBus
from streaming.publisher import server_configuration
from streaming.rtcp_reports import sdes_cname
from streaming.rtp_codecs import codec_key
from streaming.udp_mux import SharedPort
from streaming.viewer_rtcp import ViewerRtcp

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    WATCHING = "watching"
    CLOSED = "closed"


class _IdleTrack(MediaStreamTrack):
    """A track that never produces a frame: aiortc's sender loop waits on
    it forever (instead of polling every 20 ms with no track)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise asyncio.CancelledError

    def stop(self) -> None:
        if not self._never.done():
            self._never.cancel()
        super().stop()


class WebRtcViewer(Lifecycle[_State]):
    """`on_gone(viewer)` is called when the peer fails or closes by itself.
    States: new -> connecting -> watching -> closed (closed only by stop())."""

    _STATE_LOG_LEVEL = logging.DEBUG  # thousands per node

    def __init__(
        self,
        forum_id: str,
        viewer_id: str,
        source_id: str | None,
        config: MediaConfig,
        on_gone: Callable[["WebRtcViewer"], None],
        shared_port: SharedPort | None = None,
    ) -> None:
        super().__init__(_State.NEW, f"Viewer({viewer_id})")
        self.forum_id = forum_id
        self._shared_port = shared_port
        self.viewer_id = viewer_id
        self.source_id = source_id
        self._config = config
        self._on_gone = on_gone
        self._pc: RTCPeerConnection | None = None
        self._bus: ProgramBus | None = None
        self.video: Downtrack | None = None
        self.audio: Downtrack | None = None
        self._senders: dict[str, RTCRtpSender] = {}
        self._pairs: dict[int, object | None] = {}  # id(DTLS transport) -> its nominated pair
        self.feedback: ViewerRtcp | None = None  # its RTCP (the first transport's), once connected
        self._feedbacks: dict[int, ViewerRtcp] = {}  # id(DTLS transport) -> its RTCP reader
        self._unroutes: dict[int, Callable[[], None]] = {}
        self._next_report = 0.0  # time.monotonic() of the next sender reports
        self._deadline: asyncio.TimerHandle | None = None
        self.end: PeerEnd | None = None  # why it ended by itself (set before on_gone)

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def bus(self) -> ProgramBus | None:
        return self._bus

    def downtracks(self) -> list[Downtrack]:
        return [d for d in (self.video, self.audio) if d is not None]

    async def start(self, offer_sdp: str, bus: ProgramBus, needs: str | None = None) -> str:
        """Apply the recvonly offer; returns the complete answer. `needs`
        is the video codec family the viewer must accept (a pinned source)."""
        original = offer_sdp
        offer_sdp = tolerated(offer_sdp)
        summary = parse_offer(offer_sdp)
        video_keys, wants_audio = watch_codecs(summary)
        if needs is not None and video_keys and needs not in video_keys:
            raise MediaError(
                "unsupported_codec", f"this source sends {needs.upper()}, which the offer does not accept"
            )
        # the viewer's own H.264 format (any profile browsers play: what a
        # publisher sends is forwarded as is), of the profile of the video on
        # its lane where offered, shown to aiortc as one it knows
        chosen: dict[int, CodecFormat] = {}
        if summary.video is not None and "h264" in video_keys and summary.video.watchable_h264 is not None:
            lane = bus.video.pending or bus.video.source
            format_ = format_for_profile(summary.video.formats, lane.profile_level_id if lane is not None else None,
                                         summary.video.watchable_h264)
            if format_ is not None:
                chosen[summary.video.index] = format_
        offer = usable_offer(offer_for_aiortc(offer_sdp, chosen))
        pc = RTCPeerConnection(server_configuration())
        self._pc = pc
        self._bus = bus
        self._set_state(_State.CONNECTING)
        transceivers = {}
        if video_keys:
            t = pc.addTransceiver(_IdleTrack("video"), direction="sendonly")
            prefs = []
            for key in video_keys:
                prefs += [c for c in capabilities_for("video", key) if c not in prefs]
            t.setCodecPreferences(prefs)
            transceivers["video"] = t
        if wants_audio:
            t = pc.addTransceiver(_IdleTrack("audio"), direction="sendonly")
            t.setCodecPreferences(capabilities_for("audio", "opus"))
            transceivers["audio"] = t
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:
            await self.stop()
            raise MediaError("unsupported_codec" if "parameters" in str(exc) else "invalid_sdp",
                             f"the offer was refused: {exc}") from exc
        ours = {id(t) for t in transceivers.values()}
        for t in pc.getTransceivers():
            if id(t) not in ours:
                t.direction = "inactive"
        for kind, t in transceivers.items():
            pts: dict[str, int] = {}
            for codec in aiortc_internals.transceiver_codecs(t):
                if codec.payloadType is not None:
                    pts.setdefault(codec_key(codec), codec.payloadType)
            pts.pop("rtx", None)
            dt = Downtrack(
                kind, aiortc_internals.sender_ssrc(t.sender), pts, self._config.write_buffer_limit,
                batched=self._config.fanout_batch,
            )
            setattr(self, kind, dt)
            self._senders[kind] = t.sender
            aiortc_internals.intercept_sender_rtcp(t.sender, self._rtcp_handler(dt))
            aiortc_internals.quiet_sender_rtcp(t.sender)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            with gathering_on(self._config.ice_addresses, self._shared_port):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.stop()
            raise MediaError("unavailable", f"could not answer the offer: {exc}") from exc
        # a seat must not wait for aioice to fail a check list (30 s or more)
        self._deadline = asyncio.get_running_loop().call_later(self._config.connect_timeout, self._ice_deadline)
        answer = shape_answer(pc.localDescription.sdp, original, chosen)
        for media in sdp.SessionDescription.parse(answer).media:
            track = self.video if media.kind == "video" else self.audio if media.kind == "audio" else None
            cname = next((s.cname for s in media.ssrc if s.cname), None)
            if track is not None and cname:
                track.sdes = sdes_cname(track.ssrc, cname)
        return answer

    def _ice_deadline(self) -> None:
        if self._state == _State.CONNECTING:
            logger.info("Viewer(%s) did not connect within %g s", self.viewer_id, self._config.connect_timeout)
            self.end = peer_end.never_connected(self._config.connect_timeout)
            self._detach()
            self._on_gone(self)

    def _rtcp_handler(self, dt: Downtrack) -> Callable[[Any, Any], Any]:
        async def handle(packet: Any, original: Any) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                dt.retransmit(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                lane = dt.lane
                if lane is not None:
                    lane.request_keyframe()
            # receiver reports and REMB feed aiortc's stats and encoder,
            # neither of which exists for a forwarded stream: ignored

        return handle

    def _on_connection_state(self) -> None:
        pc = self._pc
        if pc is None or self._state == _State.CLOSED:
            return
        state = pc.connectionState
        if state == "connected" and self._state == _State.CONNECTING:
            self._attach()
        elif state in ("failed", "closed"):
            if self.end is None:
                self.end = peer_end.lost(state) if self._state == _State.WATCHING else peer_end.ice_failed()
            self._detach()
            self._on_gone(self)

    def _transports(self) -> list[tuple[Any, list[Downtrack]]]:
        """Downtracks by the DTLS transport they go out on: one transport
        when the offer bundled, one per m-line when it did not (RFC 8843)."""
        groups: dict[int, tuple[Any, list[Downtrack]]] = {}
        for kind, sender in self._senders.items():
            dt = self.video if kind == "video" else self.audio
            if dt is not None:
                groups.setdefault(id(sender.transport), (sender.transport, []))[1].append(dt)
        return list(groups.values())

    def _attach(self) -> None:
        groups = self._transports()
        if not groups or self._bus is None:
            return
        paths = [aiortc_internals.send_path(transport) for transport, _ in groups]
        if any(path is None or path.relayed for path in paths):
            # a relayed pair: aioice's TURN transport makes a task per
            # datagram, which the fast path must not do; the server gathers
            # no relay candidates, so this is not expected to happen
            logger.warning("Viewer(%s) has no direct send path: closing it", self.viewer_id)
            self._on_gone(self)
            return
        for (transport, dts), path in zip(groups, paths):
            assert path is not None
            self._pairs[id(transport)] = aiortc_internals.nominated_pair_key(transport)
            for dt in dts:
                dt.connect(path)
            self._route_feedback(transport, dts)
        self._set_state(_State.WATCHING)
        self._bus.subscribe(self.video, self.audio)

    def refresh(self, now: float) -> None:
        """When sender reports are due (every 0.5-1.5 s, RFC 3550's
        randomised interval as aiortc uses): follow a re-nominated ICE pair
        and send them. Called by the plane's housekeeping, never per packet.
        A viewer that never connects is ended by `_ice_deadline`."""
        if self._state != _State.WATCHING or now < self._next_report:
            return
        self._next_report = now + 0.5 + random.random()
        if any(dt.lane is None for dt in self.downtracks()):
            # a lane dropped a downtrack that failed: close rather than linger
            self._detach()
            self._on_gone(self)
            return
        for transport, dts in self._transports():
            pair = aiortc_internals.nominated_pair_key(transport)
            if pair is not None and pair is not self._pairs.get(id(transport)):
                path = aiortc_internals.send_path(transport)
                if path is not None and not path.relayed:
                    self._pairs[id(transport)] = pair
                    for dt in dts:
                        dt.connect(path)
                    self._route_feedback(transport, dts)
        for dt in self.downtracks():
            dt.send_report()

    def _route_feedback(self, transport: Any, downtracks: list[Downtrack]) -> None:
        """The viewer's SRTCP straight from its socket to ViewerRtcp (not
        through aioice's STUN parse and aiortc's RTCP objects); if that is
        not possible, aiortc's path and _rtcp_handler keep working."""
        key = id(transport)
        undo = self._unroutes.pop(key, None)
        if undo is not None:
            undo()
        unprotect = aiortc_internals.rtcp_unprotector(transport)
        if unprotect is None:
            return
        feedback = self._feedbacks.get(key)
        if feedback is None:
            feedback = self._feedbacks[key] = ViewerRtcp(unprotect, downtracks)
            if self.feedback is None:
                self.feedback = feedback
        undo = aiortc_internals.route_srtp(transport, feedback.datagram)
        if undo is not None:
            self._unroutes[key] = undo

    def _detach(self) -> None:
        for undo in self._unroutes.values():
            undo()
        self._unroutes.clear()
        if self._bus is not None:
            self._bus.unsubscribe(self.video, self.audio)

    async def stop(self) -> None:
        """Unsubscribe and close the peer (idempotent; concurrent callers all
        wait for the one close)."""
        await super().stop()

    def _stop_begins(self) -> None:
        # at once: no packet goes out, connection-state callbacks are ignored
        self._set_state(_State.CLOSED)
        if self._deadline is not None:
            self._deadline.cancel()
        self._detach()
        self._bus = None
        pc = self._pc
        if pc is not None:
            pc.remove_all_listeners("connectionstatechange")

    async def _stop(self) -> None:
        pc = self._pc
        if pc is not None:
            await pc.close()
        self._senders.clear()
