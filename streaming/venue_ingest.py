"""The venue's encoder, over RTMP or SRT, as a source of one forum.

Per forum, one RTMP port and one SRT port (from settings). Each protocol is
a leg: an ffmpeg that takes the encoder's stream (SRT: listening itself,
supervised; RTMP: FLV on stdin from the key gate), copies its H.264
(h264_mp4toannexb puts SPS/PPS in front of each IDR, which FLV keeps only
in its header) and transcodes its audio to Opus 48 kHz
stereo, and sends both through ffmpeg's rtp muxer to two RtpUdpIngests on
Unix datagram sockets in the ingest's private (0700) directory: a loopback
UDP port would take forged RTP from any local user. Whichever leg goes live
first has the floor; the other is ignored until the first is lost.

Each run's video is checked at its first SPS (ingest_check.check_sps:
profile, B-frames, size, frame rate): what browsers play is copied as it
is; what they cannot (x264 high with B-frames, 4:2:2, interlaced, 4K...)
is encoded once by an IngestTranscoder fed from the leg's second, MPEG-TS
copy (ingest_transcoder.py: a TsTap on a Unix datagram socket in the same
private directory, the encoder fed on its stdin and writing RTP to one
more socket there), and the copy is dropped. A stream whose SPS does not
tell (no VUI bitstream_restriction) is copied while its RTP timestamps go
forwards, and transcoded from the first one that steps back. `media` (and
`on_media`) tell the operator which, and why.

The leg's ffmpeg has ONE tee output whose slaves pick their stream (video
RTP, the TS tap, audio RTP) and fail alone (onfail=ignore): an encoder
without audio, or without video, still plays (the slate covers the
missing track). Separate outputs with optional maps did not: ffmpeg filled
an output whose map matched nothing by its own choice (the video, encoded
to MPEG-4 Part 2, into the audio port), or refused one left empty.

Stream key (never on a command line, where any local user reads it,
and never logged):
- SRT: it is the passphrase (AES, enforced): libsrt rejects a wrong or
  missing one in the handshake and ffmpeg keeps listening. ffmpeg reads
  it from an ffconcat file (`option passphrase`, mode 0600 in a 0700
  directory, removed on stop): ffmpeg's `-/option file` does not reach
  protocol options such as SRT's passphrase (checked with FFmpeg 9).
- RTMP: the public port is an RtmpKeyGate (rtmp_gate.py), an RTMP server
  that checks the stream name and only then starts this leg's ffmpeg and
  writes the publisher's media to its stdin as FLV: there is no internal
  RTMP listener that could be published to directly.

Why a port per forum and not one port with per-key routing: ffmpeg's
listener takes one publisher, and routing SRT by streamid would need SRT
in Python. 21 forums x 2 ports is a short list for a firewall.

When the SRT encoder disconnects, ffmpeg exits and the supervisor starts
it again at once (capped backoff only if it keeps failing fast); an RTMP
leg's ffmpeg runs from an accepted publish to its end. The state
goes live -> lost -> live and RtpContinuity keeps one SSRC, sequence and
timestamp line across reconnects and across RTMP/SRT. Keyframe requests
cannot reach an RTMP/SRT encoder: `request_keyframe()` is a no-op (ask the
venue for a 2 s keyframe interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from rooms.models import SourceMedia, SourceState
from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor
from streaming.h264_sps import H264Sps, SpsError, parse_sps, sps_from_rtp
from streaming.ingest_check import B_FRAMES_SEEN, Verdict, check_sps, source_media
from streaming.ingest_transcoder import IngestTranscoder, TsTap, tap_output
from streaming.lifecycle import Lifecycle
from streaming.rtmp_gate import FlvSink, RtmpKeyGate
from streaming.rtp_udp_ingest import PacketSink, RtpContinuity, RtpUdpIngest, rtp_output_options

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_-]{10,79}$")  # SRT passphrases are 10-79 characters
RTMP_APP = "live"
_MAX_SOCKET_DIR = 62  # + "/v-<forum id, 16>-<8>/rtmp-video.sock" (44, the longest) stays under 108 bytes
# A run that waited this long for an encoder was fine: restart at once.
VENUE_POLICY = RestartPolicy(initial=0.5, maximum=30.0, stable_after=2.0)


@dataclass(frozen=True)
class VenueUrls:
    """What to paste into the venue encoder."""

    rtmp_url: str  # server and key in one URL (ffmpeg, vMix)
    rtmp_server: str  # OBS: "Server"
    stream_key: str  # OBS: "Stream Key"
    srt_url: str

    def to_json(self) -> dict[str, str]:
        return {"rtmp_url": self.rtmp_url, "rtmp_server": self.rtmp_server,
                "stream_key": self.stream_key, "srt_url": self.srt_url}


def udp_port_held_by(pid: int, port: int) -> bool:
    """True when process `pid` has a UDP socket bound to local `port`
    (its /proc/<pid>/fd socket inodes against /proc/net/udp and udp6)."""
    try:
        inodes = {link[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if (link := _readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")}
    except OSError:
        return False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _tee_slave(options: dict[str, object], url: str) -> str:
    """One slave of ffmpeg's tee muxer: "[k=v:...:onfail=ignore]url"
    (its options reach the muxer and the protocol, e.g. type=datagram)."""
    return "[" + ":".join(f"{k}={v}" for k, v in {**options, "onfail": "ignore"}.items()) + "]" + url


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600 from the
    first byte: created with that mode, never chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class _Tap:
    """The sink an RtpUdpIngest of a leg pushes into (`transcoded`: the
    ingest encode's output rather than the encoder's copy)."""

    def __init__(self, leg: _Leg, kind: str, transcoded: bool = False) -> None:
        self.leg, self.kind, self.transcoded = leg, kind, transcoded

    def push(self, packet: RtpPacket) -> None:
        self.leg.venue._forward(self.leg, self.kind, packet, self.transcoded)


class _Leg:
    """One protocol: its ffmpeg, its two RTP ingests (video, audio), its TS
    tap and, when the check asks, its one ingest encode (whose RTP comes
    back on `transcoded`)."""

    def __init__(self, venue: VenueIngest, protocol: str) -> None:
        self.venue = venue
        self.protocol = protocol
        self.live = False
        self.live_since = 0.0  # time.monotonic() of this run's first packet
        self.ssrcs: set[int] = set()  # of the ffmpeg run on air
        self.stale_ssrcs: set[int] = set()  # of runs given up on: their last packets are dropped
        self.video = RtpUdpIngest(_Tap(self, "video"), kind="video", name=f"{venue.forum_id}-{protocol}-v")
        self.audio = RtpUdpIngest(_Tap(self, "audio"), kind="audio", name=f"{venue.forum_id}-{protocol}-a")
        # the run's check and, when it says so, its one encode
        self.ts_tap = TsTap(f"{venue.forum_id}-{protocol}")
        self.transcoded = RtpUdpIngest(_Tap(self, "video", transcoded=True), kind="video",
                                       name=f"{venue.forum_id}-{protocol}-vt")
        self.verdict: Verdict | None = None
        self.sps: H264Sps | None = None
        self.last_video_ts: int | None = None
        self.transcoder: IngestTranscoder | None = None

    @property
    def last_arrival(self) -> float:
        return max(self.video.last_arrival, self.audio.last_arrival, self.transcoded.last_arrival)

    @property
    def current(self) -> FfmpegProcess | None:
        """The leg's ffmpeg, if one runs."""
        raise NotImplementedError

    @property
    def listening(self) -> bool:
        """Whether an encoder can connect to this leg right now."""
        raise NotImplementedError

    def outputs(self, source: ffmpeg.nodes.FilterableStream, video_options: dict[str, object]) -> list[str]:
        """The leg's one output (ffmpeg args): a tee of video RTP, the TS tap
        and audio RTP, each slave picking its stream and failing alone
        (see the module doc), all to Unix datagram sockets."""
        assert self.video.path and self.audio.path and self.ts_tap.path, "start() names the sockets"
        video_url, video_rtp = rtp_output_options("video", 0, self.video.path)
        audio_url, audio_rtp = rtp_output_options("audio", 0, self.audio.path)
        tap_url, tap_options = tap_output(self.ts_tap.path)
        slaves = "|".join((
            _tee_slave({"select": "v", **video_rtp}, video_url),
            _tee_slave({"select": "v", **tap_options}, tap_url),  # for the ingest encode, if the check asks
            _tee_slave({"select": "a", **audio_rtp}, audio_url),
        ))
        # bitstream filters on the tee output: a slave's are not applied to a copy
        return ffmpeg.output(source["v:0?"], source["a:0?"], slaves, f="tee", vcodec="copy", acodec="libopus",
                             ar=48000, ac=2, **{"b:a": "96k"}, **video_options).get_args()

    async def start(self) -> None:
        # Unix datagram sockets in the private directory, not loopback UDP
        # ports: any local user could send media to those and be on air
        private = self.venue.private_dir()
        self.video.path = str(private / f"{self.protocol}-video.sock")
        self.audio.path = str(private / f"{self.protocol}-audio.sock")
        self.ts_tap.path = str(private / f"{self.protocol}-ts.sock")
        self.transcoded.path = str(private / f"{self.protocol}-vt.sock")
        await self.video.start()
        await self.audio.start()
        await self.ts_tap.start()
        await self.transcoded.start()

    async def cut(self) -> None:
        """Cut a silent publisher off (its ffmpeg killed)."""
        if self.current is not None:
            await self.current.kill()

    async def stop(self) -> None:
        if self.transcoder is not None:
            await self.transcoder.stop()
            self.transcoder = None
        self.ts_tap.close()
        await self.video.stop()
        await self.audio.stop()
        await self.transcoded.stop()

    def exited(self, result: FfmpegExit) -> None:
        if self.live:
            logger.info("VenueIngest(%s) %s publisher gone: %s", self.venue.forum_id, self.protocol,
                        result.describe())
        self.venue._leg_down(self)


