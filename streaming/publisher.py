"""A WebRTC/WHIP publisher: one peer connection whose video and audio
become RtpSources, received once and never decoded.

aiortc does ICE, DTLS, SRTP, RTX unwrap, receive statistics, NACK and REMB
generation; packets are taken before the jitter buffer (see
aiortc_internals.tap_receiver). H.264 of any profile browsers play is
preferred, then VP8 (offer_answer.py picks it and shapes the answer);
audio is Opus only, so every forum has one audio codec. A publisher is
judged by what is heard from it, not by RFC 7675 consent (see
aiortc_internals.liveness_instead_of_consent); one that never connects
ends after `ice_timeout` with `end` = ice_failed.

What the publisher sends is checked as it comes (`media`, told through
`on_media`): its H.264 SPS (ingest_check.check_sps) and its RTP
timestamps. Browsers never send B-frames, but an ffmpeg/OBS WHIP encoder
may; the publisher path has no decoder, so such a stream is not
transcoded: it is forwarded and flagged ("flagged", with the reason and
the setting to change), which the operator sees on the source's tile.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Callable

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy

from rooms.models import SourceKind, SourceMedia
from streaming import aiortc_internals, peer_end
from streaming.ice_policy import gathering_on, usable_offer
from streaming.ingest_check import Verdict, check_sps, source_media
from streaming.lifecycle import Lifecycle
from streaming.media_config import MediaConfig
from streaming.media_error import MediaError
from streaming.offer_answer import CodecFormat, offer_for_aiortc, shape_answer, tolerated
from streaming.offer_check import capabilities_for, parse_offer, publish_formats
from streaming.peer_end import PeerEnd
from streaming.rtcp_reports import ntp_to_unix
from streaming.rtp_codecs import codec_key
from streaming.rtp_source import RtpSource, SourceFeed
from streaming.udp_mux import SharedPort

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


def _clock_from_report(source: RtpSource, ntp_timestamp: int, rtp_timestamp: int) -> None:
    source.set_clock_reference(ntp_to_unix(ntp_timestamp), rtp_timestamp)


def server_configuration() -> RTCConfiguration:
    # no STUN/TURN: host candidates only (aiortc would otherwise ask Google's STUN)
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.BALANCED)  # aiortc 1.16 MAX_BUNDLE gathers nothing when the offer's m-line order differs from ours (ffmpeg WHIP: audio first)


class WebRtcPublisher(Lifecycle[_State]):
    """`on_state(publisher, state)` is called with "connected", "failed"
    and "closed" (the latter only when the peer went away by itself).
    States: new -> connecting -> connected -> failed | closed."""

    def __init__(
        self,
        forum_id: str,
        source_id: str,
        config: MediaConfig,
        on_state: Callable[["WebRtcPublisher", str], None],
        decoders: aiortc_internals.DecoderCount,
        on_media: Callable[["WebRtcPublisher"], None] | None = None,
        shared_port: SharedPort | None = None,
    ) -> None:
        super().__init__(_State.NEW, f"Publisher({source_id})")
        self.forum_id = forum_id
        self._shared_port = shared_port
        self.source_id = source_id
        self._config = config
        self._on_state = on_state
        self._decoders = decoders
        self._pc: RTCPeerConnection | None = None
        self._closing = False
        self.feed = SourceFeed(source_id=source_id, video=None, audio=None, kind=SourceKind.LIVE)
        self.media: SourceMedia | None = None  # what it sends, once negotiated
        self._on_media = on_media
        self._pli_tasks: set[asyncio.Task[None]] = set()
        self._deadline: asyncio.TimerHandle | None = None
        self.connected_once = False
        self.end: PeerEnd | None = None  # why it ended by itself (set before on_state "failed"/"closed")

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self, offer_sdp: str) -> str:
        """Apply the offer; returns the complete answer (ICE gathered)."""
        original = offer_sdp
        offer_sdp = tolerated(offer_sdp)
        summary = parse_offer(offer_sdp)
        video_format, audio_format = publish_formats(summary)
        chosen: dict[int, CodecFormat] = {}  # m-line index -> the format received there
        for media, format_ in ((summary.video, video_format), (summary.audio, audio_format)):
            if media is not None and format_ is not None:
                chosen[media.index] = format_
        offer = usable_offer(offer_for_aiortc(offer_sdp, chosen))
        pc = RTCPeerConnection(server_configuration())
        self._pc = pc
        self._set_state(_State.CONNECTING)
        mine: list[tuple[str, RTCRtpTransceiver]] = []
        for kind, format_ in (("video", video_format), ("audio", audio_format)):
            if format_ is not None:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(capabilities_for(kind, format_.key))
                mine.append((kind, transceiver))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except MediaError:
            raise
        except Exception as exc:
            await self.stop()
            raise MediaError("unsupported_codec" if "parameters" in str(exc) else "invalid_sdp",
                             f"the offer was refused: {exc}") from exc
        # m-lines we did not ask for (a second video, PCMU audio) stay inactive,
        # so no receiver (and no decoder) ever starts for them
        ours = {id(t) for _, t in mine}
        for transceiver in pc.getTransceivers():
            if id(transceiver) not in ours:
                transceiver.direction = "inactive"
        for kind, transceiver in mine:
            codecs = [c for c in aiortc_internals.transceiver_codecs(transceiver) if codec_key(c) != "rtx"]
            if not codecs:
                continue
            source = RtpSource(
                kind,
                codecs[0],
                history_packets=self._config.history_packets,
                keyframe_request_interval=self._config.keyframe_request_interval,
                name=f"{self.source_id}/{kind}",
            )
            # what the publisher actually sends (aiortc only knows its own fmtp)
            source.format = video_format if kind == "video" else audio_format
            aiortc_internals.tap_receiver(transceiver.receiver, source.push, self._decoders)
            aiortc_internals.on_sender_report(
                transceiver.receiver, functools.partial(_clock_from_report, source)
            )
            if kind == "video":
                receiver = transceiver.receiver
                source.set_keyframe_requester(functools.partial(self._send_pli, receiver, source))
                source.on_format = self._format_seen
                self.feed.video = source
            else:
                self.feed.audio = source
        for ice in aiortc_internals.ice_transports(pc):
            aiortc_internals.liveness_instead_of_consent(ice, self._config.publisher_timeout)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            with gathering_on(self._config.ice_addresses, self._shared_port):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.stop()
            raise MediaError("unavailable", f"could not answer the offer: {exc}") from exc
        self._deadline = asyncio.get_running_loop().call_later(self._config.ice_timeout, self._ice_deadline)
        self._set_media(self._describe())
        return shape_answer(pc.localDescription.sdp, original, chosen)

    def _ice_deadline(self) -> None:
        if self._state == _State.CONNECTING and not self._closing:
            logger.info("Publisher(%s) did not connect within %g s", self.source_id, self._config.ice_timeout)
            self.end = peer_end.never_connected(self._config.ice_timeout)
            self._set_state(_State.FAILED)
            self._on_state(self, "failed")

    def _describe(self) -> SourceMedia:
        """What the operator is told about this publisher's media now."""
        video, audio = self.feed.video, self.feed.audio
        has_audio = audio is not None
        if video is None:
            return source_media(None, Verdict("copy"), video_codec=None, audio=has_audio)
        sps = video.sps
        verdict = check_sps(sps) if sps is not None else Verdict("copy")
        if video.reordered_frames and not (sps is not None and sps.reorder_frames):
            verdict = Verdict("transcode", "B-frames (RTP timestamps stepped backwards), which WebRTC "
                                           "receivers cannot reorder")
        if verdict.transcode:
            # no decoder on this path: forwarded as sent, and said so
            verdict = Verdict("flagged", f"{verdict.reason}; viewers may see only keyframes: set the encoder to "
                                         "no B-frames (x264 bframes=0, OBS 'B-frames 0') and baseline/main/high")
        return source_media(sps, verdict, video_codec=video.codec_key, audio=has_audio,
                            sent_profile_level_id=video.profile_level_id)

    def _format_seen(self, source: RtpSource) -> None:
        self._set_media(self._describe())

    def _set_media(self, media: SourceMedia) -> None:
        if media == self.media:
            return
        self.media = media
        if media.handling == "flagged":
            logger.warning("Publisher(%s) %s", self.source_id, media.reason)
        if self._on_media is not None:
            try:
                self._on_media(self)
            except Exception:
                logger.exception("Publisher(%s) media callback failed", self.source_id)

    def _send_pli(self, receiver: object, source: RtpSource) -> None:
        if source.ssrc is None or self._closing:
            return
        task = asyncio.ensure_future(aiortc_internals.send_pli(receiver, source.ssrc))  # type: ignore[arg-type]
        self._pli_tasks.add(task)
        task.add_done_callback(self._pli_tasks.discard)

    def _on_connection_state(self) -> None:
        pc = self._pc
        if pc is None or self._closing:
            return
        state = pc.connectionState
        if state == "connected":
            self.connected_once = True
            self._set_state(_State.CONNECTED)
            self._on_state(self, "connected")
        elif state in ("failed", "closed"):
            if self.end is None:
                self.end = peer_end.lost(state) if self.connected_once else peer_end.ice_failed()
            self._set_state(_State.FAILED if state == "failed" else _State.CLOSED)
            self._on_state(self, state)

    async def stop(self) -> None:
        """Close the peer and forget the sources (idempotent; irreversible;
        concurrent callers all wait for the one close)."""
        await super().stop()

    def _stop_begins(self) -> None:
        # at once: no keyframe request, no state report, no packet from now on
        self._closing = True
        if self._deadline is not None:
            self._deadline.cancel()
        for source in self.feed.sources():
            source.close()
        for task in list(self._pli_tasks):
            task.cancel()
        if self._pc is not None:
            self._pc.remove_all_listeners("connectionstatechange")

    async def _stop(self) -> None:
        pc = self._pc
        if pc is not None:
            await pc.close()
        self._pli_tasks.clear()
        self._set_state(_State.CLOSED)
