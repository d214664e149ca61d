"""Checking an SDP offer before any peer connection is made, so a bad
offer is refused with a clear MediaError and costs nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiortc import sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from streaming.media_error import MediaError
from streaming.offer_answer import CodecFormat, split
from streaming.rtp_codecs import H264, OPUS, VP8, codec_key

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
VIDEO_CODECS = (H264, VP8)  # in the order forumcast prefers them


@dataclass
class MediaOffer:
    kind: str
    direction: str
    codecs: list[str] = field(default_factory=list)  # codec families a viewer's aiortc sender can match
    mid: str | None = None
    index: int = 0  # of its m-line in the offer
    formats: list[CodecFormat] = field(default_factory=list)  # as offered, in order
    receivable: CodecFormat | None = None  # what a publisher's would be received (offer_answer)
    watchable_h264: CodecFormat | None = None  # the H.264 format (pm 1) a viewer would get

    @property
    def sends(self) -> bool:
        return self.direction in ("sendonly", "sendrecv")

    @property
    def receives(self) -> bool:
        return self.direction in ("recvonly", "sendrecv")


@dataclass
class OfferSummary:
    video: MediaOffer | None
    audio: MediaOffer | None


def parse_offer(offer_sdp: str) -> OfferSummary:
    """Parse and sanity-check; raises MediaError("invalid_sdp")."""
    if not isinstance(offer_sdp, str) or not offer_sdp.strip():
        raise MediaError("invalid_sdp", "the offer is empty")
    if len(offer_sdp) > MAX_SDP_BYTES:
        raise MediaError("invalid_sdp", f"the offer is larger than {MAX_SDP_BYTES} bytes")
    if not offer_sdp.lstrip().startswith("v=0"):
        raise MediaError("invalid_sdp", "the offer does not start with v=0")
    try:
        description = sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:  # aiortc's parser raises assorted errors on garbage
        raise MediaError("invalid_sdp", f"the offer could not be parsed: {exc}") from exc
    video: MediaOffer | None = None
    audio: MediaOffer | None = None
    shape = split(offer_sdp)
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video"):
            continue
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise MediaError("invalid_sdp", f"the {media.kind} section has no ICE credentials")
        if not media.dtls or not media.dtls.fingerprints:
            raise MediaError("invalid_sdp", f"the {media.kind} section has no DTLS fingerprint")
        if not media.rtcp_mux:
            # aiortc (and WebRTC, RFC 8829 s5.1.3) needs RTP and RTCP on one port
            raise MediaError("invalid_sdp", f"the {media.kind} section has no a=rtcp-mux: forumcast "
                             "multiplexes RTP and RTCP on one port (RFC 5761, RFC 8858)")
        offer = MediaOffer(kind=media.kind, direction=media.direction or "sendrecv", mid=media.rtp.muxId,
                           index=index)
        section = shape.sections[index] if index < len(shape.sections) else None
        if section is not None and section.kind == media.kind and section.port != 0:
            offer.formats = section.ordered_formats()
            offer.receivable = section.receivable_format()
            offer.watchable_h264 = section.receivable_format(h264_packetization=1)
        for codec in media.rtp.codecs:
            key = codec_key(codec)
            if key == H264 and offer.watchable_h264 is None:
                continue  # forumcast sends FU-A/STAP-A: a viewer needs packetization-mode 1
            if key not in offer.codecs:
                offer.codecs.append(key)
        if media.kind == "video" and video is None:
            video = offer
        elif media.kind == "audio" and audio is None:
            audio = offer
    if video is None and audio is None:
        raise MediaError("invalid_sdp", "the offer has no audio or video section")
    return OfferSummary(video=video, audio=audio)


def publish_formats(summary: OfferSummary) -> tuple[CodecFormat | None, CodecFormat | None]:
    """The payload format the server will receive for video and audio
    (offer_answer.Section.receivable_format). A section that sends but
    has no format forumcast receives (H.265 video, PCMU audio) refuses the
    offer rather than silently dropping that media: MediaError(
    "unsupported_codec") naming what the offer sends instead."""
    video = summary.video.receivable if summary.video is not None and summary.video.sends else None
    audio = summary.audio.receivable if summary.audio is not None and summary.audio.sends else None
    unusable = [o for o in (summary.video, summary.audio) if o is not None and o.sends and o.receivable is None]
    if unusable or (video is None and audio is None):
        raise MediaError("unsupported_codec", _unusable_message(summary, unusable))
    return video, audio


def _unusable_message(summary: OfferSummary, unusable: list[MediaOffer]) -> str:
    said: list[str] = []
    for offer in unusable or [o for o in (summary.video, summary.audio) if o is not None]:
        if not offer.sends:
            said.append(f"its {offer.kind} section is {offer.direction} (a publisher sends)")
            continue
        names = [f.describe() for f in offer.formats if f.key not in _REPAIR]
        said.append(f"its {offer.kind} codecs are {', '.join(dict.fromkeys(names)) or 'none'}")
    return ("the offer sends nothing forumcast can receive: " if not unusable else "the offer was refused: ") + (
        "; ".join(said) + ". forumcast receives H.264 video (constrained baseline, baseline, main or "
        "high profile, packetization-mode 0 or 1) or VP8, and Opus audio")


_REPAIR = ("rtx", "red", "ulpfec", "flexfec-03")  # not codecs of their own


def watch_codecs(summary: OfferSummary) -> tuple[list[str], bool]:
    """Video codec families the viewer can receive (H.264 first) and
    whether it takes Opus audio. Raises MediaError("unsupported_codec")."""
    video: list[str] = []
    if summary.video is not None and summary.video.receives:
        video = [k for k in VIDEO_CODECS if k in summary.video.codecs]
    audio = summary.audio is not None and summary.audio.receives and OPUS in summary.audio.codecs
    for offer, usable in ((summary.video, bool(video)), (summary.audio, audio)):
        if offer is not None and offer.receives and not usable:
            # aiortc cannot answer a section it has no codec for: say why, not aiortc's words
            names = [f.describe() + (", packetization-mode 0" if f.key == "h264" and f.packetization_mode == 0
                                     else "") for f in offer.formats if f.key not in _REPAIR]
            raise MediaError(
                "unsupported_codec",
                f"the offer was refused: its {offer.kind} codecs are {', '.join(dict.fromkeys(names)) or 'none'}. "
                "Viewers must accept H.264 (constrained baseline, baseline, main or high profile, "
                "packetization-mode 1) or VP8 video, and Opus audio",
            )
    if not video and not audio:
        raise MediaError(
            "unsupported_codec",
            "the offer receives no usable media: video must accept H.264 (constrained baseline, "
            "baseline, main or high profile, packetization-mode 1) or VP8, audio must accept Opus",
        )
    return video, audio


def capabilities_for(kind: str, key: str) -> list[RTCRtpCodecCapability]:
    """aiortc codec capabilities of one family plus RTX (for
    setCodecPreferences): H.264 constrained baseline first."""
    from aiortc import RTCRtpSender

    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if codec_key(c) == key]
    if key == H264:
        # 42e01f (constrained baseline) before 42001f (baseline)
        chosen.sort(key=lambda c: 0 if str(c.parameters.get("profile-level-id", "")).lower() == "42e01f" else 1)
    rtx = [c for c in caps if codec_key(c) == "rtx"]
    return chosen + (rtx if kind == "video" else [])
