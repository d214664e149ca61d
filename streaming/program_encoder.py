"""The program encoder: one ffmpeg per forum that encodes the forum's
program once, for every output (restream, HLS, recording).

`FeedEgress` is a `ProgramSink` (streaming/program_sink.py) on one lane
of the forum's program bus: the lane's packets, already continuous across
cuts (RFC 3550 5.1 numbering kept by the bus), are rebuilt into frames
(H.264 access units per RFC 6184, Opus packets as they are; nothing is
decoded in Python) and written as live Matroska to an `MkvFeed` (streaming/mkv_feed.py), a
Unix socket in the encoder's private (0700) directory that the encoder's
ffmpeg reads. Not plain RTP on a loopback UDP port: any local user could
send forged packets into a forum's outputs there (ffmpeg's RTP demuxer
reads only the UDP ports an SDP names).

ffmpeg normalizes whatever is on air (any size, the slate's 15 fps, a
gap while nothing is on air) to one fixed `OutputProfile`: scaled and
padded to the frame size, constant frame rate (frames repeated over
gaps), audio resampled with gaps filled by silence (aresample async), a
closed GOP every `keyframe_s` with no scene-cut keyframes, CBR-like
x264 with a VBV buffer, AAC-LC. Its MPEG-TS goes to the forum's
`ProgramTee` over a Unix socket in the same directory; the tee hands it
to each output from a keyframe. A crashed encoder is restarted by its Supervisor; the outputs
stay connected to the tee.

Limitation: the encoder takes H.264 video; while a VP8 publisher is on
air its video lane sends nothing and the encoder repeats its last frame.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from streaming.end_of_input import end_reader
from streaming.ffmpeg_process import RestartPolicy, Supervisor
from streaming.lifecycle import Lifecycle
from streaming.mkv_feed import FeedEgress, MkvFeed
from streaming.program_bus import ProgramBus
from streaming.program_tee import ProgramTee
from streaming.rtp_codecs import H264, OPUS

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class OutputProfile:
    """The one encode every output of a forum shares."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    video_kbps: int = 3000  # target = maxrate (kb/s); VBV buffer = 2 s of it
    audio_kbps: int = 128
    preset: str = "veryfast"  # x264
    h264_profile: str = "high"  # or "main"
    keyframe_s: float = 2.0  # GOP length (s); no scene-cut keyframes
    threads: int = 0  # decoder and x264 threads per forum; 0: ffmpeg's choice (one per core and more)
    tune: str = "zerolatency"  # x264 tune ("" for none): no lookahead, no B-frames

    @property
    def gop(self) -> int:
        return max(1, round(self.fps * self.keyframe_s))


def encoder_args(input_path: Path, tee_path: Path, profile: OutputProfile) -> list[str]:
    """ffmpeg's arguments: live Matroska from the Unix socket `input_path`
    (an MkvFeed), one MPEG-TS to the tee's Unix socket `tee_path`."""
    source = ffmpeg.input(
        f"unix:{input_path}", format="matroska",
        fflags="+genpts+discardcorrupt", analyzeduration=500_000, probesize=500_000,
        **({"threads": profile.threads} if profile.threads else {}),
    )
    w, h = profile.width, profile.height
    video = (
        source.video
        .filter("scale", w, h, force_original_aspect_ratio="decrease")
        .filter("pad", w, h, "(ow-iw)/2", "(oh-ih)/2")
        .filter("setsar", 1)
        .filter("fps", profile.fps)
        .filter("format", "yuv420p")
    )
    audio = source.audio.filter("aresample", 48000, **{"async": 1000})
    kbps = profile.video_kbps
    out = ffmpeg.output(
        video, audio, f"unix:{tee_path}",
        format="mpegts",
        vcodec="libx264", preset=profile.preset,
        **({"tune": profile.tune} if profile.tune else {}),
        **({"threads": profile.threads} if profile.threads else {}),
        **{
            "profile:v": profile.h264_profile,
            "b:v": f"{kbps}k", "maxrate": f"{kbps}k", "bufsize": f"{2 * kbps}k",
            "g": profile.gop, "keyint_min": profile.gop, "sc_threshold": 0,
            "x264-params": "scenecut=0:open_gop=0:nal-hrd=vbr",
            "fps_mode": "cfr",  # also across a filter graph re-init at a size change
            "acodec": "aac", "b:a": f"{profile.audio_kbps}k", "ar": 48000, "ac": 2,
            "muxdelay": 0, "flush_packets": 1,
        },
    )
    return list(out.get_args())


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


