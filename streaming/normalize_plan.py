"""How one probed file becomes what every forum plays: per stream, copy
what viewers can already play, convert only what must change.

The target (playout.py's input): MPEG-TS holding H.264 that viewers can
decode as negotiated (constrained baseline, no B-frames, SPS/PPS before
each IDR, an IDR at least every `copy_max_keyframe_gap` s), at most
`max_width` x `max_height` and `max_fps`, at a steady frame rate; and one
Opus 48 kHz track per decodable audio track of the source (language kept),
interleaved by time (`max_interleave_delta=0`: the muxer waits for the
other track rather than running ahead of it).

Video, one of:
- copy: already H.264 (Constrained) Baseline, 8-bit 4:2:0, SDR, no
  rotation, in size and rate, no gap between frames over
  `max_frame_gap`, keyframes often enough, lasting as long as the file;
- convert: libx264 at the source's real maximum rate (capped by
  `max_fps`, at least `min_fps`: a sparse screen recording's frames are
  repeated, never frozen), every part scaled to fit one box and padded
  (a mid-file size change keeps its shape), HLG/PQ tone-mapped to BT.709
  and tagged so, the last picture held to the end of the sound;
- still: a cover or a single picture, held for the whole file at `min_fps`;
- card: no picture at all: a card with the talk's name, at `min_fps`.
Audio: Opus is copied, anything else converted; tracks with no decoder
are skipped with a note; a file with no decodable audio gets silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import ffmpeg

from streaming.media_probe import AudioTrack, ProbeResult

COPY_PROFILES = frozenset({"Constrained Baseline", "Baseline"})  # what the viewers' SDP (42e01f) promises
STANDARD_RATES = (5, 10, 12, 15, 20, 24, 25, 30, 48, 50, 60)
CARD_BACKGROUND = "0x1d2b53"


@dataclass(frozen=True)
class NormalizeRules:
    """The target of normalization (settings decide max_fps)."""

    max_width: int = 1280
    max_height: int = 720
    max_fps: int = 30
    min_fps: int = 5  # stills and sparse sources: a frame at least this often
    keyframe_seconds: int = 2  # the GOP of converted video
    copy_max_keyframe_gap: float = 4.0  # s: a copied video's longest GOP (a take waits for its IDR)
    max_frame_gap: float = 0.25  # s: a copied video with a longer pause would freeze on air


@dataclass(frozen=True)
class NormalizePlan:
    """What happens to each stream. `video`: copy | convert | still | card."""

    video: str
    width: int
    height: int
    fps: int  # 0 when copied (the source's own timing)
    duration: float  # seconds
    tone_map: str | None = None  # "hlg" | "pq": tone-mapped to BT.709
    audio: tuple[AudioTrack, ...] = ()  # decodable tracks, in output order
    audio_copy: tuple[bool, ...] = ()
    skipped: tuple[tuple[AudioTrack, str], ...] = ()  # (track, why)
    reasons: tuple[str, ...] = field(default=())  # why the video is converted
    video_index: int = 0  # which of the source's video streams (v:N)

    def to_json(self) -> dict[str, object]:
        return {
            "video": "copied" if self.video == "copy" else "converted",
            "video_mode": self.video,
            "video_reasons": list(self.reasons),
            "fps": self.fps or None,
            "tone_mapped": self.tone_map,
            "audio": ["copied" if copy else "converted" for copy in self.audio_copy],
        }


def snap_rate(fps: float, rules: NormalizeRules) -> int:
    """The standard rate nearest to `fps`, within [min_fps, max_fps]."""
    nearest = min(STANDARD_RATES, key=lambda rate: abs(rate - fps))
    return max(rules.min_fps, min(rules.max_fps, nearest))


def fit_box(width: int, height: int, rules: NormalizeRules) -> tuple[int, int]:
    """The size (even) that fits width x height into the rules' box."""
    scale = min(1.0, rules.max_width / max(1, width), rules.max_height / max(1, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _copy_refusals(info: ProbeResult, rules: NormalizeRules) -> list[str]:
    video = info.video
    assert video is not None
    reasons = []
    if video.codec != "h264":
        reasons.append(f"codec {video.codec}")
    elif video.profile not in COPY_PROFILES:
        reasons.append(f"H.264 profile {video.profile}")
    if video.reordered:
        reasons.append("B-frames")
    if video.pix_fmt not in ("yuv420p", "yuvj420p"):
        reasons.append(f"pixel format {video.pix_fmt}")
    if video.hdr:
        reasons.append(f"HDR ({video.hdr})")
    if video.rotation:
        reasons.append(f"rotated {video.rotation} degrees")
    if video.size_changes:
        reasons.append("the picture size changes mid-file")
    if video.width > rules.max_width or video.height > rules.max_height or video.width % 2 or video.height % 2:
        reasons.append(f"size {video.width}x{video.height}")
    if video.max_fps > rules.max_fps + 0.5:
        reasons.append(f"{video.max_fps:g} fps")
    if video.max_frame_gap > rules.max_frame_gap:
        reasons.append(f"a {video.max_frame_gap:g} s pause between frames")
    if video.max_keyframe_gap > rules.copy_max_keyframe_gap:
        reasons.append(f"keyframes {video.max_keyframe_gap:g} s apart")
    if video.end < info.duration - 0.5:
        reasons.append("the picture ends before the sound")
    return reasons


def plan(info: ProbeResult, rules: NormalizeRules) -> NormalizePlan:
    """Decide per stream (see the module docstring)."""
    skipped = tuple((t, "no decoder for this track's codec: skipped") for t in info.audio if not t.decodable)
    audio = info.decodable_audio
    default = info.default_audio
    if default is not None and audio and audio[0] != default:  # the default first: a plain player picks it
        audio = (default, *(t for t in audio if t != default))
    audio_copy = tuple(t.codec == "opus" and t.channels <= 2 for t in audio)
    base = NormalizePlan("card", 0, 0, rules.min_fps, info.duration, audio=audio, audio_copy=audio_copy,
                         skipped=skipped)
    video = info.video
    if video is None:
        width, height = fit_box(960, 540, rules)
        return replace(base, width=width, height=height, reasons=("no picture",))
    width, height = fit_box(*video.display_size, rules)
    base = replace(base, video_index=video.index)
    if video.still:
        return replace(base, video="still", width=width, height=height, reasons=("a still picture",))
    reasons = _copy_refusals(info, rules)
    if not reasons:
        return replace(base, video="copy", width=video.width, height=video.height, fps=0)
    return replace(base, video="convert", width=width, height=height, fps=snap_rate(video.max_fps, rules),
                   tone_map=video.hdr, reasons=tuple(reasons))


def _tone_mapped(stream: ffmpeg.nodes.FilterableStream) -> ffmpeg.nodes.FilterableStream:
    # HLG/PQ -> linear light with HDR reference white (203 cd/m2, ITU-R BT.2408) at 1.0 ->
    # BT.709 primaries -> Mobius: linear up to 90% of white, highlights rolled off
    # above it (hable, or npl=100, put white at luma ~150-180: the "dim" picture) ->
    # BT.709 transfer, limited range (zimg). Measured: HLG white -> luma 234, 50% grey -> 126.
    return (
        stream
        .filter("zscale", t="linear", npl=203)
        .filter("format", "gbrpf32le")
        .filter("zscale", p="bt709")
        .filter("tonemap", tonemap="mobius", param=0.9)
        .filter("zscale", t="bt709", m="bt709", r="tv")
    )


def normalize_args(source: Path, target: Path, plan: NormalizePlan, rules: NormalizeRules,
                   card_text: Path | None = None, card_font: str | None = None) -> list[str]:
    """ffmpeg's arguments (ffmpeg-python) for `plan`; progress lines
    (`out_time_us=`) go to stderr once a second."""
    stream = ffmpeg.input(str(source))
    duration = f"{plan.duration:.3f}"
    options: dict[str, object] = {"f": "mpegts", "max_interleave_delta": 0, "t": duration,
                                  "progress": "pipe:2", "stats_period": 1,
                                  # SEI (x264's settings text, ~600 bytes) is of no use to a viewer
                                  "bsf:v": "filter_units=remove_types=6"}
    if plan.video == "copy":
        video = stream[f"v:{plan.video_index}"]
        options["c:v"] = "copy"
    else:
        if plan.video == "card":
            video = ffmpeg.input(f"color=c={CARD_BACKGROUND}:s={plan.width}x{plan.height}:r={plan.fps}",
                                 f="lavfi", t=duration)
            if card_text is not None:
                text: dict[str, object] = {"textfile": str(card_text), "fontcolor": "white",
                                           "fontsize": plan.height // 12, "x": "(w-text_w)/2", "y": "(h-text_h)/2"}
                if card_font is not None:
                    text["fontfile"] = card_font
                video = video.filter("drawtext", **text)
        else:
            video = stream[f"v:{plan.video_index}"]
            if plan.tone_map:
                video = _tone_mapped(video)
            video = (
                video
                .filter("scale", w=plan.width, h=plan.height, force_original_aspect_ratio="decrease",
                        force_divisible_by=2)
                .filter("pad", w=plan.width, h=plan.height, x="(ow-iw)/2", y="(oh-ih)/2")
                .filter("setsar", "1")
                # hold the last picture to the end of the sound, then a steady rate
                .filter("tpad", stop_mode="clone", stop_duration=duration)
                .filter("fps", fps=plan.fps)
            )
        video = video.filter("format", "yuv420p")
        gop = rules.keyframe_seconds * plan.fps
        options.update({
            "c:v": "libx264", "preset": "veryfast", "crf": 23, "maxrate": "2500k", "bufsize": "5000k",
            "g": gop, "keyint_min": gop, "sc_threshold": 0, "bf": 0, "profile:v": "baseline",
            "level:v": "3.1", "color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709",
        })
        if plan.video in ("still", "card"):
            options["tune"] = "stillimage"
    audio_streams = []
    for n, (track, copy) in enumerate(zip(plan.audio, plan.audio_copy)):
        audio_streams.append(stream[f"a:{track.index}"])
        if copy:
            options[f"c:a:{n}"] = "copy"
        else:
            options.update({f"c:a:{n}": "libopus", f"ar:a:{n}": 48000, f"ac:a:{n}": 2, f"b:a:{n}": "96k"})
        if track.language:
            options[f"metadata:s:a:{n}"] = f"language={track.language}"
    if not audio_streams:  # every playout carries audio: silence keeps players and mixers simple
        audio_streams.append(ffmpeg.input("anullsrc=r=48000:cl=stereo", f="lavfi", t=duration).audio)
        options.update({"c:a:0": "libopus", "b:a:0": "24k"})
    return ffmpeg.output(video, *audio_streams, str(target), **options).overwrite_output().get_args()
