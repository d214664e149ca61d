"""The recorded videos of each forum, normalized once.

Uploads and files named by the event file are checked by probing (PyAV:
container, streams, one decoded video frame - never by their name), then
normalized ONCE with ffmpeg to what every forum speaks: H.264 constrained
baseline (level 3.1, at most 1280x720, at most 30 fps, an IDR every 2 s,
no B-frames, SPS/PPS before each IDR) and Opus 48 kHz stereo (silence when
the file has none), in MPEG-TS - Annex-B and timestamps as playout.py
wants them. Normalized files are named by the source's content hash, so
the same video is normalized once however often it is added.

Layout under `root`:
    index.json        the items (atomic replace on every change)
    media/<hash>.ts   normalized videos
    tmp/              uploads and normalizations in progress (cleaned)
A refused or failed file touches nothing outside tmp/, and its temp files
are removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg

from rooms.errors import RoomError
from streaming.ffmpeg_process import FfmpegProcess

logger = logging.getLogger(__name__)

MAX_WIDTH, MAX_HEIGHT, MAX_FPS = 1280, 720, 30
KEYFRAME_SECONDS = 2
_INDEX_VERSION = 1
_DECODE_PROBE_PACKETS = 300  # packets read looking for one decodable frame


@dataclass(frozen=True)
class ProbeResult:
    """What a media file holds, by probing it."""

    container: str
    duration: float  # seconds
    video_codec: str | None
    audio_codec: str | None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    profile: str | None = None  # the video codec's profile, e.g. "Constrained Baseline"
    sample_rate: int = 0
    channels: int = 0

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


@dataclass(frozen=True)
class MediaItem:
    """A normalized video of one forum's library."""

    id: str
    forum_id: str
    name: str  # what the uploader or the event file called it
    duration: float
    width: int
    height: int
    created_at: float  # unix seconds
    content_hash: str  # sha256 of the source file
    file: str  # the normalized file, relative to the library root

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MediaItem:
        known = {f.name for f in fields(cls)}  # a newer index's extra keys are not an error
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


