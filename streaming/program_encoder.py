"""The program encoder: one ffmpeg per forum that encodes the forum's
program once, for every output (restream, HLS, recording).

`RtpEgress` is a `ProgramSink` (streaming/program_sink.py) on one lane of
the forum's program bus: it sends the lane's packets, already continuous
across cuts (RFC 3550 5.1 numbering kept by the bus), as plain RTP over
loopback UDP to the encoder, under one fixed SSRC and payload type per
kind. The encoder reads them with ffmpeg's RTP demuxer from an SDP file
(RFC 4566; H.264 per RFC 6184 packetization-mode 1, with SPS/PPS in-band
before each IDR as our producers and browsers send them; Opus per RFC
7587), so no packet is depacketized or decoded in Python.

ffmpeg normalizes whatever is on air (any size, the slate's 15 fps, a
gap while nothing is on air) to one fixed `OutputProfile`: scaled and
padded to the frame size, constant frame rate (frames repeated over
gaps), audio resampled with gaps filled by silence (aresample async), a
closed GOP every `keyframe_s` with no scene-cut keyframes, CBR-like
x264 with a VBV buffer, AAC-LC. Its MPEG-TS goes to the forum's
`ProgramTee` over loopback TCP; the tee hands it to each output from a
keyframe. A crashed encoder is restarted by its Supervisor; the outputs
stay connected to the tee.

Limitation: the encoder takes H.264 video; while a VP8 publisher is on
air its video lane sends nothing and the encoder repeats its last frame.
"""

from __future__ import annotations

import enum
import logging
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from streaming.ffmpeg_process import RestartPolicy, Supervisor
from streaming.lifecycle import Lifecycle
from streaming.program_bus import Lane, ProgramBus
from streaming.program_tee import ProgramTee
from streaming.rtp_codecs import H264, OPUS
from streaming.rtp_source import ForwardPacket

logger = logging.getLogger(__name__)

VIDEO_PT = 96
AUDIO_PT = 111
_header = struct.Struct("!BBHII")


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


def sdp_text(video_port: int, audio_port: int) -> str:
    """The SDP ffmpeg's RTP demuxer reads (RFC 4566; rtpmap per RFC 6184,
    RFC 7587). RTCP is not sent: the ports' +1 are left alone."""
    return (
        "v=0\r\n"
        "o=- 0 0 IN IP4 127.0.0.1\r\n"
        "s=forumcast program\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        f"m=video {video_port} RTP/AVP {VIDEO_PT}\r\n"
        f"a=rtpmap:{VIDEO_PT} H264/90000\r\n"
        f"a=fmtp:{VIDEO_PT} packetization-mode=1\r\n"
        f"m=audio {audio_port} RTP/AVP {AUDIO_PT}\r\n"
        f"a=rtpmap:{AUDIO_PT} opus/48000/2\r\n"
    )


