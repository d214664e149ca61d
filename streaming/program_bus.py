"""What a group of viewers watches, as one continuous stream.

A `ProgramBus` has a video lane and an audio lane. Viewers subscribe
downtracks to the lanes; the bus is subscribed to the current source. A
forum's program is one bus (the switcher drives it with `switch_to`);
an operator's preview tile of one source is a bus pinned to that source.

`switch_to(feed)` performs the keyframe-aligned cut once for all
subscribers: the video lane keeps forwarding the old source and asks the
new one for a keyframe at once; at the new source's first keyframe it
re-bases its sequence/timestamp offsets so the lane's numbers continue
(monotonic sequence, timestamps advanced by the wall-clock gap, never
backwards) and drops the old source. The audio lane cuts at the same
moment, at the new source's next audio packet.

Viewers always get both tracks: a feed that has no video, or whose video
does not flow (an audio-only WHIP encoder, a browser with its camera
off, a venue feed without video), shows the `cover` feed's picture (the
forum's slate: encoded once, looped as packets, so it costs no viewer
anything); a feed without flowing audio gets the cover's audio (the
slate's, 20 ms Opus frames of silence). `refresh()` re-picks when a
track starts or stops flowing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streaming import fanout_batch
from streaming.fanout_batch import LaneBatch
from streaming.program_sink import ProgramSink
from streaming.rtp_source import ForwardPacket, RtpSource, SourceFeed

if TYPE_CHECKING:
    from streaming.downtrack import Downtrack

logger = logging.getLogger(__name__)


class Lane:
    """One kind (video or audio) of a bus: the current source, the source
    it is cutting to, and the downtracks that receive it."""

    def __init__(self, kind: str, name: str = "") -> None:
        self.kind = kind
        self.name = name
        self.source: RtpSource | None = None
        self.pending: RtpSource | None = None
        self.armed = True  # audio waits for the video cut before cutting
        self.downtracks: tuple[ProgramSink, ...] = ()  # viewers and outputs
        self.slow: tuple[ProgramSink, ...] = ()  # those not in the batch: called one by one
        self.batch: LaneBatch | None = None  # the viewers sent to in one C call (made on first use)
        self._ready: list[Downtrack] = []  # to batch after the current packet
        self.seq_off = 0
        self.ts_off = 0
        self.floor = 0  # first source seq of the current source
        self.next_seq = random.randrange(0, 0x8000)
        self.last_ts = random.getrandbits(32)
        self.last_wall = time.time()
        self.codec_key: str | None = None
        self.packets = 0
        self.cuts = 0
        self.on_cut: Callable[[Lane], None] | None = None
        self.peer: Lane | None = None  # the bus's other lane (for a shared clock)

    # --- sources -------------------------------------------------------

    def prepare(self, source: RtpSource | None, armed: bool = True) -> None:
        """Cut to `source` at its next keyframe (None: stop now)."""
        if self.pending is not None:
            self.pending.remove_sink(self._on_pending)
            self.pending = None
        if source is None:
            self._detach_current()
            self.codec_key = None
            for dt in self.downtracks:
                dt.set_codec(None)
            return
        if source is self.source:
            return
        self.pending = source
        self.armed = armed
        source.add_sink(self._on_pending)
        source.request_keyframe()

    def arm(self) -> None:
        self.armed = True

    def _detach_current(self) -> None:
        if self.source is not None:
            self.source.remove_sink(self.on_packet)
            self.source = None

    def _on_pending(self, fp: ForwardPacket) -> None:
        if not self.armed or not fp.key or fp.late:
            return
        source = self.pending
        if source is None:
            return
        source.remove_sink(self._on_pending)
        self.pending = None
        self._detach_current()
        # continue the lane's numbers from the frame's first packet
        first = fp.head[0] if fp.head else fp
        gap = fp.arrival - self.last_wall
        step = max(1, int(gap * source.clock_rate)) if gap > 0 else 1
        self.seq_off = (self.next_seq - first.seq) & 0xFFFF
        self.ts_off = ((self.last_ts + step) - fp.timestamp) & 0xFFFFFFFF
        self.floor = first.seq
        self.source = source
        self.codec_key = source.codec_key
        for dt in self.downtracks:
            dt.set_codec(self.codec_key)
        source.add_sink(self.on_packet)
        self.cuts += 1
        if self.on_cut is not None:
            self.on_cut(self)
        for h in fp.head:
            self.on_packet(h)
        self.on_packet(fp)

    # --- the hot path --------------------------------------------------

    def on_packet(self, fp: ForwardPacket) -> None:
        """Sink on the current source: rewrite once for the lane, then
        hand the packet to every downtrack: the batched ones in one call,
        the others one by one."""
        seq = (fp.seq + self.seq_off) & 0xFFFF
        ts = (fp.timestamp + self.ts_off) & 0xFFFFFFFF
        if fp.late:
            if ((fp.seq - self.floor) & 0xFFFF) >= 0x8000:
                return  # belongs to before the cut
            sinks = self.downtracks  # an upstream retransmission: each decides (rare)
        else:
            self.next_seq = (seq + 1) & 0xFFFF
            self.last_ts = ts
            self.last_wall = fp.arrival
            self.packets += 1
            sinks = self.slow
        for dt in sinks:
            try:
                dt.forward(fp, seq, ts)
            except Exception:  # one broken viewer must not stop the others
                logger.exception("Lane(%s) downtrack %#x failed: removed", self.name, dt.ssrc)
                self.remove(dt)
        batch = self.batch
        if batch is not None and batch.members and not fp.late:
            for dt in batch.send(fp, seq, ts):
                self.unbatch(dt)
                dt.blocked(seq)
        if self._ready:
            self._join_ready()

    def ready(self, dt: Downtrack) -> None:
        """`dt` now forwards normally: batch it after the current packet."""
        if fanout_batch.available():
            self._ready.append(dt)

    def _join_ready(self) -> None:
        ready, self._ready = self._ready, []
        for dt in ready:
            if dt.lane is not self or not dt.can_batch():
                continue
            if self.batch is None:
                self.batch = LaneBatch()
            self.batch.join(dt)
        self._split()

    def unbatch(self, dt: Downtrack) -> None:
        """Back to the per-packet path (it may rejoin via ready())."""
        if self.batch is not None and dt.batch is self.batch:
            self.batch.leave(dt)
            self._split()

    def _split(self) -> None:
        batch = self.batch
        members = batch.members if batch is not None else {}
        self.slow = tuple(d for d in self.downtracks if id(d) not in members)

    # --- viewers -------------------------------------------------------

    def add(self, dt: ProgramSink) -> None:
        dt.lane = self
        dt.set_codec(self.codec_key)
        self.downtracks = self.downtracks + (dt,)
        self.slow = self.slow + (dt,)
        self.request_keyframe()

    def remove(self, dt: ProgramSink) -> None:
        batch = self.batch
        if batch is not None and id(dt) in batch.members:
            batch.leave(batch.members[id(dt)])
        # new tuples: on_packet may be iterating the old ones right now
        self.downtracks = tuple(d for d in self.downtracks if d is not dt)
        self.slow = tuple(d for d in self.slow if d is not dt)
        dt.lane = None

    def request_keyframe(self) -> None:
        if self.pending is not None:
            self.pending.request_keyframe()
        if self.source is not None:
            self.source.request_keyframe()

    def report_clock(self) -> tuple[float, int]:
        """(wall seconds, lane timestamp) for a sender report. From the
        source's own clock when this lane and its peer both know theirs (so
        audio and video share one time base), else from the arrival time of
        the lane's last packet."""
        source = self.source
        peer = self.peer
        if (
            source is not None
            and source.clock_reference is not None
            and (peer is None or peer.source is None or peer.source.clock_reference is not None)
        ):
            wall = source.wall_time((self.last_ts - self.ts_off) & 0xFFFFFFFF)
            if wall is not None:
                return wall, self.last_ts
        return self.last_wall, self.last_ts

    def lookup(self, lane_seq: int) -> tuple[ForwardPacket, int] | None:
        """A past packet of the current source by lane sequence number,
        with its lane timestamp (for NACKs)."""
        source = self.source
        if source is None:
            return None
        src_seq = (lane_seq - self.seq_off) & 0xFFFF
        if ((src_seq - self.floor) & 0xFFFF) >= 0x8000:
            return None
        fp = source.lookup(src_seq)
        if fp is None:
            return None
        return fp, (fp.timestamp + self.ts_off) & 0xFFFFFFFF

    def close(self) -> None:
        self.prepare(None)
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        for dt in self.downtracks:
            dt.lane = None
        self.downtracks = ()
        self.slow = ()
        self._ready = []