class _SrtLeg(_Leg):
    """A supervised ffmpeg listening for SRT; the passphrase comes from a
    private ffconcat file, never the command line."""

    def __init__(self, venue: VenueIngest) -> None:
        super().__init__(venue, "srt")
        self.supervisor = Supervisor(
            self.args, name=f"venue-{venue.forum_id}-srt", ffmpeg=venue.ffmpeg,
            policy=venue.policy, stop_grace=0.3, on_exit=self.exited,  # nothing to finalize: RTP out
        )

    @property
    def current(self) -> FfmpegProcess | None:
        return self.supervisor.current

    @property
    def listening(self) -> bool:
        process = self.supervisor.current
        return (process is not None and process.state == "running" and process.pid is not None
                and udp_port_held_by(process.pid, self.venue.srt_port))

    def args(self) -> list[str]:
        host = self.venue.listen_host
        host = f"[{host}]" if ":" in host else host
        listing = self.venue.private_dir() / "srt.ffconcat"
        write_private(listing, "ffconcat version 1.0\n"
                      f"file 'srt://{host}:{self.venue.srt_port}?mode=listener&pbkeylen=16'\n"
                      f"option passphrase {self.venue.stream_key}\n"  # _KEY: no quoting needed
                      "option analyzeduration 1000000\n")  # live quickly: 1 s of probing
        source = ffmpeg.input(str(listing), f="concat", safe=0, protocol_whitelist="file,srt,udp")
        return self.outputs(source, {})

    async def start(self) -> None:
        await super().start()
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await super().stop()


