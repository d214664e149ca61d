"""The venue's encoder, over RTMP or SRT, as a source of one forum.

Per forum, one RTMP port and one SRT port (from settings). Each protocol is
a leg: a supervised ffmpeg that listens for the encoder, copies its H.264
(h264_mp4toannexb puts SPS/PPS in front of each IDR, which FLV keeps only
in its header) and transcodes its audio to Opus 48 kHz stereo, and sends
both through ffmpeg's rtp muxer to two RtpUdpIngests on loopback.
Whichever leg goes live first has the floor; the other is ignored until
the first is lost.

Each run's video is checked at its first SPS (ingest_check.check_sps:
profile, B-frames, size, frame rate): what browsers play is copied as it
is; what they cannot (x264 high with B-frames, 4:2:2, interlaced, 4K...)
is encoded once by an IngestTranscoder fed from the leg's second, MPEG-TS
copy (ingest_transcoder.py), and the copy is dropped. A stream whose SPS
does not tell (no VUI bitstream_restriction) is copied while its RTP
timestamps go forwards, and transcoded from the first one that steps
back. `media` (and `on_media`) tell the operator which, and why.

Stream key:
- SRT: it is the passphrase (AES, enforced): libsrt rejects a wrong or
  missing one in the handshake and ffmpeg keeps listening.
- RTMP: ffmpeg's listener accepts any stream name, so the public port is
  an RtmpKeyGate (rtmp_gate.py) that reads the stream name the encoder
  publishes and only then lets it through to ffmpeg on a private port.

Why a port per forum and not one port with per-key routing: ffmpeg's
listener takes one publisher, and routing SRT by streamid would need SRT
in Python. 21 forums x 2 ports is a short list for a firewall.

When the encoder disconnects, ffmpeg exits and the supervisor starts it
again at once (capped backoff only if it keeps failing fast); the state
goes live -> lost -> live and RtpContinuity keeps one SSRC, sequence and
timestamp line across reconnects and across RTMP/SRT. Keyframe requests
cannot reach an RTMP/SRT encoder: `request_keyframe()` is a no-op (ask the
venue for a 2 s keyframe interval).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import ffmpeg
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from rooms.models import SourceState
from rooms.models import SourceMedia
from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor
from streaming.h264_sps import H264Sps, SpsError, parse_sps, sps_from_rtp
from streaming.ingest_check import B_FRAMES_SEEN, Verdict, check_sps, source_media
from streaming.ingest_transcoder import IngestTranscoder, TsTap, tap_output
from streaming.rtmp_gate import RtmpKeyGate
from streaming.rtp_udp_ingest import PacketSink, RtpContinuity, RtpUdpIngest, rtp_output_options

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_-]{10,79}$")  # SRT passphrases are 10-79 characters
RTMP_APP = "live"
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


def _tee_slave(options: dict[str, object], url: str) -> str:
    """One slave of ffmpeg's tee muxer: "[k=v:...:onfail=ignore]url"."""
    return "[" + ":".join(f"{k}={v}" for k, v in {**options, "onfail": "ignore"}.items()) + "]" + url


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Tap:
    """The sink an RtpUdpIngest of a leg pushes into (`transcoded`: the
    ingest encode's output rather than the encoder's copy)."""

    def __init__(self, leg: _Leg, kind: str, transcoded: bool = False) -> None:
        self.leg, self.kind, self.transcoded = leg, kind, transcoded

    def push(self, packet: RtpPacket) -> None:
        self.leg.venue._forward(self.leg, self.kind, packet, self.transcoded)


class _Leg:
    """One protocol: its listener ffmpeg and its two loopback ingests."""

    def __init__(self, venue: VenueIngest, protocol: str) -> None:
        self.venue = venue
        self.protocol = protocol
        self.live = False
        self.live_since = 0.0  # time.monotonic() of this run's first packet
        self.internal_port = 0  # RTMP: where ffmpeg listens behind the gate
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
        self.supervisor = Supervisor(
            self.args, name=f"venue-{venue.forum_id}-{protocol}", ffmpeg=venue.ffmpeg,
            policy=venue.policy, stop_grace=0.3, on_exit=self.exited,  # nothing to finalize: RTP out
        )

    @property
    def last_arrival(self) -> float:
        return max(self.video.last_arrival, self.audio.last_arrival, self.transcoded.last_arrival)

    def args(self) -> list[str]:
        key = self.venue.stream_key
        options: dict[str, object] = {"analyzeduration": 1_000_000}  # live quickly: 1 s of probing
        video_options: dict[str, object] = {}
        if self.protocol == "rtmp":
            self.internal_port = _free_tcp_port()
            url = f"rtmp://127.0.0.1:{self.internal_port}/{RTMP_APP}/{key}"
            options["listen"] = 1
            video_options["bsf:v"] = "h264_mp4toannexb"  # on the tee output: a slave's bsfs is not applied
        else:
            url = (f"srt://{self.venue.listen_host}:{self.venue.srt_port}"
                   f"?mode=listener&passphrase={key}&pbkeylen=16")
        source = ffmpeg.input(url, **options)
        video_url, video_rtp = rtp_output_options("video", self.video.port)
        audio_url, audio_rtp = rtp_output_options("audio", self.audio.port)
        tap_url, tap_options = tap_output(self.ts_tap.port)
        # One tee output whose slaves pick their stream: an encoder without audio (or
        # without video) still plays, its missing slave failing alone (onfail=ignore).
        # Separate outputs with optional maps would not: ffmpeg fills an output whose
        # map matched nothing by its own choice (the video, encoded to MPEG-4 Part 2
        # for the audio port), or refuses one left empty.
        slaves = "|".join((
            _tee_slave({"select": "v", **video_rtp}, video_url),
            _tee_slave({"select": "v", **tap_options}, tap_url),  # for the ingest encode, if the check asks
            _tee_slave({"select": "a", **audio_rtp}, audio_url),
        ))
        return ffmpeg.output(source["v:0?"], source["a:0?"], slaves, f="tee", vcodec="copy", acodec="libopus",
                             ar=48000, ac=2, **{"b:a": "96k"}, **video_options).get_args()

    def exited(self, result: FfmpegExit) -> None:
        if self.live:
            logger.info("VenueIngest(%s) %s publisher gone: %s", self.venue.forum_id, self.protocol,
                        result.describe())
        self.venue._leg_down(self)


