"""The H.264 profile a viewer's answer names: the one it will receive.

aiortc answers H.264 with its own fixed fmtp (constrained baseline
42e01f) whatever is sent. forumcast copies each source's H.264 as its
encoder made it, so the answer names the profile-level-id of the video on
the viewer's lane when it joins (read from that source's SPS): of the
offer's H.264 formats (packetization-mode 1), one of the same profile
(RFC 6184 s8.2.2: the answer's profile must match the offer's; with
level-asymmetry-allowed=1 the level is the sender's), its fmtp saying the
stream's level. When the offer has no format of that profile, the
viewer's preferred one stands (the decoder follows the in-band SPS; such a
viewer is logged). A later cut to a source of another profile is not
renegotiated: WebRTC decoders take the new SPS in band.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from aiortc import sdp

from streaming.offer_answer import CodecFormat, fmtp_parameters

logger = logging.getLogger(__name__)


def _profile(profile_level_id: str) -> object | None:
    try:
        return sdp.parse_h264_profile_level_id(profile_level_id)[0]
    except ValueError:
        return None


def format_for_profile(formats: Iterable[CodecFormat], profile_level_id: str | None,
                       default: CodecFormat | None) -> CodecFormat | None:
    """The H.264 format (packetization-mode 1) to answer a viewer with:
    among `formats` (the offer's, in order), the first of the same profile
    as `profile_level_id` (6 hex digits: what will be sent), its fmtp
    saying that profile-level-id and level-asymmetry-allowed=1; `default`
    (the viewer's preferred format) when the profile is unknown (None) or
    not offered."""
    if profile_level_id is None or (wanted := _profile(profile_level_id)) is None:
        return default
    match = next((f for f in formats if f.key == "h264" and f.packetization_mode == 1
                  and _profile(f.profile_level_id) == wanted), None)
    if match is None:
        logger.info("the viewer's offer has no H.264 of profile-level-id %s: answered %s", profile_level_id,
                    default.profile_level_id if default is not None else "without H.264")
        return default
    parameters = {**fmtp_parameters(match.fmtp), "level-asymmetry-allowed": "1",
                  "profile-level-id": profile_level_id.lower()}
    return dataclasses.replace(match, fmtp=";".join(f"{k}={v}" for k, v in parameters.items()))
