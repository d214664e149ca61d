"""Is a source's H.264 something browsers play as it is? Decided once per
stream at ingest, from its SPS (streaming/h264_sps.py).

WebRTC receivers decode what the SFU copies to them; forumcast copies
video (no transcode on the fan-out), so a stream that browsers cannot play
must be found at ingest, and either transcoded there once (venue feeds:
`transcode_options`) or flagged to the operator (a WHIP encoder: it can be
reconfigured, and the publisher path has no decoder).

Browsers play (Chromium, Safari, Edge over WebRTC): 8-bit 4:2:0
progressive H.264 in constrained baseline, baseline, main or high, with
no B-frames (RTP carries one timestamp per frame, the presentation time,
RFC 6184 5.1; frames sent out of display order make the timestamps step
backwards and receivers stall or drop them), up to 1920x1080 and 60 fps
(what the program encoder and most decoders budget for).
"""

from __future__ import annotations

from dataclasses import dataclass

from rooms.models import SourceMedia
from streaming.h264_sps import H264Sps

PLAYABLE_PROFILES = (66, 77, 100)  # baseline (incl. constrained), main, high
MAX_WIDTH, MAX_HEIGHT = 1920, 1080
MAX_FRAME_RATE = 60.0
KEYFRAME_INTERVAL_S = 2.0  # of a transcoded stream: a late viewer or a TAKE waits at most this


@dataclass(frozen=True)
class Verdict:
    """`handling` is "copy" or "transcode"; `reason` (empty for copy) says
    every cause, for the operator."""

    handling: str
    reason: str = ""

    @property
    def transcode(self) -> bool:
        return self.handling == "transcode"


def check_sps(sps: H264Sps) -> Verdict:
    """Copy or transcode, from one SPS. An SPS that does not say whether
    frames are reordered (main/high without VUI bitstream_restriction) is
    copied: the caller watches the RTP timestamps (`B_FRAMES_SEEN`)."""
    causes: list[str] = []
    reorder = sps.reorder_frames
    if reorder:
        causes.append(f"B-frames (up to {reorder} reordered frames), which WebRTC receivers cannot reorder")
    if sps.profile_idc not in PLAYABLE_PROFILES:
        causes.append(f"H.264 {sps.profile_name} profile, which browsers do not decode")
    elif sps.chroma_format_idc != 1:
        causes.append(f"chroma format {('4:0:0', '4:2:0', '4:2:2', '4:4:4')[sps.chroma_format_idc]}, not 4:2:0")
    if sps.bit_depth != 8:
        causes.append(f"{sps.bit_depth}-bit samples, not 8-bit")
    if not sps.frame_mbs_only:
        causes.append("interlaced coding")
    if sps.width * sps.height > MAX_WIDTH * MAX_HEIGHT or max(sps.width, sps.height) > MAX_WIDTH:
        causes.append(f"{sps.width}x{sps.height} is larger than {MAX_WIDTH}x{MAX_HEIGHT}")
    if sps.frame_rate is not None and sps.frame_rate > MAX_FRAME_RATE + 0.5:
        causes.append(f"{sps.frame_rate:g} fps is more than {MAX_FRAME_RATE:g}")
    if causes:
        return Verdict("transcode", "; ".join(causes))
    return Verdict("copy")


B_FRAMES_SEEN = Verdict(
    "transcode", "B-frames (RTP timestamps stepped backwards), which WebRTC receivers cannot reorder")


def source_media(sps: H264Sps | None, verdict: Verdict, *, video_codec: str | None = "h264", audio: bool = True,
                 sent_profile_level_id: str | None = None) -> SourceMedia:
    """The operator's view of a source: what it sends (from `sps`) and how
    it is handled."""
    if sps is None:
        return SourceMedia(video_codec=video_codec, audio=audio, handling=verdict.handling, reason=verdict.reason,
                           sent_profile_level_id=sent_profile_level_id)
    return SourceMedia(
        video_codec=video_codec, audio=audio, profile=sps.profile_name, profile_level_id=sps.profile_level_id,
        width=sps.width, height=sps.height,
        frame_rate=round(sps.frame_rate, 3) if sps.frame_rate is not None else None,
        b_frames=bool(sps.reorder_frames) if sps.reorder_frames is not None else None,
        handling=verdict.handling, reason=verdict.reason,
        sent_profile_level_id=sent_profile_level_id or (sps.profile_level_id if not verdict.transcode else None),
    )


def transcode_options(sps: H264Sps | None) -> tuple[list[tuple[str, dict[str, object]]], dict[str, object]]:
    """What the one ingest encode does to a stream browsers cannot play:
    (video filters as (name, kwargs) for ffmpeg-python, libx264 output
    options). Constrained baseline (no B-frames by definition), tune
    zerolatency, a keyframe every KEYFRAME_INTERVAL_S, 8-bit 4:2:0,
    progressive, at most MAX_WIDTHxMAX_HEIGHT and MAX_FRAME_RATE; a bit
    rate cap from the picture size (~0.1 bit per pixel)."""
    filters: list[tuple[str, dict[str, object]]] = []
    width, height = (sps.width, sps.height) if sps is not None else (MAX_WIDTH, MAX_HEIGHT)
    rate = sps.frame_rate if sps is not None and sps.frame_rate else 30.0
    if sps is not None and not sps.frame_mbs_only:
        filters.append(("yadif", {}))
    if width * height > MAX_WIDTH * MAX_HEIGHT or max(width, height) > MAX_WIDTH:
        filters.append(("scale", {"w": MAX_WIDTH, "h": MAX_HEIGHT, "force_original_aspect_ratio": "decrease",
                                  "force_divisible_by": 2}))
        width, height = MAX_WIDTH, MAX_HEIGHT
    if rate > MAX_FRAME_RATE + 0.5:
        filters.append(("fps", {"fps": MAX_FRAME_RATE}))
        rate = MAX_FRAME_RATE
    filters.append(("format", {"pix_fmts": "yuv420p"}))
    gop = max(1, round(rate * KEYFRAME_INTERVAL_S))
    kbps = int(min(6000, max(600, width * height * rate * 0.1 / 1000)))
    options: dict[str, object] = {
        "vcodec": "libx264", "preset": "veryfast", "tune": "zerolatency", "profile:v": "baseline",
        "bf": 0, "g": gop, "keyint_min": gop, "sc_threshold": 0,
        "b:v": f"{kbps}k", "maxrate": f"{kbps}k", "bufsize": f"{kbps}k",
    }
    return filters, options
