"""Recorded videos played as a live source, paced in real time.

A normalized file (MPEG-TS: Annex-B H.264 constrained baseline with SPS/PPS
before each IDR, Opus 48 kHz stereo; see media_library.py) is demuxed with
PyAV - no decode - and each frame is cut into RTP payloads with aiortc's
H.264 packetizer (single NAL / STAP-A / FU-A); an Opus packet is one
payload. One task per playout sends each frame at `start + media time`
(monotonic clock), so it never runs fast and never drifts: a late wake-up
is caught up by the next frame, not accumulated.

Why not `ffmpeg -re` -> rtp muxer -> RtpUdpIngest: measured on the same
10.6 s file (320x240/30, 2 cores), both cost about the same CPU (this loop
1.7% of a core including demux and packetizing; ffmpeg 0.9% + the UDP
ingest 0.8%), but ffmpeg sent 10.57 s of media in 10.10 s (-re bursts the
first half second: -readrate_initial_burst), costs a process per playout,
and a restart gives new SSRCs and random timestamp bases to patch up after
the fact. Here the timestamps are ours: continuous across restart(), and
derived from the media timestamps, not from counting sleeps.

Keyframe requests: a normalized file has an IDR every 2 s, so a viewer
waits at most 2 s; `request_keyframe()` is a documented no-op.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from streaming.lifecycle import Lifecycle
from streaming.rtp_udp_ingest import PacketSink, h264_codec, opus_codec

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
_AUD = 9  # access unit delimiter: useless over RTP


@dataclass(frozen=True, order=True)
class MediaUnit:
    """One frame of one track, ready to send: its RTP payloads and when."""

    time: float  # seconds since the start of the media
    kind: str = field(compare=False)  # "video" | "audio"
    ticks: int = field(compare=False)  # `time` on the track's RTP clock
    payloads: tuple[bytes, ...] = field(compare=False)
    keyframe: bool = field(compare=False, default=False)


def h264_payloads(annexb: bytes) -> tuple[bytes, ...]:
    """An Annex-B access unit cut into RTP payloads (packetization-mode=1)."""
    nals = [nal for nal in H264Encoder._split_bitstream(annexb) if nal and nal[0] & 0x1F != _AUD]
    return tuple(H264Encoder._packetize(nals))


def demux_units(path: Path, *, per_stream_zero: bool = False, seek: float = 0.0,
                audio_track: int = 0) -> Iterator[MediaUnit]:
    """The frames of a normalized file in demux order (no decode).

    Times count from the file's first timestamp (kept A/V sync), or with
    `per_stream_zero` from each stream's own first one (a loop whose two
    tracks must both start at 0). `seek` > 0 starts near that many seconds
    in (at a keyframe before it; the demuxer seeks, nothing is read up to
    it), with times still counted from the file's start. `audio_track`:
    which of the file's audio tracks (0: the first, the source's default;
    one past the end falls back to the first)."""
    with av.open(str(path)) as container:
        audio = container.streams.audio
        chosen = audio[audio_track:audio_track + 1] if 0 <= audio_track < len(audio) else audio[:1]
        streams = [s for s in (container.streams.video[:1] + chosen)]
        zero: dict[int, float] = {}
        start = container.start_time / 1_000_000 if container.start_time is not None else None
        if seek > 0 and streams:
            # in AV_TIME_BASE units, relative to the file's own first timestamp
            container.seek(int((seek + (start or 0.0)) * 1_000_000), backward=True, any_frame=False)
        for packet in container.demux(streams):
            if packet.size == 0 or packet.pts is None:
                continue
            kind = packet.stream.type
            seconds = float(packet.pts * packet.time_base)
            if per_stream_zero or start is None:
                base = zero.setdefault(packet.stream.index, seconds)
            else:
                base = start
            seconds = max(0.0, seconds - base)
            if kind == "video":
                yield MediaUnit(seconds, "video", round(seconds * VIDEO_CLOCK),
                                h264_payloads(bytes(packet)), bool(packet.is_keyframe))
            elif kind == "audio":
                yield MediaUnit(seconds, "audio", round(seconds * AUDIO_CLOCK), (bytes(packet),))


def from_keyframe_at(units: Iterable[MediaUnit], at: float) -> Iterator[MediaUnit]:
    """Drop everything before the first video keyframe at or after `at`
    seconds (a viewer can only start decoding there; audio follows it)."""
    iterator = iter(units)
    for unit in iterator:
        if unit.kind == "video" and unit.keyframe and unit.time >= at:
            yield unit
            break
    yield from iterator


def time_ordered(units: Iterable[MediaUnit], horizon: float = 1.0) -> Iterator[MediaUnit]:
    """Reorder an interleaved stream by time, looking `horizon` s ahead
    (a muxer interleaves by DTS with some slack between tracks)."""
    heap: list[tuple[float, int, MediaUnit]] = []
    for n, unit in enumerate(units):
        heapq.heappush(heap, (unit.time, n, unit))
        while heap and heap[0][0] < unit.time - horizon:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


class RtpTrack:
    """Turns units of one track into RTP packets for a sink: one SSRC, a
    sequence number that only ever goes up by one, timestamps = a random
    base + an offset + the unit's ticks."""

    def __init__(self, kind: str, sink: PacketSink) -> None:
        self.kind = kind
        self.sink = sink
        self.codec = h264_codec() if kind == "video" else opus_codec()
        self.clock_rate = self.codec.clockRate
        payload_type = self.codec.payloadType
        assert payload_type is not None, "h264_codec() and opus_codec() set a payload type"
        self.payload_type: int = payload_type
        self.ssrc = random.getrandbits(32)
        self.sequence_number = random.getrandbits(16)
        self.base = random.getrandbits(32)
        self.last_timestamp = self.base
        self.packets = 0

    def send(self, unit: MediaUnit, tick_offset: int) -> None:
        timestamp = (self.base + tick_offset + unit.ticks) & 0xFFFFFFFF
        last = len(unit.payloads) - 1
        for i, payload in enumerate(unit.payloads):
            self.sequence_number = (self.sequence_number + 1) & 0xFFFF
            packet = RtpPacket(
                payload_type=self.payload_type,
                marker=1 if self.kind == "video" and i == last else 0,
                sequence_number=self.sequence_number,
                timestamp=timestamp,
                ssrc=self.ssrc,
                payload=payload,
            )
            self.sink.push(packet)
        self.last_timestamp = timestamp
        self.packets += len(unit.payloads)


