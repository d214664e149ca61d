"""The slate: what a forum shows when nothing else is on air.

Encoded ONCE at start (ffmpeg: a solid background with the forum's title
drawn by `drawtext`, H.264 constrained baseline with one IDR at the start
of a 2 s loop, low bitrate, plus silent Opus), demuxed into RTP payloads
held in memory, then looped in real time with continuous timestamps and
sequence numbers. Each loop starts at the IDR, so a viewer joining at any
time decodes within one loop (request_keyframe() is a no-op).

One Slate per forum: each shows its own title, and the media plane takes
one source per forum. The encoded loop (`SlateLoop`) is immutable and can
be shared by several Slates with the same title. At 15 fps a slate sends
about 15 video + 50 audio packets a second: 21 forums cost next to nothing.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from streaming.ffmpeg_process import FfmpegProcess
from streaming.lifecycle import Lifecycle
from streaming.playout import AUDIO_CLOCK, VIDEO_CLOCK, MediaUnit, RtpTrack, demux_units, pace, time_ordered
from streaming.rtp_udp_ingest import PacketSink

logger = logging.getLogger(__name__)

_CJK_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"  # Debian's fonts-noto-cjk
_FONTS = (
    _CJK_FONT,  # titles in Chinese, when installed
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)


@dataclass(frozen=True)
class SlateLoop:
    """An encoded slate: the units of one loop, each track from 0."""

    title: str
    seconds: float
    units: tuple[MediaUnit, ...]  # time-ordered; the first video unit is an IDR

    @property
    def ticks(self) -> dict[str, int]:
        """The loop's length on each RTP clock."""
        return {"video": round(self.seconds * VIDEO_CLOCK), "audio": round(self.seconds * AUDIO_CLOCK)}

    def repeated(self) -> Iterator[MediaUnit]:
        """The loop, forever, with times and ticks going on."""
        ticks = self.ticks
        for n in itertools.count():
            for unit in self.units:
                yield MediaUnit(unit.time + n * self.seconds, unit.kind, unit.ticks + n * ticks[unit.kind],
                                unit.payloads, unit.keyframe)


def _font() -> str | None:
    return next((font for font in _FONTS if Path(font).is_file()), None)


def title_font() -> str | None:
    """The font titles are drawn with (None: ffmpeg's default), also used
    for the name card of a recorded talk that has no picture."""
    return _font()


def _has_cjk(line: str) -> bool:
    return any("\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"
               for ch in line)


def drawable_title(title: str, font: str | None) -> str:
    """The title's lines the font can draw: without a CJK font, Chinese
    lines would go on air as empty boxes, so they are left out (install
    fonts-noto-cjk to show them)."""
    if font == _CJK_FONT:
        return title
    lines = [line for line in title.splitlines() if not _has_cjk(line)]
    return "\n".join(lines) or title


def slate_args(title_file: Path, target: Path, *, width: int, height: int, fps: int, seconds: float,
               background: str) -> list[str]:
    frames = round(fps * seconds)
    text: dict[str, object] = {"textfile": str(title_file), "fontcolor": "white", "fontsize": height // 12,
                               "x": "(w-text_w)/2", "y": "(h-text_h)/2"}
    font = _font()
    if font is not None:
        text["fontfile"] = font
    video = (
        ffmpeg.input(f"color=c={background}:s={width}x{height}:r={fps}", f="lavfi")
        .filter("drawtext", **text)
        .filter("format", "yuv420p")
    )
    audio = ffmpeg.input("anullsrc=r=48000:cl=stereo", f="lavfi")
    return (
        ffmpeg.output(
            video, audio, str(target), t=seconds,
            vcodec="libx264", preset="veryfast", tune="stillimage", crf=30, maxrate="500k", bufsize="1000k",
            g=frames, keyint_min=frames, sc_threshold=0, bf=0,
            **{"profile:v": "baseline", "level:v": "3.1", "frames:v": frames, "b:a": "24k"},
            acodec="libopus", ar=48000, ac=2, f="mpegts",
        )
        .overwrite_output()
        .get_args()
    )