class _FeedSink:
    """An RTMP publisher's FLV into its ffmpeg's stdin."""

    def __init__(self, process: FfmpegProcess) -> None:
        self.process = process

    async def write(self, data: bytes) -> None:
        await self.process.feed(data)

    async def close(self) -> None:
        await self.process.stop(grace=1.0)  # end of input: ffmpeg flushes and exits


class _RtmpLeg(_Leg):
    """One ffmpeg per accepted RTMP publish, reading FLV from stdin (the
    key gate writes it); no listener besides the gate's public port."""

    def __init__(self, venue: VenueIngest) -> None:
        super().__init__(venue, "rtmp")
        self.process: FfmpegProcess | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> FfmpegProcess | None:
        return self.process if self.process is not None and self.process.state == "running" else None

    @property
    def listening(self) -> bool:
        return self.venue.gate.listening

    def args(self) -> list[str]:
        # 1 s of probing; h264_mp4toannexb puts SPS/PPS (FLV keeps them in its header) before each IDR
        source = ffmpeg.input("pipe:0", f="flv", analyzeduration=1_000_000)
        return self.outputs(source, {"bsf:v": "h264_mp4toannexb"})

    async def open(self) -> FlvSink:
        """Start this publish's ffmpeg (the gate accepted the key)."""
        if self.venue.stop_requested:
            raise RuntimeError("the venue ingest is stopping")
        if self.process is not None:
            await self.process.stop(grace=0.3)  # the previous publish's, if still flushing
        process = FfmpegProcess(self.args(), name=f"venue-{self.venue.forum_id}-rtmp", ffmpeg=self.venue.ffmpeg,
                                feed_stdin=True)
        self.process = process
        await process.start()
        watcher = asyncio.create_task(self._watch(process), name=f"venue-{self.venue.forum_id}-rtmp-exit")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return _FeedSink(process)

    async def _watch(self, process: FfmpegProcess) -> None:
        await process.wait()
        self.exited(process.result())

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop(grace=0.3)
        for watcher in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await super().stop()