def probe(path: Path) -> ProbeResult:
    """Probe a file with PyAV. Raises RoomError("unsupported_media_type")
    for anything that is not a playable video."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__  # not the server's path
        raise RoomError("unsupported_media_type", f"not a media file ffmpeg can read ({reason})") from None
    with container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None:
            raise RoomError("unsupported_media_type", "the file has no video track")
        duration = container.duration / 1_000_000 if container.duration else 0.0
        if duration <= 0 and video.duration and video.time_base:
            duration = float(video.duration * video.time_base)
        if duration <= 0:
            raise RoomError("unsupported_media_type", "the file's duration is unknown: is it complete?")
        rate = video.average_rate or video.guessed_rate or Fraction(0)
        result = ProbeResult(
            container=container.format.name,
            duration=duration,
            video_codec=video.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(rate),
            profile=video.codec_context.profile,
            sample_rate=audio.codec_context.sample_rate if audio is not None else 0,
            channels=audio.codec_context.channels if audio is not None else 0,
        )
        if not _decodes_a_frame(container, video):
            raise RoomError("unsupported_media_type", "the video track cannot be decoded: is the file truncated?")
        return result


def _decodes_a_frame(container: av.container.InputContainer, video: av.VideoStream) -> bool:
    try:
        for n, packet in enumerate(container.demux(video)):
            if n >= _DECODE_PROBE_PACKETS:
                return False
            if packet.decode():
                return True
    except (av.FFmpegError, ValueError):
        return False
    return False


def normalize_args(source: Path, target: Path, info: ProbeResult) -> list[str]:
    """The ffmpeg arguments that normalize `source` into `target` (MPEG-TS)."""
    fps = min(MAX_FPS, max(1, round(info.fps) or 25))
    gop = KEYFRAME_SECONDS * fps
    stream = ffmpeg.input(str(source))
    video = (
        stream.video
        .filter("scale", w=f"min({MAX_WIDTH},iw)", h=f"min({MAX_HEIGHT},ih)",
                force_original_aspect_ratio="decrease", force_divisible_by=2)
        .filter("fps", fps=fps)
        .filter("format", "yuv420p")
    )
    if info.has_audio:
        audio = stream.audio
        extra: dict[str, object] = {}
    else:  # every playout carries audio: silence keeps players and mixers simple
        audio = ffmpeg.input("anullsrc=r=48000:cl=stereo", f="lavfi").audio
        extra = {"shortest": None}
    return (
        ffmpeg.output(
            video, audio, str(target),
            vcodec="libx264", preset="veryfast", crf=23, maxrate="2500k", bufsize="5000k",
            g=gop, keyint_min=gop, sc_threshold=0, bf=0,
            **{"profile:v": "baseline", "level:v": "3.1", "b:a": "96k"},
            acodec="libopus", ar=48000, ac=2, f="mpegts", **extra,
        )
        .overwrite_output()
        .get_args()
    )


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _item_id(forum_id: str, content_hash: str) -> str:
    return hashlib.sha256(f"{forum_id}/{content_hash}".encode()).hexdigest()[:16]


def _display_name(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name.strip()
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "video"


class MediaLibrary:
    """The media library of a node: items per forum, persisted in
    `root/index.json`. Concurrent adds of the same content normalize once."""

    def __init__(self, root: Path, ffmpeg: str = "", max_upload_bytes: int = 4 << 30) -> None:
        self.root = Path(root)
        self.ffmpeg = ffmpeg
        self.max_upload_bytes = max_upload_bytes
        self.media_dir = self.root / "media"
        self.tmp_dir = self.root / "tmp"
        self.index_path = self.root / "index.json"
        for directory in (self.root, self.media_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # a crash mid-upload leaves these
            leftover.unlink(missing_ok=True)
        self._items: dict[str, MediaItem] = self._load()
        self._locks: dict[str, asyncio.Lock] = {}
        self.normalizations = 0  # ffmpeg runs that produced a file (for tests and stats)

    # --- queries -----------------------------------------------------------

    def items(self, forum_id: str) -> list[MediaItem]:
        return sorted((i for i in self._items.values() if i.forum_id == forum_id), key=lambda i: i.created_at)

    def get(self, item_id: str) -> MediaItem:
        item = self._items.get(item_id)
        if item is None:
            raise RoomError("not_found", f"no media item {item_id!r}")
        return item

    def path(self, item: MediaItem) -> Path:
        """The normalized file to play."""
        return self.root / item.file

    def probe(self, path: Path) -> ProbeResult:
        return probe(path)

    # --- adding ------------------------------------------------------------

    async def add_upload(self, forum_id: str, filename: str, chunks: AsyncIterator[bytes]) -> MediaItem:
        """Store an upload (at most max_upload_bytes), check and normalize it.
        Raises RoomError: too_large, unsupported_media_type, unavailable."""
        temp = self.tmp_dir / f"upload-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise RoomError("too_large", f"uploads are limited to {self.max_upload_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            if size == 0:
                raise RoomError("invalid", "the upload is empty")
            return await self._add(forum_id, _display_name(filename), temp, digest.hexdigest())
        finally:
            temp.unlink(missing_ok=True)

    async def add_file(self, forum_id: str, path: Path) -> MediaItem:
        """Add a video named by the event file (normalized once, cached by
        content hash)."""
        path = Path(path)
        if not path.is_file():
            raise RoomError("not_found", f"no such video file: {path}")
        content_hash = await asyncio.to_thread(_hash_file, path)
        return await self._add(forum_id, path.name, path, content_hash)

    async def _add(self, forum_id: str, name: str, source: Path, content_hash: str) -> MediaItem:
        item_id = _item_id(forum_id, content_hash)
        lock = self._locks.setdefault(content_hash, asyncio.Lock())
        async with lock:
            if item_id in self._items:
                return self._items[item_id]
            relative = f"media/{content_hash}.ts"
            target = self.root / relative
            if not target.is_file():
                info = await asyncio.to_thread(probe, source)
                await self._normalize(source, target, info, name)
            result = await asyncio.to_thread(probe, target)
            item = MediaItem(
                id=item_id, forum_id=forum_id, name=name, duration=round(result.duration, 3),
                width=result.width, height=result.height, created_at=time.time(),
                content_hash=content_hash, file=relative,
            )
            self._items[item_id] = item
            await asyncio.to_thread(self._save)
            logger.info("MediaLibrary added %s (%s, %.1fs) to forum %s", item_id, name, item.duration, forum_id)
            return item

    async def _normalize(self, source: Path, target: Path, info: ProbeResult, name: str) -> None:
        temp = self.tmp_dir / f"normalize-{uuid.uuid4().hex}.ts"
        process = FfmpegProcess(normalize_args(source, temp, info), name=f"normalize {name}",
                                ffmpeg=self.ffmpeg, loglevel="error")
        try:
            try:
                await process.start()
            except OSError as error:
                raise RoomError("unavailable", f"cannot run ffmpeg to normalize {name!r}: {error}") from None
            try:
                code = await process.wait()
            finally:
                await process.stop(grace=1.0)  # cancelled: kill it, never leave it behind
            if code != 0 or not temp.is_file() or temp.stat().st_size == 0:
                logger.warning("MediaLibrary: normalizing %s failed: %s", name, process.result().describe())
                raise RoomError("unsupported_media_type",
                                f"{name!r} could not be converted: {process.result().describe()}")
            os.replace(temp, target)  # atomic: a file in media/ is always complete
            self.normalizations += 1
        finally:
            temp.unlink(missing_ok=True)

    # --- the index ---------------------------------------------------------

    def _load(self) -> dict[str, MediaItem]:
        if not self.index_path.is_file():
            return {}
        try:
            data = json.loads(self.index_path.read_text("utf-8"))
            items = [MediaItem.from_json(entry) for entry in data["items"]]
        except (ValueError, KeyError, TypeError) as error:
            aside = self.index_path.with_name(f"index.json.corrupt-{int(time.time())}")
            os.replace(self.index_path, aside)  # keep it for a person; never overwrite it
            logger.error("MediaLibrary index %s unreadable (%s): moved to %s", self.index_path, error, aside)
            return {}
        return {item.id: item for item in items if (self.root / item.file).is_file()}

    def _save(self) -> None:
        data = {"version": _INDEX_VERSION, "items": [item.to_json() for item in self._items.values()]}
        temp = self.tmp_dir / f"index-{uuid.uuid4().hex}.json"
        with temp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.index_path)
