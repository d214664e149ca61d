"""The program encoder: one ffmpeg per forum that encodes the forum's
program once, for every output (restream, HLS, recording).

`FeedEgress` is a `ProgramSink` (streaming/program_sink.py) on one lane
of the forum's program bus: the lane's packets, already continuous across
cuts (RFC 3550 5.1 numbering kept by the bus), are rebuilt into frames
(H.264 access units per RFC 6184, Opus packets as they are; nothing is
decoded in Python) and written as live Matroska to a `ProgramFeed`, a
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

import asyncio
import enum
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from streaming import live_mkv
from streaming.ffmpeg_process import RestartPolicy, Supervisor
from streaming.h264_depacketize import H264Depacketizer
from streaming.program_bus import Lane, ProgramBus
from streaming.program_tee import ProgramTee
from streaming.rtp_codecs import H264, OPUS
from streaming.rtp_source import ForwardPacket

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

    @property
    def gop(self) -> int:
        return max(1, round(self.fps * self.keyframe_s))


def encoder_args(input_path: Path, tee_path: Path, profile: OutputProfile) -> list[str]:
    """ffmpeg's arguments: live Matroska from the Unix socket `input_path`
    (a ProgramFeed), one MPEG-TS to the tee's Unix socket `tee_path`."""
    source = ffmpeg.input(
        f"unix:{input_path}", format="matroska",
        fflags="+genpts+discardcorrupt", analyzeduration=500_000, probesize=500_000,
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
        vcodec="libx264", preset=profile.preset, tune="zerolatency",
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


class ProgramFeed:
    """The encoder's input: a Unix stream server at `path` (in a private
    0700 directory) to which the encoder's ffmpeg connects, reading the
    program as live Matroska (streaming/live_mkv.py). Each connection (a
    restarted ffmpeg makes a new one) gets the header, then video from the
    next IDR (a CFR output would otherwise fill from 0 to the first
    picture) and audio from then on; timestamps start at 0 on both tracks.
    `end()` closes the connection: end of input, ffmpeg flushes and exits.
    A reader `max_buffer` bytes behind is dropped (its ffmpeg restarts)."""

    def __init__(self, path: Path, *, max_buffer: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.max_buffer = max_buffer
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.video_started = False
        self._clock: dict[int, tuple[int, int]] = {}  # track -> (last RTP ts, ticks since the first)
        self.frames = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path))

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.close()
            return
        self._drop()
        self._writer = writer
        self.connections += 1
        self.video_started = False
        self._clock.clear()
        writer.write(live_mkv.header())
        try:
            await reader.read()  # ffmpeg sends nothing: EOF when it goes
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._drop()

    def _drop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _ms(self, track: int, ts: int, clock: int) -> int:
        last = self._clock.get(track)
        if last is None:
            ticks = 0
        else:
            step = (ts - last[0]) & 0xFFFFFFFF
            ticks = last[1] + (step - (1 << 32) if step >= 1 << 31 else step)
        self._clock[track] = (ts, ticks)
        return ticks * 1000 // clock

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            return
        if writer.transport.get_write_buffer_size() > self.max_buffer:
            logger.warning("ProgramFeed(%s) encoder too far behind: dropped", self.path.name)
            self._drop()
            return
        writer.write(data)
        self.frames += 1

    def video(self, ts: int, access_unit: bytes, idr: bool) -> None:
        if self._writer is None or not (self.video_started or idr):
            return
        self.video_started = True
        self._write(live_mkv.frame(live_mkv.VIDEO, self._ms(live_mkv.VIDEO, ts, 90_000), access_unit, idr))

    def audio(self, ts: int, packet: bytes) -> None:
        if self._writer is None or not self.video_started:
            return
        self._write(live_mkv.frame(live_mkv.AUDIO, self._ms(live_mkv.AUDIO, ts, 48_000), packet, True))

    def end(self) -> None:
        """End of input for the encoder; no new connection is taken."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._drop()


class FeedEgress:
    """A `ProgramSink` on one lane that hands its frames to a ProgramFeed:
    H.264 access units rebuilt from RTP (h264_depacketize.py), Opus
    packets as they are. Takes only codec family `codec`."""

    __slots__ = ("kind", "codec", "ssrc", "lane", "active", "primed", "feed", "packets", "_depacketizer")

    def __init__(self, kind: str, codec: str, feed: ProgramFeed) -> None:
        self.kind = kind
        self.codec = codec
        self.ssrc = 0  # nothing goes out as RTP
        self.lane: Lane | None = None
        self.active = False
        self.primed = False  # video: has seen a keyframe's first packet
        self.feed = feed
        self.packets = 0
        self._depacketizer = H264Depacketizer()

    def set_codec(self, key: str | None) -> None:
        self.active = key == self.codec

    def forward(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        if not self.active or fp.late:
            return  # the encoder does its own concealment; no retransmissions
        self.packets += 1
        if self.kind == "audio":
            self.feed.audio(ts, fp.payload)
            return
        if not self.primed:
            if not fp.key:
                return
            self.primed = True
            for i, head in enumerate(fp.head):  # the keyframe's earlier packets (SPS, PPS)
                self._push(head, (seq - len(fp.head) + i) & 0xFFFF, ts)
        self._push(fp, seq, ts)

    def _push(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        for unit_ts, access_unit, idr in self._depacketizer.push(fp.payload, seq, ts, bool(fp.marker)):
            self.feed.video(unit_ts, access_unit, idr)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def private_directory(prefix: str) -> Path:
    """A new directory only this user can enter (0700, mkdtemp), in the
    system temp dir: a Unix socket path holds at most 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix[:24]))


class ProgramEncoder:
    """One forum's program encoder. States: new -> running -> stopped.
    After `start()`, outputs read the program (MPEG-TS) at `url`, a Unix
    socket in the encoder's private 0700 directory (`directory`)."""

    def __init__(self, forum_id: str, bus: ProgramBus, profile: OutputProfile, *,
                 ffmpeg_path: str = "") -> None:
        self.forum_id = forum_id
        self.bus = bus
        self.profile = profile
        self._ffmpeg = ffmpeg_path
        self.directory = private_directory(f"p-{forum_id[:16]}-")
        self.tee = ProgramTee(f"{forum_id}/program", self.directory)
        self.feed = ProgramFeed(self.directory / "encoder-in.sock")
        self._state = _State.NEW
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

    def _set_state(self, state: _State) -> None:
        if state is not self._state:
            logger.info("ProgramEncoder(%s) %s -> %s", self.forum_id, self._state.value, state.value)
            self._state = state

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
        Idempotent."""
        if self._state is _State.STOPPED:
            return
        self._set_state(_State.STOPPED)
        self.bus.unsubscribe(self._video, self._audio)
        if self._supervisor is not None:
            stopping = asyncio.ensure_future(self._supervisor.stop())  # restarts no more
            await asyncio.sleep(0)
            self.feed.end()  # end of input: ffmpeg ends within its grace, no signal needed
            await stopping
        self.feed.end()
        await self.tee.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