_MAX_PARENT = 56  # + "/p-<16>-<8>/out-r<12>.sock" (50) stays under a Unix socket path's 108 bytes


def private_directory(prefix: str, parent: Path | None = None) -> Path:
    """A new directory only this user can enter (0700, mkdtemp) under
    `parent` (the run's secrets directory: a dead run's is removed at the
    next start, child_processes.remove_dead_runs), or the system temp dir
    when there is none or its path is too long for a Unix socket's."""
    if parent is not None and len(str(parent)) > _MAX_PARENT:
        parent = None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(parent, 0o700)
    return Path(tempfile.mkdtemp(prefix=prefix[:24], dir=parent))


class ProgramEncoder(Lifecycle[_State]):
    """One forum's program encoder. States: new -> running -> stopped.
    After `start()`, outputs read the program (MPEG-TS) at `url`, a Unix
    socket in the encoder's private 0700 directory (`directory`)."""

    def __init__(self, forum_id: str, bus: ProgramBus, profile: OutputProfile, *,
                 ffmpeg_path: str = "", private_root: Path | None = None) -> None:
        super().__init__(_State.NEW, f"ProgramEncoder({forum_id})")
        self.forum_id = forum_id
        self.bus = bus
        self.profile = profile
        self._ffmpeg = ffmpeg_path
        self.directory = private_directory(f"p-{forum_id[:16]}-", private_root)
        self.tee = ProgramTee(f"{forum_id}/program", self.directory)
        self.feed = MkvFeed(self.directory / "encoder-in.sock")
        self._video: FeedEgress | None = None
        self._audio: FeedEgress | None = None
        self._supervisor: Supervisor | None = None

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def url(self) -> str:
        """Where an output reads the encoded program (MPEG-TS)."""
        return self.tee.url

    @property
    def restarts(self) -> int:
        return max(0, self._supervisor.starts - 1) if self._supervisor else 0

    @property
    def supervisor(self) -> Supervisor | None:
        return self._supervisor

    async def start(self) -> None:
        assert self._state is _State.NEW, "started twice"
        await self.tee.start()
        await self.feed.start()
        args = encoder_args(self.feed.path, self.tee.ingest_path, self.profile)
        self._supervisor = Supervisor(
            lambda: args, name=f"encoder-{self.forum_id}", ffmpeg=self._ffmpeg, loglevel="error",
            policy=RestartPolicy(initial=0.5, maximum=5.0, stable_after=10.0), stop_grace=3.0,
        )
        await self._supervisor.start()
        self._video = FeedEgress("video", H264, self.feed)
        self._audio = FeedEgress("audio", OPUS, self.feed)
        self.bus.subscribe(self._video, self._audio)
        self._set_state(_State.RUNNING)

    async def stop(self) -> None:
        """Leave the bus, end the encoder's input (it flushes and exits by
        itself, reaped), close the tee (each output sees end of input).
        Idempotent; concurrent callers await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPED)  # at once, as before: nothing new is taken on

    async def _stop(self) -> None:
        self.bus.unsubscribe(self._video, self._audio)

        async def end_input() -> None:
            self.feed.end()  # ffmpeg flushes its last frames into the tee and exits

        await end_reader(self._supervisor.stop() if self._supervisor else None, end_input())
        await self.tee.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
