"""What forumcast needs to know about a payload without depacketizing it:
the codec family of a negotiated codec and whether a packet carries the
start of a keyframe. Pure functions; no I/O."""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpCodecParameters
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

H264 = "h264"
VP8 = "vp8"
OPUS = "opus"

# H.264 NAL unit types that begin a decodable picture: IDR slice, SPS.
_H264_KEY_NALS = (5, 7)


def codec_key(codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> str:
    """'h264', 'vp8', 'opus' (or the lower-case codec name)."""
    return codec.mimeType.split("/", 1)[1].lower()


def h264_has_keyframe(payload: bytes) -> bool:
    """True if this RTP payload carries an SPS or the start of an IDR slice
    (single NAL, STAP-A or FU-A start fragment)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in _H264_KEY_NALS:
        return True
    if nal == 24:  # STAP-A: 16-bit size then NAL, repeated
        i = 1
        end = len(payload)
        while i + 2 < end:
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in _H264_KEY_NALS:
                return True
            i += 2 + size
        return False
    if nal == 28:  # FU-A: start bit and the fragmented NAL's type
        return len(payload) > 1 and bool(payload[1] & 0x80) and (payload[1] & 0x1F) == 5
    return False


def vp8_has_keyframe(payload: bytes) -> bool:
    """True if this RTP payload starts a VP8 key frame (RFC 7741)."""
    if len(payload) < 2:
        return False
    b0 = payload[0]
    if not (b0 & 0x10) or (b0 & 0x07):  # S bit and partition 0
        return False
    i = 1
    if b0 & 0x80:  # X: extension byte
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if i >= len(payload):
                return False
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T/K: TID/KEYIDX
            i += 1
    if i >= len(payload):
        return False
    return not (payload[i] & 0x01)  # P bit 0 = key frame


def _always(payload: bytes) -> bool:
    return True


def keyframe_detector(key: str) -> Callable[[bytes], bool]:
    """The detector for a codec family; audio packets all count as
    starting points."""
    if key == H264:
        return h264_has_keyframe
    if key == VP8:
        return vp8_has_keyframe
    return _always


def uint16_newer(a: int, b: int) -> bool:
    """a is after b in 16-bit sequence space."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000
