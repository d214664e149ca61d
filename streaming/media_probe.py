"""What a media file holds, read from its packets, not from its header.

`probe(path)` opens the file with PyAV, reads every packet once (demux
only, no decode: the cost is reading the file once) and one decoded
picture, and
returns a `ProbeResult`:

- duration: the end of the last packet (pts + duration) minus the first
  pts - not the header's, which may be missing (a browser's MediaRecorder
  WebM is written before it knows), estimated (MPEG-TS) or the length
  before the file was cut short;
- the video: codec, size, profile, pixel format, HDR transfer (HLG/PQ),
  the real maximum frame rate (the 10th percentile of the frame
  intervals: a 30/15/30 fps phone file is 30, not its 24 fps average),
  the longest gap between frames and between keyframes, whether frames
  are reordered (B-frames), and whether it is a still picture (cover art,
  `attached_pic`, or a single frame);
- every audio track: codec, language, title, default flag, and whether
  this ffmpeg can decode it (an iPhone's `apple_apac` spatial track has
  no decoder).

Raises RoomError("unsupported_media_type") for a file ffmpeg cannot read
or that holds neither a decodable picture nor decodable audio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import av

from rooms.errors import RoomError

_DECODE_PROBE_PACKETS = 300  # video packets read looking for one decodable frame
_TRC_HLG, _TRC_PQ = 18, 16  # AVColorTransferCharacteristic: arib-std-b67, smpte2084


@dataclass(frozen=True)
class AudioTrack:
    """One audio track of a source file (index among its audio tracks)."""

    index: int
    codec: str | None  # None: this ffmpeg has no decoder for it
    language: str | None = None  # ISO 639-2, as the file says
    title: str | None = None
    default: bool = False
    channels: int = 0
    sample_rate: int = 0  # Hz

    @property
    def decodable(self) -> bool:
        return self.codec is not None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "decodable": self.decodable}


@dataclass(frozen=True)
class VideoInfo:
    """The first video track (pictures only: cover art counts as still)."""

    codec: str
    width: int
    height: int
    max_fps: float  # the real maximum rate (frames/s), 0 for a still
    frames: int  # packets in the file
    profile: str | None = None  # e.g. "Constrained Baseline"
    pix_fmt: str | None = None  # e.g. "yuv420p", "yuv420p10le"
    hdr: str | None = None  # "hlg" | "pq" | None (SDR)
    reordered: bool = False  # frames out of presentation order (B-frames)
    still: bool = False  # cover art or a single picture
    max_frame_gap: float = 0.0  # seconds between two frames, at most
    max_keyframe_gap: float = 0.0  # seconds between two keyframes (or to the end), at most
    end: float = 0.0  # seconds: where the last frame ends, from the file's start
    rotation: int = 0  # degrees the player turns the picture (a phone's display matrix)
    size_changes: bool = False  # keyframes of more than one size (only known after keyframe_sizes())
    index: int = 0  # among the file's video streams (ffmpeg's v:N)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, after the rotation."""
        turned = self.rotation % 180 != 0
        return (self.height, self.width) if turned else (self.width, self.height)


@dataclass(frozen=True)
class ProbeResult:
    """What a media file holds, by probing it."""

    container: str
    duration: float  # seconds
    video: VideoInfo | None
    audio: tuple[AudioTrack, ...] = field(default=())

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def decodable_audio(self) -> tuple[AudioTrack, ...]:
        return tuple(t for t in self.audio if t.decodable)

    @property
    def default_audio(self) -> AudioTrack | None:
        """The track a player would pick: the first decodable one flagged
        default, else the first decodable one."""
        usable = self.decodable_audio
        return next((t for t in usable if t.default), usable[0] if usable else None)

    @property
    def has_audio(self) -> bool:
        return self.default_audio is not None

    # the first tracks' figures, as callers and tests read them
    @property
    def video_codec(self) -> str | None:
        return self.video.codec if self.video else None

    @property
    def width(self) -> int:
        return self.video.width if self.video else 0

    @property
    def height(self) -> int:
        return self.video.height if self.video else 0

    @property
    def fps(self) -> float:
        return self.video.max_fps if self.video else 0.0

    @property
    def profile(self) -> str | None:
        return self.video.profile if self.video else None

    @property
    def audio_codec(self) -> str | None:
        track = self.default_audio
        return track.codec if track else None

    @property
    def sample_rate(self) -> int:
        track = self.default_audio
        return track.sample_rate if track else 0

    @property
    def channels(self) -> int:
        track = self.default_audio
        return track.channels if track else 0


def _refuse(message: str) -> RoomError:
    return RoomError("unsupported_media_type", message)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _audio_track(n: int, stream: av.audio.stream.AudioStream) -> AudioTrack:
    context = stream.codec_context  # None when this ffmpeg has no decoder
    metadata = {k.lower(): v for k, v in stream.metadata.items()}
    language = metadata.get("language")
    return AudioTrack(
        index=n,
        codec=context.name if context is not None else None,
        language=language if language and language != "und" else None,
        title=metadata.get("title") or None,
        default=bool(stream.disposition & av.stream.Disposition.default),
        channels=context.channels if context is not None else 0,
        sample_rate=context.sample_rate if context is not None else 0,
    )