class ProgramBus:
    """A forum's program (or one pinned source): two lanes and the feed
    they carry. The switcher calls `switch_to`; viewers `subscribe`."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.video = Lane("video", name)
        self.audio = Lane("audio", name)
        self.feed: SourceFeed | None = None  # what the bus is cutting to / showing
        self._on_air: SourceFeed | None = None  # what viewers see now
        self.cover: SourceFeed | None = None  # stands in for a track the feed lacks (the slate)
        self._targets: tuple[RtpSource | None, RtpSource | None] = (None, None)  # (video, audio) picked
        self.video.on_cut = self._on_video_cut
        self.video.peer = self.audio
        self.audio.peer = self.video

    def switch_to(self, feed: SourceFeed | None) -> None:
        """Cut to `feed` at its next keyframe (None: nothing on air)."""
        if feed is self.feed:
            self.refresh()
            return
        self.feed = feed
        if feed is None:
            self.video.prepare(None)
            self.audio.prepare(None)
            self._targets = (None, None)
            self._on_air = None
            return
        video, audio = self._pick(feed)
        self._targets = (video, audio)
        waits_for_video = video is not None and self.video.source is not None and video is not self.video.source
        if not waits_for_video:
            self._on_air = feed  # nothing to wait for (no picture, or the picture already on the lane)
        self.video.prepare(video)
        # audio follows the picture: it cuts when the video does
        self.audio.prepare(audio, armed=not waits_for_video)

    def _pick(self, feed: SourceFeed) -> tuple[RtpSource | None, RtpSource | None]:
        """The feed's own tracks where they flow, else the cover's."""
        cover = self.cover if self.cover is not feed else None

        def pick(own: RtpSource | None, stand_in: RtpSource | None) -> RtpSource | None:
            if own is not None and not own.idle:
                return own
            if stand_in is not None and not stand_in.idle:
                return stand_in
            return own  # nothing better: wait for its first packet

        return (pick(feed.video, cover.video if cover else None), pick(feed.audio, cover.audio if cover else None))

    def refresh(self) -> None:
        """Re-pick the tracks of the current feed (one of its tracks, or
        the cover's, started or stopped flowing): a lane whose pick
        changed cuts to it (video at its next keyframe)."""
        feed = self.feed
        if feed is None:
            return
        video, audio = self._pick(feed)
        if (video, audio) == self._targets:
            return
        old_video, old_audio = self._targets
        self._targets = (video, audio)
        if video is not old_video:
            self.video.prepare(video)
            if video is None or video is self.video.source:
                self._on_air = feed
        if audio is not old_audio:
            self.audio.prepare(audio, armed=True)

    def set_cover(self, cover: SourceFeed | None) -> None:
        """The feed whose tracks stand in for missing ones (the slate)."""
        if cover is self.cover:
            return
        self.cover = cover
        self.refresh()

    def _on_video_cut(self, lane: Lane) -> None:
        self._on_air = self.feed
        self.audio.arm()

    @property
    def on_air(self) -> str | None:
        """The source id viewers see now (changes at the cut, not at switch_to)."""
        return self._on_air.source_id if self._on_air is not None else None

    def subscribe(self, video: ProgramSink | None, audio: ProgramSink | None) -> None:
        if video is not None:
            self.video.add(video)
        if audio is not None:
            self.audio.add(audio)

    def unsubscribe(self, video: ProgramSink | None, audio: ProgramSink | None) -> None:
        if video is not None:
            self.video.remove(video)
        if audio is not None:
            self.audio.remove(audio)

    @property
    def viewers(self) -> int:
        return max(len(self.video.downtracks), len(self.audio.downtracks))

    def close(self) -> None:
        self.feed = None
        self.cover = None
        self._targets = (None, None)
        self._on_air = None
        self.video.close()
        self.audio.close()