def encoder_args(sdp: Path, tee_port: int, profile: OutputProfile) -> list[str]:
    """ffmpeg's arguments: RTP in (SDP), one MPEG-TS out to the tee."""
    source = ffmpeg.input(
        str(sdp), protocol_whitelist="file,udp,rtp", reorder_queue_size=64,
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
        video, audio, f"tcp://127.0.0.1:{tee_port}",
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


class RtpEgress:
    """A `ProgramSink` that sends one lane to 127.0.0.1:`port` as RTP with
    payload type `pt`, taking only codec family `codec`."""

    __slots__ = ("kind", "codec", "pt", "ssrc", "lane", "port", "active", "started", "after",
                 "packets", "_sock")

    def __init__(self, kind: str, codec: str, pt: int, port: int, after: RtpEgress | None = None) -> None:
        self.kind = kind
        self.codec = codec
        self.pt = pt
        self.port = port
        self.ssrc = struct.unpack("!I", socket.inet_aton("127.0.0.1"))[0] ^ (pt << 16) ^ port
        self.lane: Lane | None = None
        self.active = False
        # The encoder's clock starts at the first packet it sees, and a
        # CFR output fills from there to the first picture: so the first
        # packet sent is an IDR's, and audio waits for it (`after`).
        self.started = False
        self.after = after
        self.packets = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._sock.connect(("127.0.0.1", port))

    def set_codec(self, key: str | None) -> None:
        self.active = key == self.codec

    def forward(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        if not self.active or fp.late:
            return  # the encoder does its own concealment; no retransmissions
        if not self.started:
            if self.after is not None:
                if not self.after.started:
                    return
            elif not fp.key:
                return
            else:
                for head in fp.head:  # the keyframe's earlier packets (SPS, PPS)
                    self._send(head, (seq - len(fp.head) + fp.head.index(head)) & 0xFFFF, ts)
            self.started = True
        self._send(fp, seq, ts)

    def _send(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        try:
            self._sock.send(_header.pack(0x80, fp.marker | self.pt, seq, ts, self.ssrc) + fp.payload)
            self.packets += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass  # encoder not listening yet / momentarily full: like a lost packet

    def close(self) -> None:
        self._sock.close()


def _free_udp_port() -> int:
    """An even loopback UDP port whose +1 is free too (RTP/RTCP pair)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port % 2 == 0 and port < 65534:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pair:
                    pair.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise OSError("no free loopback UDP port pair")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class ProgramEncoder(Lifecycle[_State]):
    """One forum's program encoder. States: new -> running -> stopped.
    After `start()`, outputs read the program at `tcp://127.0.0.1:{port}`."""

    def __init__(self, forum_id: str, bus: ProgramBus, profile: OutputProfile, *,
                 ffmpeg_path: str = "") -> None:
        super().__init__(_State.NEW, f"ProgramEncoder({forum_id})")
        self.forum_id = forum_id
        self.bus = bus
        self.profile = profile
        self._ffmpeg = ffmpeg_path
        self.tee = ProgramTee(f"{forum_id}/program")
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._video: RtpEgress | None = None
        self._audio: RtpEgress | None = None
        self._supervisor: Supervisor | None = None

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def port(self) -> int:
        return self.tee.port

    @property
    def url(self) -> str:
        """Where an output reads the encoded program (MPEG-TS)."""
        return f"tcp://127.0.0.1:{self.tee.port}"

    @property
    def restarts(self) -> int:
        return max(0, self._supervisor.starts - 1) if self._supervisor else 0

    async def start(self) -> None:
        assert self._state is _State.NEW, "started twice"
        await self.tee.start()
        self._workdir = tempfile.TemporaryDirectory(prefix=f"forumcast-encoder-{self.forum_id}-")
        sdp = Path(self._workdir.name) / "program.sdp"
        video_port, audio_port = _free_udp_port(), _free_udp_port()
        sdp.write_text(sdp_text(video_port, audio_port))
        args = encoder_args(sdp, self.tee.ingest_port, self.profile)
        self._supervisor = Supervisor(
            lambda: args, name=f"encoder-{self.forum_id}", ffmpeg=self._ffmpeg, loglevel="error",
            policy=RestartPolicy(initial=0.5, maximum=5.0, stable_after=10.0), stop_grace=3.0,
        )
        await self._supervisor.start()
        self._video = RtpEgress("video", H264, VIDEO_PT, video_port)
        self._audio = RtpEgress("audio", OPUS, AUDIO_PT, audio_port, after=self._video)
        self.bus.subscribe(self._video, self._audio)
        self._set_state(_State.RUNNING)

    async def stop(self) -> None:
        """Leave the bus, stop ffmpeg (reaped), close the tee. Idempotent. Concurrent callers
        await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPED)  # at once, as before: nothing new is taken on

    async def _stop(self) -> None:
        # ffmpeg first, while packets still flow: blocked on a silent
        # input it would not see 'q'
        if self._supervisor is not None:
            await self._supervisor.stop()
        self.bus.unsubscribe(self._video, self._audio)
        for egress in (self._video, self._audio):
            if egress is not None:
                egress.close()
        await self.tee.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