def probe(path: Path) -> ProbeResult:
    """Probe a file (see the module's docstring). Blocking: call it in a
    thread. Raises RoomError("unsupported_media_type")."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__  # not the server's path
        raise _refuse(f"not a media file ffmpeg can read ({reason})") from None
    with container:
        audio = tuple(_audio_track(n, s) for n, s in enumerate(container.streams.audio))
        pictures = [s for s in container.streams.video if s.codec_context is not None]
        # a moving picture before cover art (an MP4 can hold both, the cover first)
        moving = [s for s in pictures if not s.disposition & av.stream.Disposition.attached_pic]
        video_stream = (moving or pictures)[0] if pictures else None
        try:
            stats = _read_packets(container)
        except (av.FFmpegError, ValueError):
            raise _refuse("the file cannot be read to its end: is it truncated?") from None
        first, last = stats.first, stats.last
        # the packets say how long it is: a header may have no duration (MediaRecorder),
        # an estimate (MPEG-TS, from the bitrate) or the length before it was cut short
        duration = last - first if last > first else 0.0
        if duration <= 0 and container.duration:
            duration = container.duration / 1_000_000
        if duration <= 0:
            raise _refuse("the file holds no media (no timestamps): is it complete?")
        video = None
        if video_stream is not None:
            video = _video_info(video_stream, stats, first)
            if video is not None:
                video = replace(video, index=list(container.streams.video).index(video_stream))
            rotation = _first_picture_rotation(path, video_stream.index) if video is not None else None
            if video is not None and rotation is None:
                if not video.still:
                    raise _refuse("the video track cannot be decoded: is the file truncated?")
                video = None  # unreadable cover art: the speaker's card instead
            elif video is not None and rotation:
                video = replace(video, rotation=rotation)
        if video is None and not any(t.decodable for t in audio):
            if audio:
                raise _refuse("the file has no video track and no audio track this server can decode")
            raise _refuse("the file has no video or audio track")
        return ProbeResult(container=container.format.name, duration=duration, video=video, audio=audio)


@dataclass
class _PacketStats:
    first: float = float("inf")
    last: float = 0.0
    video: dict[int, list[tuple[float, float, bool]]] = field(default_factory=dict)  # (pts, dts, key)


def _read_packets(container: av.container.InputContainer) -> _PacketStats:
    stats = _PacketStats()
    for packet in container.demux():
        if packet.pts is None or packet.size == 0:
            continue
        base = packet.time_base
        start = float(packet.pts * base)
        end = start + float((packet.duration or 0) * base)
        stats.first = min(stats.first, start)
        stats.last = max(stats.last, end)
        if packet.stream.type == "video":
            dts = float(packet.dts * base) if packet.dts is not None else start
            stats.video.setdefault(packet.stream.index, []).append((start, dts, bool(packet.is_keyframe)))
    if stats.first == float("inf"):
        stats.first = 0.0
    return stats


def _video_info(stream: av.video.stream.VideoStream, stats: _PacketStats, first: float) -> VideoInfo | None:
    context = stream.codec_context
    packets = stats.video.get(stream.index, [])
    attached = bool(stream.disposition & av.stream.Disposition.attached_pic)
    if not packets and not attached:
        return None
    times = sorted(p[0] for p in packets)
    intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
    still = attached or len(times) <= 1
    max_fps = 0.0 if still or not intervals else 1 / _percentile(intervals, 0.10)
    keys = sorted(p[0] for p in packets if p[2])
    end = max(times) - first if times else 0.0
    key_gaps = [b - a for a, b in zip(keys, keys[1:])] + ([max(times) - keys[-1]] if keys else [])
    highest = float("-inf")
    reordered = False
    for pts, _, _ in packets:  # decode order: a pts below one already seen is a B-frame's reordering
        reordered = reordered or pts < highest
        highest = max(highest, pts)
    trc = getattr(context, "color_trc", None)
    return VideoInfo(
        codec=context.name,
        width=context.width,
        height=context.height,
        max_fps=round(max_fps, 3),
        frames=len(packets),
        profile=context.profile,
        pix_fmt=context.pix_fmt,
        hdr={_TRC_HLG: "hlg", _TRC_PQ: "pq"}.get(int(trc)) if trc is not None else None,
        reordered=reordered,
        still=still,
        max_frame_gap=round(max(intervals, default=0.0), 3),
        max_keyframe_gap=round(max(key_gaps, default=0.0), 3) if keys else float("inf"),
        end=round(end + (intervals[-1] if intervals else 0.0), 3),
    )


def keyframe_sizes(path: Path, index: int = 0) -> set[tuple[int, int]]:
    """The picture sizes of video stream `index`'s keyframes (decodes
    keyframes only: ~1-2 ms each at 720p, so ~5 s for two hours with a
    2 s GOP; asked only of a video that could otherwise be copied).
    Blocking."""
    sizes: set[tuple[int, int]] = set()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[index]
            stream.codec_context.skip_frame = "NONKEY"
            for frame in container.decode(stream):
                sizes.add((frame.width, frame.height))
    except (av.FFmpegError, ValueError, IndexError):
        pass
    return sizes


def _first_picture_rotation(path: Path, index: int) -> int | None:
    """Decode the first picture: its rotation in degrees, None if none decodes."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams[index]
            for n, packet in enumerate(container.demux(stream)):
                if n >= _DECODE_PROBE_PACKETS:
                    return None
                frames = packet.decode()  # the last, empty packet flushes: a single picture comes out there
                if frames:
                    return int(getattr(frames[0], "rotation", 0) or 0)
    except (av.FFmpegError, ValueError):
        return None
    return None
