"""The H.264 profile a viewer's answer names: the one it will receive.

aiortc answers H.264 with its own fixed fmtp (constrained baseline
42e01f, or baseline 42001f) whatever is sent. forumcast copies each
source's H.264 as its encoder made it, so the answer names the
profile-level-id of the video on the viewer's lane when it joins (read
from that source's SPS): a payload type the offer lists for the same
profile (RFC 6184 8.2.2: the profile must match the offer's; with
level-asymmetry-allowed=1 the level is the sender's), its fmtp saying the
stream's level. When the offer has no payload type of that profile, aiortc's
choice stays (the decoder follows the in-band SPS; such a viewer is
logged). A later cut to a source of another profile is not renegotiated:
WebRTC decoders take the new SPS in band.
"""

from __future__ import annotations

import copy
import logging

from aiortc import RTCRtpCodecParameters, sdp

from streaming.rtp_codecs import H264, codec_key

logger = logging.getLogger(__name__)


def _profile(profile_level_id: str) -> object | None:
    try:
        return sdp.parse_h264_profile_level_id(profile_level_id)[0]
    except ValueError:
        return None


def offered_h264(offer_sdp: str) -> list[RTCRtpCodecParameters]:
    """The H.264 (packetization-mode=1) codecs of the offer's first video section."""
    description = sdp.SessionDescription.parse(offer_sdp)
    for media in description.media:
        if media.kind == "video":
            return [c for c in media.rtp.codecs
                    if codec_key(c) == H264 and str(c.parameters.get("packetization-mode", "0")) == "1"]
    return []


def answer_codecs(negotiated: list[RTCRtpCodecParameters], offer_sdp: str,
                  profile_level_id: str | None) -> list[RTCRtpCodecParameters]:
    """`negotiated` (aiortc's answer codecs, in order) with the first H.264
    saying `profile_level_id`: the offered payload type of that profile
    (no RTX for it: forumcast resends NACKed packets in the stream
    itself). Unchanged when
    `profile_level_id` is None or the offer has no such profile."""
    if profile_level_id is None or not any(codec_key(c) == H264 for c in negotiated):
        return negotiated
    wanted = _profile(profile_level_id)
    if wanted is None:
        return negotiated
    match = next((c for c in offered_h264(offer_sdp)
                  if _profile(str(c.parameters.get("profile-level-id", "42e01f"))) == wanted), None)
    if match is None:
        logger.info("the viewer's offer has no H.264 of profile-level-id %s: answered %s", profile_level_id,
                    next(str(c.parameters.get("profile-level-id")) for c in negotiated if codec_key(c) == H264))
        return negotiated
    first = next(c for c in negotiated if codec_key(c) == H264)
    chosen = copy.deepcopy(first)
    chosen.payloadType = match.payloadType
    chosen.parameters = {**first.parameters, "profile-level-id": profile_level_id, "level-asymmetry-allowed": "1"}
    # one H.264 in the answer: the one sent (other families, e.g. VP8 for a VP8 publisher, stay)
    others = [c for c in negotiated if codec_key(c) not in ("rtx", H264) and c.payloadType != match.payloadType]
    kept = [chosen, *others]
    pts = {c.payloadType for c in kept}
    # RTX: the negotiated ones for kept codecs; the moved H.264 keeps the one aiortc paired with it
    rtx = []
    for c in negotiated:
        if codec_key(c) != "rtx":
            continue
        apt = c.parameters.get("apt")
        if apt == first.payloadType:
            continue
        if apt in pts:
            rtx.append(c)
    return kept + rtx
