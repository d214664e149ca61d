"""The venue's encoder, over RTMP or SRT, as a source of one forum.

Per forum, one RTMP port and one SRT port (from settings). Each protocol is
a leg: an ffmpeg that takes the encoder's stream (SRT: listening itself,
supervised; RTMP: FLV on stdin from the key gate), copies its H.264 (no
video transcode; h264_mp4toannexb puts SPS/PPS in front of each IDR, which
FLV keeps only in its header) and transcodes its audio to Opus 48 kHz
stereo, and sends both through ffmpeg's rtp muxer to two RtpUdpIngests on
Unix datagram sockets in the ingest's private (0700) directory: a loopback
UDP port would take forged RTP from any local user. Whichever leg goes live
first has the floor; the other is ignored until the first is lost.

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
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from rooms.models import SourceState
from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor
from streaming.rtmp_gate import FlvSink, RtmpKeyGate
from streaming.rtp_udp_ingest import PacketSink, RtpContinuity, RtpUdpIngest, rtp_output_options

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_-]{10,79}$")  # SRT passphrases are 10-79 characters
RTMP_APP = "live"
_MAX_SOCKET_DIR = 62  # + "/v-<forum id, 16>-<8>/rtmp-video.sock" (44) stays under 108 bytes
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


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600 from the
    first byte: created with that mode, never chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class _Tap:
    """The sink an RtpUdpIngest of a leg pushes into."""

    def __init__(self, leg: _Leg, kind: str) -> None:
        self.leg, self.kind = leg, kind

    def push(self, packet: RtpPacket) -> None:
        self.leg.venue._forward(self.leg, self.kind, packet)


class _Leg:
    """One protocol: its ffmpeg and its two RTP ingests (video, audio)."""

    def __init__(self, venue: VenueIngest, protocol: str) -> None:
        self.venue = venue
        self.protocol = protocol
        self.live = False
        self.ssrcs: set[int] = set()  # of the ffmpeg run on air
        self.stale_ssrcs: set[int] = set()  # of runs given up on: their last packets are dropped
        self.video = RtpUdpIngest(_Tap(self, "video"), kind="video", name=f"{venue.forum_id}-{protocol}-v")
        self.audio = RtpUdpIngest(_Tap(self, "audio"), kind="audio", name=f"{venue.forum_id}-{protocol}-a")

    @property
    def last_arrival(self) -> float:
        return max(self.video.last_arrival, self.audio.last_arrival)

    @property
    def current(self) -> FfmpegProcess | None:
        """The leg's ffmpeg, if one runs."""
        raise NotImplementedError

    @property
    def listening(self) -> bool:
        """Whether an encoder can connect to this leg right now."""
        raise NotImplementedError

    def outputs(self, source: ffmpeg.nodes.FilterableStream, video_options: dict[str, object]) -> list[str]:
        video_url, video_rtp = rtp_output_options("video", self.video.port, self.video.path)
        audio_url, audio_rtp = rtp_output_options("audio", self.audio.port, self.audio.path)
        return ffmpeg.merge_outputs(
            source["v:0"].output(video_url, vcodec="copy", **video_options, **video_rtp),
            # "?": an encoder without audio still plays (video only)
            source["a:0?"].output(audio_url, acodec="libopus", ar=48000, ac=2, **{"b:a": "96k"}, **audio_rtp),
        ).get_args()

    async def start(self) -> None:
        # Unix datagram sockets in the private directory, not loopback UDP
        # ports: any local user could send RTP to those and be on air
        private = self.venue.private_dir()
        self.video.path = str(private / f"{self.protocol}-video.sock")
        self.audio.path = str(private / f"{self.protocol}-audio.sock")
        await self.video.start()
        await self.audio.start()

    async def cut(self) -> None:
        """Cut a silent publisher off (its ffmpeg killed)."""
        if self.current is not None:
            await self.current.kill()

    async def stop(self) -> None:
        await self.video.stop()
        await self.audio.stop()

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
        if self.venue._stopped:
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