async def encode_slate(title: str, *, ffmpeg_path: str = "", width: int = 1280, height: int = 720,
                       fps: int = 15, seconds: float = 2.0, background: str = "0x1d2b53") -> SlateLoop:
    """Encode the slate once. Raises RuntimeError with ffmpeg's words if
    ffmpeg fails."""
    with tempfile.TemporaryDirectory(prefix="forumcast-slate-") as workdir:
        title_file = Path(workdir) / "title.txt"
        # textfile: no escaping of the title needed
        title_file.write_text(drawable_title(title, _font()), "utf-8")
        target = Path(workdir) / "slate.ts"
        process = FfmpegProcess(
            slate_args(title_file, target, width=width, height=height, fps=fps, seconds=seconds,
                       background=background),
            name="slate", ffmpeg=ffmpeg_path, loglevel="error",
        )
        await process.start()
        try:
            code = await process.wait()
        finally:
            await process.stop(grace=1.0)
        if code != 0:
            raise RuntimeError(f"encoding the slate failed: {process.result().describe()}")
        units = await asyncio.to_thread(lambda: list(time_ordered(demux_units(target, per_stream_zero=True))))
    loop_ticks = {"video": round(seconds * VIDEO_CLOCK), "audio": round(seconds * AUDIO_CLOCK)}
    kept = tuple(u for u in units if u.ticks < loop_ticks[u.kind])  # exactly one loop per track
    video = [u for u in kept if u.kind == "video"]
    if not video or not video[0].keyframe:
        raise RuntimeError("the encoded slate does not start with a keyframe")
    logger.info("Slate %r encoded: %d video + %d audio frames, %d bytes", title, len(video),
                len(kept) - len(video), sum(len(p) for u in kept for p in u.payloads))
    return SlateLoop(title, seconds, kept)


class _State(enum.Enum):
    NEW = "new"
    PLAYING = "playing"
    STOPPED = "stopped"


class Slate(Lifecycle[_State]):
    """Loops a forum's slate into `video`/`audio` sinks in real time.

    States: new -> playing -> stopped. `on_loop(n)` is called as loop n
    (0, 1, ...) starts.
    """

    def __init__(
        self,
        title: str,
        video: PacketSink,
        audio: PacketSink | None = None,
        *,
        source_id: str = "slate",
        ffmpeg_path: str = "",
        loop: SlateLoop | None = None,
        width: int = 1280,
        height: int = 720,
        fps: int = 15,
        on_loop: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(_State.NEW, f"Slate({source_id})")
        self.title = title
        self.source_id = source_id
        self.loop = loop
        self.tracks: dict[str, RtpTrack] = {"video": RtpTrack("video", video)}
        if audio is not None:
            self.tracks["audio"] = RtpTrack("audio", audio)
        self._encode_options = {"ffmpeg_path": ffmpeg_path, "width": width, "height": height, "fps": fps}
        self._on_loop = on_loop
        self._task: asyncio.Task[None] | None = None
        self.loops = 0

    @property
    def state(self) -> str:
        return self._state.value

    def request_keyframe(self) -> None:
        """No-op: every loop starts with an IDR."""

    async def start(self) -> None:
        assert self._state is _State.NEW, f"Slate({self.source_id}) started twice"
        if self.loop is None:
            self.loop = await encode_slate(self.title, **self._encode_options)  # type: ignore[arg-type]
        if self.stop_requested:
            return  # stopped while encoding
        start = asyncio.get_running_loop().time()
        self._set_state(_State.PLAYING)
        self._task = self._start_task(
            pace(self._units(self.loop), self.tracks, start, {kind: 0 for kind in self.tracks}),
            name=f"slate-{self.source_id}",
        )

    def _units(self, loop: SlateLoop) -> Iterator[MediaUnit]:
        first = loop.units[0]
        for unit in loop.repeated():
            if unit.payloads is first.payloads and unit.kind == first.kind:
                self._loop_started()
            yield unit

    def _loop_started(self) -> None:
        number = self.loops
        self.loops += 1
        if self._on_loop is not None:
            try:
                self._on_loop(number)
            except Exception:
                logger.exception("Slate(%s) loop callback failed", self.source_id)

    async def stop(self) -> None:
        """Stop looping. Idempotent; concurrent callers await one stop."""
        await super().stop()

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._set_state(_State.STOPPED)