class VenueIngest(Lifecycle[SourceState]):
    """The venue feed of one forum: RTMP on `listen_host`:`rtmp_port` and SRT
    on `listen_host`:`srt_port`, both keyed by `stream_key`, into
    `video`/`audio`. Nothing else listens: the RTMP port is the key gate's,
    and the ffmpegs reach the server over private Unix sockets and stdin.

    State (a SourceState): connecting -> live <-> lost -> ended, reported
    through `on_state(state)` on each change; what the encoder sends and
    whether it is copied, transcoded or flagged (a SourceMedia) through
    `on_media(media)`.
    """

    def __init__(
        self,
        forum_id: str,
        rtmp_port: int,
        srt_port: int,
        stream_key: str,
        video: PacketSink,
        audio: PacketSink,
        *,
        on_state: Callable[[SourceState], None] | None = None,
        on_media: Callable[[SourceMedia], None] | None = None,
        source_id: str | None = None,
        ffmpeg: str = "",
        policy: RestartPolicy = VENUE_POLICY,
        media_timeout: float = 2.0,
        idle_timeout: float = 10.0,
        listen_host: str = "127.0.0.1",
        secrets_dir: Path | None = None,
    ) -> None:
        if not _KEY.match(stream_key):
            raise RoomError("invalid", "a venue stream key is 10-79 letters, digits, '-' or '_'")
        super().__init__(SourceState.CONNECTING, f"VenueIngest({forum_id})")
        self.forum_id = forum_id
        self.source_id = source_id or f"venue-{forum_id}"
        self.rtmp_port = rtmp_port
        self.srt_port = srt_port
        self.listen_host = listen_host
        self.stream_key = stream_key
        self.ffmpeg = ffmpeg
        self.policy = policy
        self.media_timeout = media_timeout
        self.sinks: dict[str, PacketSink] = {"video": video, "audio": audio}
        self.continuity = {"video": RtpContinuity(90000), "audio": RtpContinuity(48000)}
        if on_state is not None:
            self.add_state_listener(on_state)
        self._started = False
        self._watchdog: asyncio.Task[None] | None = None
        self._active: _Leg | None = None
        self.profile_level_id: str | None = None  # the encoder's, from its SPS (e.g. "42c01e")
        self.media: SourceMedia | None = None  # what the encoder sends and how it is handled
        self._on_media = on_media
        self.transcoders_started = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._secrets_dir = secrets_dir
        self._private: Path | None = None
        self.rtmp = _RtmpLeg(self)
        self.srt = _SrtLeg(self)
        self.legs: dict[str, _Leg] = {"rtmp": self.rtmp, "srt": self.srt}
        self.gate = RtmpKeyGate(rtmp_port, stream_key, self.rtmp.open, name=forum_id, idle_timeout=idle_timeout,
                                host=listen_host)

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def protocol(self) -> str | None:
        """The protocol on air ("rtmp" | "srt"), if live."""
        return self._active.protocol if self._active is not None else None

    def private_dir(self) -> Path:
        """This ingest's directory for files holding the key (0700; removed on stop)."""
        if self._private is None:
            parent = self._secrets_dir
            if parent is not None and len(str(parent)) > _MAX_SOCKET_DIR:
                parent = None  # a Unix socket path holds at most 107 bytes: the system temp dir then
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(parent, 0o700)
            self._private = Path(tempfile.mkdtemp(prefix=f"v-{self.forum_id[:16]}-", dir=parent))
        return self._private

    def listening(self) -> dict[str, bool]:
        """Which listeners are up now ({"rtmp": bool, "srt": bool})."""
        return {name: leg.listening for name, leg in self.legs.items()}

    async def wait_listening(self, timeout: float = 5.0) -> bool:
        """Wait until both listeners are up (an ffmpeg binds a moment after
        it starts: polled, there is nothing to await); False on timeout."""
        deadline = time.monotonic() + timeout
        while not all(self.listening().values()):
            if time.monotonic() > deadline or self.stop_requested:
                return False
            await asyncio.sleep(0.05)
        return True

    def urls(self, public_host: str) -> dict[str, str | None]:
        """The URLs to paste into the venue's encoder; a leg whose listener
        is not up right now gets None (never an address nobody answers)."""
        up = self.listening()
        server = f"rtmp://{public_host}:{self.rtmp_port}/{RTMP_APP}"
        urls: dict[str, str | None] = dict(VenueUrls(
            rtmp_url=f"{server}/{self.stream_key}", rtmp_server=server, stream_key=self.stream_key,
            srt_url=f"srt://{public_host}:{self.srt_port}?mode=caller&passphrase={self.stream_key}&pbkeylen=16",
        ).to_json())
        if not up["rtmp"]:
            urls["rtmp_url"] = urls["rtmp_server"] = None
        if not up["srt"]:
            urls["srt_url"] = None
        return urls

    def request_keyframe(self) -> None:
        """No-op: an RTMP/SRT encoder cannot be asked for a keyframe."""

    async def start(self) -> None:
        assert not self._started, f"VenueIngest({self.forum_id}) started twice"
        self._started = True
        try:
            await self.rtmp.start()
            await self.gate.start()
            await self.srt.start()
        except BaseException:
            await self.stop()
            raise
        self._watchdog = self._start_task(self._watch(), name=f"venue-{self.forum_id}-watchdog")
        logger.info("VenueIngest(%s) waiting: RTMP %s:%d, SRT %s:%d", self.forum_id,
                    self.listen_host, self.rtmp_port, self.listen_host, self.srt_port)

    def _forward(self, leg: _Leg, kind: str, packet: RtpPacket, transcoded: bool = False) -> None:
        if self.stop_requested:
            return
        if packet.ssrc in leg.stale_ssrcs:
            return  # a run that was cut off, flushing: not a publisher coming back
        if not leg.live:
            leg.live = True
            leg.live_since = time.monotonic()
            logger.info("VenueIngest(%s) %s publisher live", self.forum_id, leg.protocol)
        if packet.ssrc not in leg.ssrcs:
            leg.ssrcs.add(packet.ssrc)
        if kind == "video" and not transcoded:
            if self._active is not None and self._active is not leg:
                leg.ts_tap.forget()  # the other protocol has the floor: nothing to check or encode
                return
            if not self._check(leg, packet):
                return  # not checked yet, or being transcoded: the copy is not forwarded
        if self._active is None:
            self._active = leg
            self._set_state(SourceState.LIVE)
        if self._active is not leg:
            return  # the other protocol has the floor
        if transcoded:
            self._sent_profile(leg, packet)
        self.sinks[kind].push(self.continuity[kind].rewrite(packet))

    def _check(self, leg: _Leg, packet: RtpPacket) -> bool:
        """The copied video of a run: decide copy or transcode at its first
        SPS, watch its timestamps while copied. True: forward this packet."""
        if leg.verdict is None:
            nal = sps_from_rtp(packet.payload)
            if nal is None:
                return False  # before the first SPS nothing is decodable anyway
            try:
                leg.sps = parse_sps(nal)
            except SpsError as exc:
                logger.warning("VenueIngest(%s) unreadable SPS (%s): transcoding", self.forum_id, exc)
                leg.sps = None
            self.profile_level_id = leg.sps.profile_level_id if leg.sps is not None else nal[1:4].hex()
            self._decide(leg, check_sps(leg.sps) if leg.sps is not None else Verdict("transcode", "unreadable SPS"))
        if leg.verdict is not None and leg.verdict.transcode:
            return False
        if leg.verdict is not None and leg.verdict.handling == "flagged":
            return True  # the encode failed: forwarded as sent, timestamps and all
        # presentation timestamps that step back: frames out of display order
        last = leg.last_video_ts
        leg.last_video_ts = packet.timestamp
        if last is not None and 0 < ((last - packet.timestamp) & 0xFFFFFFFF) < 0x80000000:
            self._decide(leg, B_FRAMES_SEEN)
            return False
        return True

    def _decide(self, leg: _Leg, verdict: Verdict) -> None:
        leg.verdict = verdict
        sps = leg.sps
        if verdict.transcode:
            logger.warning("VenueIngest(%s) %s feed is transcoded at ingest: %s", self.forum_id, leg.protocol,
                           verdict.reason)
            self._spawn(self._start_transcoder(leg))
        else:
            leg.ts_tap.drop()
            logger.info("VenueIngest(%s) %s feed copied: %s", self.forum_id, leg.protocol,
                        sps.profile_name if sps is not None else "?")
        # what viewers get: the copy's own profile, or the encode's (known at its first SPS)
        self._set_media(source_media(sps, verdict, audio=True))

    def _set_media(self, media: SourceMedia) -> None:
        if media == self.media:
            return
        self.media = media
        if self._on_media is not None:
            try:
                self._on_media(media)
            except Exception:
                logger.exception("VenueIngest(%s) media callback failed", self.forum_id)

    async def _start_transcoder(self, leg: _Leg) -> None:
        if leg.transcoder is not None or leg.transcoded.path is None:
            return
        transcoder = IngestTranscoder(f"transcode-{self.forum_id}-{leg.protocol}", leg.ts_tap, leg.transcoded.path,
                                      leg.sps, ffmpeg_path=self.ffmpeg,
                                      on_failed=lambda why: self._encode_failed(leg, transcoder, why))
        leg.transcoder = transcoder
        self.transcoders_started += 1
        try:
            await transcoder.start()
        except Exception as exc:
            logger.exception("VenueIngest(%s) the ingest encode did not start", self.forum_id)
            self._encode_failed(leg, transcoder, str(exc))

    def _encode_failed(self, leg: _Leg, transcoder: IngestTranscoder, why: str) -> None:
        """The encode is gone: viewers get the copy again, and the operator
        is told it may not play (a picture that stutters beats none)."""
        if leg.transcoder is not transcoder or leg.verdict is None:
            return
        leg.transcoder = None
        self._spawn(transcoder.stop())
        reason = f"{leg.verdict.reason}; the ingest encode failed ({why}): copied as sent"
        logger.error("VenueIngest(%s) %s", self.forum_id, reason)
        leg.verdict = Verdict("flagged", reason)
        leg.ts_tap.drop()
        self._set_media(source_media(leg.sps, leg.verdict, audio=self.media.audio if self.media else True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sent_profile(self, leg: _Leg, packet: RtpPacket) -> None:
        """The encode's first SPS: what viewers get, for the operator."""
        nal = sps_from_rtp(packet.payload)
        if nal is None or self.media is None or self.media.sent_profile_level_id is not None:
            return
        self._set_media(dataclasses.replace(self.media, sent_profile_level_id=nal[1:4].hex()))

    def _leg_down(self, leg: _Leg) -> None:
        leg.live = False
        # the next run is checked afresh (the venue may have changed its settings)
        leg.verdict, leg.sps, leg.last_video_ts = None, None, None
        leg.ts_tap.hold()
        if leg.transcoder is not None:
            self._spawn(leg.transcoder.stop())
            leg.transcoder = None
        if len(leg.stale_ssrcs) > 64:
            leg.stale_ssrcs.clear()
        leg.stale_ssrcs |= leg.ssrcs
        leg.ssrcs.clear()
        if self._active is leg:
            others = [other for other in self.legs.values() if other.live]
            self._active = others[0] if others else None
            if self._active is None and not self.stop_requested:
                self._set_state(SourceState.LOST)

    async def _watch(self) -> None:
        """A publisher that stays connected but sends nothing for
        media_timeout is lost: it is cut off (its ffmpeg restarted at once)
        so that the encoder reconnects, as a dead SRT caller would otherwise
        hold the listener for its 5 s peer idle timeout."""
        while not self.stop_requested:
            await asyncio.sleep(self.media_timeout / 4)  # a periodic check: nothing to await
            now = time.monotonic()
            for leg in self.legs.values():
                if leg.live and now - leg.last_arrival > self.media_timeout:
                    logger.warning("VenueIngest(%s) %s sent nothing for %.1fs: cutting it off", self.forum_id,
                                   leg.protocol, now - leg.last_arrival)
                    self._leg_down(leg)
                    await leg.cut()  # SRT: the supervisor starts a fresh one; RTMP: the gate closes
                elif leg.live and leg is self._active and now - leg.live_since > self.media_timeout:
                    self._note_missing_tracks(leg)

    def _note_missing_tracks(self, leg: _Leg) -> None:
        """A run live for media_timeout with no audio, or no video, at all:
        tell the operator (viewers get the slate's silence or picture)."""
        has_video = max(leg.video.last_arrival, leg.transcoded.last_arrival) >= leg.live_since
        has_audio = leg.audio.last_arrival >= leg.live_since
        media = self.media
        if not has_video and (media is None or media.video_codec is not None):
            self._set_media(SourceMedia(video_codec=None, audio=has_audio, handling="copy",
                                        reason="no video: viewers see the slate's picture"))
        elif has_video and media is not None and media.audio != has_audio:
            self._set_media(dataclasses.replace(media, audio=has_audio))

    async def stop(self) -> None:
        """Stop listening, stop the ffmpegs (legs and encodes), close the
        ports and sockets. Idempotent;
        concurrent callers await one stop."""
        await super().stop()

    async def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.gate.stop()
        await asyncio.gather(*(leg.stop() for leg in self.legs.values()))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)  # the files holding the key
        self._active = None
        self._set_state(SourceState.ENDED)

    def processes(self) -> list[FfmpegProcess]:
        """The ffmpeg children running now (for status pages and tests)."""
        current = [leg.current for leg in self.legs.values()]
        current += [leg.transcoder.process for leg in self.legs.values() if leg.transcoder is not None]
        return [process for process in current if process is not None and process.pid is not None]