async def pace(
    units: Iterable[MediaUnit],
    tracks: dict[str, RtpTrack],
    start: float,
    tick_offsets: dict[str, int],
    on_unit: Callable[[MediaUnit], None] | None = None,
) -> None:
    """Send each unit at `start + unit.time` on the loop's monotonic clock.
    Units that are due (late wake-up) go at once: the schedule is absolute,
    so lateness never accumulates."""
    loop = asyncio.get_running_loop()
    for unit in units:
        delay = start + unit.time - loop.time()
        if delay > 0.001:
            await asyncio.sleep(delay)  # pacing, not synchronisation
        track = tracks.get(unit.kind)
        if track is not None:
            track.send(unit, tick_offsets[unit.kind])
        if on_unit is not None:
            on_unit(unit)


class _State(enum.Enum):
    NEW = "new"
    PLAYING = "playing"
    ENDED = "ended"  # the file played to its end
    STOPPED = "stopped"


class FilePlayout(Lifecycle[_State]):
    """Plays a normalized file as a source: RTP into `video` and `audio`
    sinks (the media plane's RtpSources), in real time.

    States: new -> playing -> ended | stopped; restart() plays it again
    from the start with continuous sequence numbers and timestamps.
    `ended` is set (and `on_ended()` called) when the file has played out.
    """

    def __init__(
        self,
        path: Path,
        source_id: str,
        video: PacketSink,
        audio: PacketSink | None = None,
        *,
        on_ended: Callable[[], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        audio_track: int = 0,
    ) -> None:
        super().__init__(_State.NEW, f"FilePlayout({source_id})")
        if on_state is not None:
            self.add_state_listener(lambda state: on_state(state.value))
        self.path = Path(path)
        self.audio_track = audio_track  # which of the file's audio tracks is sent
        self.source_id = source_id
        self.tracks: dict[str, RtpTrack] = {"video": RtpTrack("video", video)}
        if audio is not None:
            self.tracks["audio"] = RtpTrack("audio", audio)
        self.video_codec = self.tracks["video"].codec
        self.audio_codec = opus_codec()
        self._on_ended = on_ended
        self._task: asyncio.Task[None] | None = None
        self._first_start = 0.0
        self.position = 0.0  # seconds of media sent in the current run
        self.runs = 0
        self.ended = asyncio.Event()

    @property
    def state(self) -> str:
        return self._state.value

    def request_keyframe(self) -> None:
        """No-op: the file has an IDR every 2 s (normalized that way)."""

    async def start(self, start_at: float = 0.0) -> None:
        """Play from the start, or from the first keyframe at or after
        `start_at` seconds (joining a slot already under way)."""
        assert self._state is _State.NEW, f"FilePlayout({self.source_id}) started twice"
        if not self.path.is_file():
            raise RoomError("not_found", f"no such video file: {self.path.name}")
        self._play(start_at)

    def _play(self, start_at: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.runs == 0:
            self._first_start = now
        self.runs += 1
        # the wall time since the first start, on each clock: a restart
        # continues the timestamps as a pause would
        offsets = {
            kind: round((now - self._first_start) * track.clock_rate) for kind, track in self.tracks.items()
        }
        self.position = 0.0
        self.ended.clear()
        self._set_state(_State.PLAYING)
        self._task = self._start_task(self._run(now, offsets, start_at), name=f"playout-{self.source_id}")

    async def _run(self, start: float, offsets: dict[str, int], start_at: float = 0.0) -> None:
        def advance(unit: MediaUnit) -> None:
            self.position = max(self.position, unit.time)

        try:
            units = time_ordered(demux_units(self.path, seek=start_at, audio_track=self.audio_track))
            if start_at > 0:
                units = from_keyframe_at(units, start_at)
                first = next(units, None)
                if first is None:
                    logger.info("FilePlayout(%s) is shorter than %.1f s: nothing to play", self.source_id, start_at)
                else:
                    # the schedule and the RTP clocks start at that frame, so its
                    # timestamps follow the wall clock as a start from 0 would
                    start -= first.time
                    offsets = {kind: tick - round(first.time * self.tracks[kind].clock_rate)
                               for kind, tick in offsets.items()}
                    units = itertools.chain([first], units)
            await pace(units, self.tracks, start, offsets, advance)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("FilePlayout(%s) failed reading %s", self.source_id, self.path)
        self._set_state(_State.ENDED)
        self.ended.set()
        if self._on_ended is not None:
            try:
                self._on_ended()
            except Exception:
                logger.exception("FilePlayout(%s) ended callback failed", self.source_id)

    async def restart(self) -> None:
        """Play again from the start (the timestamps go on)."""
        assert self._state is not _State.STOPPED, "restart after stop"
        await self._cancel()
        self._play()

    async def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def stop(self) -> None:
        """Stop sending. Idempotent; concurrent callers await one stop."""
        await super().stop()

    async def _stop(self) -> None:
        await self._cancel()
        self._set_state(_State.STOPPED)