class VenueIngest:
    """The venue feed of one forum: RTMP on `listen_host`:`rtmp_port` and SRT
    on `listen_host`:`srt_port`, both keyed by `stream_key`, into
    `video`/`audio`. ffmpeg's own RTMP listener stays on loopback behind the
    key gate.

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
        on_media: Callable[[SourceMedia], None] | None = None,
        source_id: str | None = None,
        ffmpeg: str = "",
        policy: RestartPolicy = VENUE_POLICY,
        media_timeout: float = 2.0,
        idle_timeout: float = 10.0,
        listen_host: str = "127.0.0.1",
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
        self.media: SourceMedia | None = None  # what the encoder sends and how it is handled
        self._on_media = on_media
        self.transcoders_started = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.legs = {"rtmp": _Leg(self, "rtmp"), "srt": _Leg(self, "srt")}
        self.gate = RtmpKeyGate(rtmp_port, stream_key, lambda: self.legs["rtmp"].internal_port,
                                name=forum_id, idle_timeout=idle_timeout, host=listen_host)

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

    def urls(self, public_host: str) -> dict[str, str]:
        """The URLs to paste into the venue's encoder."""
        server = f"rtmp://{public_host}:{self.rtmp_port}/{RTMP_APP}"
        return VenueUrls(
            rtmp_url=f"{server}/{self.stream_key}", rtmp_server=server, stream_key=self.stream_key,
            srt_url=f"srt://{public_host}:{self.srt_port}?mode=caller&passphrase={self.stream_key}&pbkeylen=16",
        ).to_json()

    def request_keyframe(self) -> None:
        """No-op: an RTMP/SRT encoder cannot be asked for a keyframe."""

    async def start(self) -> None:
        assert not self._started, f"VenueIngest({self.forum_id}) started twice"
        self._started = True
        try:
            for leg in self.legs.values():
                await leg.video.start()
                await leg.audio.start()
                await leg.transcoded.start()
                await leg.ts_tap.start()
            await self.gate.start()
            for leg in self.legs.values():
                await leg.supervisor.start()
        except BaseException:
            await self.stop()
            raise
        self._watchdog = asyncio.create_task(self._watch(), name=f"venue-{self.forum_id}-watchdog")
        logger.info("VenueIngest(%s) waiting: RTMP %s:%d, SRT %s:%d", self.forum_id,
                    self.listen_host, self.rtmp_port, self.listen_host, self.srt_port)

    def _forward(self, leg: _Leg, kind: str, packet: RtpPacket, transcoded: bool = False) -> None:
        if self._stopped:
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
        if leg.transcoder is not None:
            return
        transcoder = IngestTranscoder(f"transcode-{self.forum_id}-{leg.protocol}", leg.ts_tap, leg.transcoded.port,
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
                    if leg.supervisor.current is not None:
                        await leg.supervisor.current.kill()  # the supervisor starts a fresh one
                elif leg.live and leg is self._active and now - leg.live_since > self.media_timeout:
                    self._note_missing_tracks(leg)

    def _note_missing_tracks(self, leg: _Leg) -> None:
        """A run live for media_timeout with no audio, or no video, at all:
        tell the operator (viewers get the slate's silence or picture)."""
        has_video = leg.video.last_arrival >= leg.live_since
        has_audio = leg.audio.last_arrival >= leg.live_since
        media = self.media
        if not has_video and (media is None or media.video_codec is not None):
            self._set_media(SourceMedia(video_codec=None, audio=has_audio, handling="copy",
                                        reason="no video: viewers see the slate's picture"))
        elif has_video and media is not None and media.audio != has_audio:
            self._set_media(dataclasses.replace(media, audio=has_audio))

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
                await asyncio.gather(*(leg.supervisor.stop() for leg in self.legs.values()))
                for leg in self.legs.values():
                    if leg.transcoder is not None:
                        await leg.transcoder.stop()
                        leg.transcoder = None
                    leg.ts_tap.close()
                    await leg.video.stop()
                    await leg.audio.stop()
                    await leg.transcoded.stop()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                self._active = None
                self._set_state(SourceState.ENDED)
            finally:
                self._stop_future.set_result(None)
        else:
            await asyncio.shield(self._stop_future)

    def processes(self) -> list[FfmpegProcess]:
        """The ffmpeg children running now (for status pages and tests)."""
        current = [leg.supervisor.current for leg in self.legs.values()]
        current += [leg.transcoder.process for leg in self.legs.values() if leg.transcoder is not None]
        return [process for process in current if process is not None and process.pid is not None]