class VenueIngest:
    """The venue feed of one forum: RTMP on `listen_host`:`rtmp_port` and SRT
    on `listen_host`:`srt_port`, both keyed by `stream_key`, into
    `video`/`audio`. Nothing else listens: the RTMP port is the key gate's,
    and the ffmpegs reach the server over private Unix sockets and stdin.

    State (a SourceState): connecting -> live <-> lost -> ended, reported
    through `on_state(state)` on each change.
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
        self._on_state = on_state
        self._state = SourceState.CONNECTING
        self._started = False
        self._stopped = False
        self._stop_future: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._active: _Leg | None = None
        self.profile_level_id: str | None = None  # the encoder's, from its SPS (e.g. "42c01e")
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

    def _set_state(self, state: SourceState) -> None:
        if state is self._state:
            return
        logger.info("VenueIngest(%s) %s -> %s", self.forum_id, self._state.value, state.value)
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("VenueIngest(%s) state callback failed", self.forum_id)

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
            if time.monotonic() > deadline or self._stopped:
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
        self._watchdog = asyncio.create_task(self._watch(), name=f"venue-{self.forum_id}-watchdog")
        logger.info("VenueIngest(%s) waiting: RTMP %s:%d, SRT %s:%d", self.forum_id,
                    self.listen_host, self.rtmp_port, self.listen_host, self.srt_port)

    def _forward(self, leg: _Leg, kind: str, packet: RtpPacket) -> None:
        if self._stopped:
            return
        if packet.ssrc in leg.stale_ssrcs:
            return  # a run that was cut off, flushing: not a publisher coming back
        if not leg.live:
            leg.live = True
            logger.info("VenueIngest(%s) %s publisher live", self.forum_id, leg.protocol)
        if packet.ssrc not in leg.ssrcs:
            leg.ssrcs.add(packet.ssrc)
            if kind == "video":
                self.profile_level_id = None  # a new run: read the encoder's SPS again
        if kind == "video" and self.profile_level_id is None:
            self._read_profile(packet.payload)
        if self._active is None:
            self._active = leg
            self._set_state(SourceState.LIVE)
        if self._active is not leg:
            return  # the other protocol has the floor
        self.sinks[kind].push(self.continuity[kind].rewrite(packet))

    def _read_profile(self, payload: bytes) -> None:
        """Note the encoder's H.264 profile (from its SPS): the video is
        copied, so a profile viewers may not decode is worth a warning."""
        sps = None
        if payload and payload[0] & 0x1F == 7:
            sps = payload[1:4]
        elif payload and payload[0] & 0x1F == 24:  # STAP-A: 2-byte size + NAL, repeated
            at = 1
            while at + 3 < len(payload) and sps is None:
                size = int.from_bytes(payload[at:at + 2], "big")
                if payload[at + 2] & 0x1F == 7:
                    sps = payload[at + 3:at + 6]
                at += 2 + size
        if sps is None or len(sps) < 3:
            return
        self.profile_level_id = sps.hex()
        if sps[0] not in (66, 77):  # baseline, main: what every browser decodes
            logger.warning("VenueIngest(%s) the encoder sends H.264 profile_idc %d (profile-level-id %s): "
                           "ask the venue for baseline or main", self.forum_id, sps[0], self.profile_level_id)

    def _leg_down(self, leg: _Leg) -> None:
        leg.live = False
        if len(leg.stale_ssrcs) > 64:
            leg.stale_ssrcs.clear()
        leg.stale_ssrcs |= leg.ssrcs
        leg.ssrcs.clear()
        if self._active is leg:
            others = [other for other in self.legs.values() if other.live]
            self._active = others[0] if others else None
            if self._active is None and not self._stopped:
                self._set_state(SourceState.LOST)

    async def _watch(self) -> None:
        """A publisher that stays connected but sends nothing for
        media_timeout is lost: it is cut off (its ffmpeg restarted at once)
        so that the encoder reconnects, as a dead SRT caller would otherwise
        hold the listener for its 5 s peer idle timeout."""
        while not self._stopped:
            await asyncio.sleep(self.media_timeout / 4)  # a periodic check: nothing to await
            now = time.monotonic()
            for leg in self.legs.values():
                if leg.live and now - leg.last_arrival > self.media_timeout:
                    logger.warning("VenueIngest(%s) %s sent nothing for %.1fs: cutting it off", self.forum_id,
                                   leg.protocol, now - leg.last_arrival)
                    self._leg_down(leg)
                    await leg.cut()  # SRT: the supervisor starts a fresh one; RTMP: the gate closes

    async def stop(self) -> None:
        """Stop listening, stop ffmpeg, close the ports. Idempotent;
        concurrent callers await one future."""
        if self._stop_future is None:
            self._stop_future = asyncio.get_running_loop().create_future()
            try:
                self._stopped = True
                if self._watchdog is not None:
                    self._watchdog.cancel()
                await self.gate.stop()
                await asyncio.gather(*(leg.stop() for leg in self.legs.values()))
                if self._private is not None:
                    shutil.rmtree(self._private, ignore_errors=True)  # the files holding the key
                self._active = None
                self._set_state(SourceState.ENDED)
            finally:
                self._stop_future.set_result(None)
        else:
            await asyncio.shield(self._stop_future)

    def processes(self) -> list[FfmpegProcess]:
        """The ffmpeg children running now (for status pages and tests)."""
        current = [leg.current for leg in self.legs.values()]
        return [process for process in current if process is not None and process.pid is not None]
