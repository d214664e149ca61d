"""The media plane of one node: every publisher and viewer peer
connection, and each forum's fan-out.

Publishers' packets are received once (never decoded) and handed, one
synchronous call per packet, to the forum's program bus and preview buses,
which rewrite, protect and send them to each viewer. See DESIGN.md "How
media flows" and streaming/downtrack.py for the per-packet path.

Codecs: publishers get H.264 preferred (any profile browsers play,
constrained baseline first; the answer mirrors the offered fmtp, see
offer_answer.py), VP8 if that is all they send, Opus for audio. Viewers negotiate every video
codec they offer among H.264 and VP8 (H.264 first) and each packet goes
out under that viewer's payload type for its codec, so a VP8 source
reaches browsers too. A viewer that cannot take the codec on air gets no
video until a source it can decode is on air (audio continues); watching
one pinned source whose codec the offer lacks is refused
("unsupported_codec").

Known limits: no TURN on the server's side (clients may relay through
the `ice_servers` TURN; the server offers host candidates only; a relayed
local pair would make aioice create a task per datagram, so such a viewer
is closed); no simulcast/SVC layer selection; no congestion control beyond
dropping a backed-up viewer's video to the next keyframe.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rooms.models import SourceMedia, SourceState
from streaming import aiortc_internals
from streaming.forum_media import ForumMedia
from streaming.lifecycle import Lifecycle
from streaming.program_bus import ProgramBus
from streaming.media_config import MediaConfig
from streaming.media_error import MediaError
from streaming.peer_end import PeerEnd
from streaming.plane_snapshot import WINDOW_S, ForumSnapshot, PlaneSnapshot, SourceSnapshot
from streaming.publisher import WebRtcPublisher
from streaming.rtp_source import SourceFeed
from streaming.udp_mux import SharedPort
from streaming.viewer import WebRtcViewer

__all__ = ["MediaError", "MediaPlane", "MediaReport", "SourceChange"]

logger = logging.getLogger(__name__)

ENDED_KEPT = 4096  # end reasons kept for the edges (a few hundred bytes each)
HOUSEKEEPING_INTERVAL = 0.25  # seconds: sender reports, pair changes, timeouts


@dataclass(frozen=True)
class SourceChange:
    forum_id: str
    source_id: str
    state: SourceState


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class MediaReport:
    """What a publisher sends and how it is handled (rooms.SourceMedia)."""

    forum_id: str
    source_id: str
    media: SourceMedia


SourceListener = Callable[[SourceChange], Awaitable[None] | None]
ViewerListener = Callable[[str], Awaitable[None] | None]
MediaListener = Callable[[MediaReport], Awaitable[None] | None]


class MediaPlane(Lifecycle[_State]):
    """One per node. Source listeners (sync or async) hear every source
    state change: live when media flows, lost when the peer fails or media
    stops, ended on unpublish/remove_feed. Viewer-closed listeners hear the
    id of a viewer that went away by itself (ICE/DTLS failed, peer closed),
    so the edge that admitted it can give its seat back."""

    def __init__(self, config: MediaConfig) -> None:
        super().__init__(_State.NEW, "MediaPlane")
        self.config = config
        self._source_listeners: list[SourceListener] = []
        self._viewer_listeners: list[ViewerListener] = []
        self._media_listeners: list[MediaListener] = []
        self._forums: dict[str, ForumMedia] = {}
        self._publishers: dict[str, WebRtcPublisher] = {}
        self._feed_forum: dict[str, str] = {}  # source_id -> forum_id
        self._viewers: dict[str, WebRtcViewer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None  # `started`/`exited` frame it
        # totals of peers already gone
        self._decoders = aiortc_internals.DecoderCount()
        self._gone_packets = 0
        self._gone_octets = 0
        self._gone_retransmitted = 0
        self._gone_dropped_frames = 0
        self._ends: OrderedDict[str, PeerEnd] = OrderedDict()
        self.shared_port: SharedPort | None = None

    # --- lifecycle -----------------------------------------------------

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self) -> None:
        if self._state != _State.NEW:
            raise RuntimeError(f"MediaPlane.start() in state {self._state.value}")
        aiortc_internals.check()
        aiortc_internals.install()
        if self.config.udp_port:
            shared = SharedPort(self.config.udp_port, tcp=self.config.ice_tcp)
            await shared.open(aiortc_internals.host_addresses_of(self.config.ice_addresses))
            self.shared_port = shared
        self._housekeeping = self._start_task(self._run_housekeeping(), name="plane-housekeeping")
        await self.started.wait()
        self._set_state(_State.RUNNING)

    async def stop(self) -> None:
        """Close every peer and forget every forum (idempotent; concurrent
        callers await one stop)."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPING)  # publish/watch refuse from now on

    async def _stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await self.exited.wait()
        viewers = list(self._viewers)
        await asyncio.gather(*(self.leave(v) for v in viewers), return_exceptions=True)
        publishers = list(self._publishers)
        await asyncio.gather(*(self.unpublish(p) for p in publishers), return_exceptions=True)
        for forum in self._forums.values():
            forum.close()
        self._forums.clear()
        self._feed_forum.clear()
        if self.shared_port is not None:
            self.shared_port.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self._set_state(_State.STOPPED)

    @property
    def decoders(self) -> aiortc_internals.DecoderCount:
        """The decoder count every server-side receiver of this node is
        marked with (an edge's pull too: streaming/edge_pull.py); stays 0."""
        return self._decoders

    def _require_running(self) -> None:
        if self._state != _State.RUNNING:
            raise MediaError("unavailable", f"the media plane is {self._state.value}")

    # --- publishers ----------------------------------------------------

    async def publish(self, forum_id: str, source_id: str, offer_sdp: str) -> str:
        """A WebRTC/WHIP publisher; returns the complete answer SDP."""
        self._require_running()
        old = self._publishers.pop(source_id, None)
        if old is not None:
            await old.stop()  # the speaker reconnected: the new peer replaces the old
        publisher = WebRtcPublisher(
            forum_id, source_id, self.config, self._on_publisher_state, self._decoders,
            on_media=self._on_publisher_media, shared_port=self.shared_port,
        )
        try:
            answer = await publisher.start(offer_sdp)
        except MediaError:
            await publisher.stop()
            raise
        except Exception as exc:
            await publisher.stop()
            logger.exception("publish(%s) failed", source_id)
            raise MediaError("unavailable", f"could not set up the publisher: {exc}") from exc
        if self._state != _State.RUNNING:
            await publisher.stop()
            raise MediaError("unavailable", "the media plane stopped")
        self._publishers[source_id] = publisher
        self.add_feed(forum_id, publisher.feed)
        return answer

    async def unpublish(self, source_id: str) -> None:
        publisher = self._publishers.pop(source_id, None)
        if publisher is None:
            return
        forum_id = self._feed_forum.get(source_id)
        if forum_id is not None:
            self.remove_feed(forum_id, source_id)
        await publisher.stop()

    def _on_publisher_media(self, publisher: WebRtcPublisher) -> None:
        if publisher.media is None:
            return
        report = MediaReport(publisher.forum_id, publisher.source_id, publisher.media)
        for listener in list(self._media_listeners):
            self._call(listener, report)

    def _on_publisher_state(self, publisher: WebRtcPublisher, state: str) -> None:
        if self._publishers.get(publisher.source_id) is not publisher:
            return
        if state in ("failed", "closed"):
            if publisher.end is not None:
                self._remember_end(publisher.source_id, publisher.end)
            if not publisher.connected_once:
                # it never went live: there is nothing for the slate to cover and
                # nothing to wait for; it ends now (ENDED reaches the edges)
                self._spawn(self.unpublish(publisher.source_id))
                return
            forum = self._forums.get(publisher.forum_id)
            if forum is not None:
                forum.feed_lost(publisher.source_id)

    def ended(self, peer_id: str) -> PeerEnd | None:
        """Why a publisher (by source id) or viewer (by viewer id) of this
        node ended by itself, for the edges to tell its client; None if it
        did not (or too long ago: the last ENDED_KEPT are kept)."""
        return self._ends.get(peer_id)

    def _remember_end(self, peer_id: str, end: PeerEnd) -> None:
        self._ends[peer_id] = end
        self._ends.move_to_end(peer_id)
        while len(self._ends) > ENDED_KEPT:
            self._ends.popitem(last=False)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    # --- feeds ---------------------------------------------------------

    def add_feed(self, forum_id: str, feed: SourceFeed) -> None:
        """A source of any kind (WebRTC publisher, venue, playout, slate)
        joins a forum."""
        previous = self._feed_forum.get(feed.source_id)
        if previous is not None and previous != forum_id:
            self.remove_feed(previous, feed.source_id)
        self._feed_forum[feed.source_id] = forum_id
        self._forum(forum_id).add_feed(feed)

    def remove_feed(self, forum_id: str, source_id: str) -> None:
        forum = self._forums.get(forum_id)
        if forum is None:
            return
        feed = forum.remove_feed(source_id)
        if feed is not None and self._feed_forum.get(source_id) == forum_id:
            del self._feed_forum[source_id]
        self._maybe_drop_forum(forum_id)

    def feed(self, source_id: str) -> SourceFeed | None:
        """A source's feed on this node, or None. Its RtpSources' `format`
        is the payload format a WebRTC/WHIP publisher offered (H.264
        profile-level-id, packetization-mode), None for other kinds."""
        forum = self._forums.get(self._feed_forum.get(source_id, ""))
        return forum.feeds.get(source_id) if forum is not None else None

    def feeds(self, forum_id: str) -> list[SourceFeed]:
        """The forum's feeds on this node (every kind, slate included)."""
        forum = self._forums.get(forum_id)
        return list(forum.feeds.values()) if forum is not None else []

    def set_program(self, forum_id: str, source_id: str | None) -> None:
        """None = the slate. Viewers switch at the new source's next keyframe."""
        self._forum(forum_id).set_program(source_id)

    def program(self, forum_id: str) -> str | None:
        """The source id the forum's program carries now (after the cut)."""
        forum = self._forums.get(forum_id)
        return forum.program.on_air if forum is not None else None

    def program_viewers(self, forum_id: str) -> int:
        """How many viewers of this node follow the forum's program (an
        edge's pull stops when it reaches 0: streaming/edge_links.py)."""
        forum = self._forums.get(forum_id)
        return forum.program.viewers if forum is not None else 0

    def program_bus(self, forum_id: str) -> ProgramBus:
        """The forum's program bus, for program outputs (streaming/forum_outputs.py)."""
        return self._forum(forum_id).program

    def _forum(self, forum_id: str) -> ForumMedia:
        forum = self._forums.get(forum_id)
        if forum is None:
            forum = ForumMedia(forum_id, self.config, functools.partial(self._notify, forum_id))
            self._forums[forum_id] = forum
        return forum

    def _maybe_drop_forum(self, forum_id: str) -> None:
        forum = self._forums.get(forum_id)
        if forum is not None and forum.empty and not forum.driven:
            forum.close()
            del self._forums[forum_id]

    # --- listeners -----------------------------------------------------

    def add_source_listener(self, listener: SourceListener) -> Callable[[], None]:
        """Hear every SourceChange; returns the function that removes it."""
        self._source_listeners.append(listener)
        return lambda: _discard(self._source_listeners, listener)

    def add_media_listener(self, listener: MediaListener) -> Callable[[], None]:
        """Hear each publisher's MediaReport (at publish, and when its SPS
        changes or its frames turn out reordered); returns the remover."""
        self._media_listeners.append(listener)
        return lambda: _discard(self._media_listeners, listener)

    def add_viewer_closed_listener(self, listener: ViewerListener) -> Callable[[], None]:
        """Hear the id of each viewer that closed by itself (not through
        leave()); returns the function that removes it."""
        self._viewer_listeners.append(listener)
        return lambda: _discard(self._viewer_listeners, listener)

    def _notify(self, forum_id: str, source_id: str, state: SourceState) -> None:
        change = SourceChange(forum_id, source_id, state)
        for listener in list(self._source_listeners):
            self._call(listener, change)

    def _call(self, listener: Callable[[Any], Awaitable[None] | None], arg: Any) -> None:
        """A failing listener is logged; the others and the media carry on."""
        try:
            result = listener(arg)
        except Exception:
            logger.exception("MediaPlane listener %r failed", listener)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("MediaPlane listener failed: %r", task.exception())

    # --- viewers -------------------------------------------------------

    async def watch(
        self, forum_id: str, viewer_id: str, offer_sdp: str, source_id: str | None = None
    ) -> str:
        """A viewer's recvonly offer; returns the complete answer SDP.
        source_id=None follows the forum's program, else that one source."""
        self._require_running()
        if source_id is not None:
            forum = self._forums.get(forum_id)
            if forum is None or source_id not in forum.feeds:
                raise MediaError("not_found", f"forum {forum_id} has no source {source_id}")
        if viewer_id in self._viewers:
            await self.leave(viewer_id)
        forum = self._forum(forum_id)
        bus = forum.bus_for(source_id)
        if bus is None:
            raise MediaError("not_found", f"forum {forum_id} has no source {source_id}")
        needs = None
        if source_id is not None:
            video = forum.feeds[source_id].video
            needs = video.codec_key if video is not None else None
        viewer = WebRtcViewer(forum_id, viewer_id, source_id, self.config, self._on_viewer_gone,
                               shared_port=self.shared_port)
        self._viewers[viewer_id] = viewer
        try:
            return await viewer.start(offer_sdp, bus, needs=needs)
        except BaseException:
            await self.leave(viewer_id)
            raise

    async def leave(self, viewer_id: str) -> None:
        viewer = self._viewers.pop(viewer_id, None)
        if viewer is None:
            return
        for dt in viewer.downtracks():
            self._gone_packets += dt.packets
            self._gone_octets += dt.octets
            self._gone_retransmitted += dt.retransmitted
            self._gone_dropped_frames += dt.dropped_frames
        await viewer.stop()
        forum = self._forums.get(viewer.forum_id)
        if forum is not None:
            forum.release_bus(viewer.source_id)
            self._maybe_drop_forum(viewer.forum_id)

    def _on_viewer_gone(self, viewer: WebRtcViewer) -> None:
        if self._viewers.get(viewer.viewer_id) is not viewer:
            return
        task = asyncio.ensure_future(self._viewer_closed(viewer.viewer_id))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _viewer_closed(self, viewer_id: str) -> None:
        viewer = self._viewers.get(viewer_id)
        if viewer is not None and viewer.end is not None:
            self._remember_end(viewer_id, viewer.end)
        await self.leave(viewer_id)
        for listener in list(self._viewer_listeners):
            self._call(listener, viewer_id)

    # --- housekeeping --------------------------------------------------

    async def _run_housekeeping(self) -> None:
        try:
            while True:
                await asyncio.sleep(HOUSEKEEPING_INTERVAL)
                self._housekeep(time.monotonic())
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("MediaPlane housekeeping failed")

    def _housekeep(self, now: float) -> None:
        # a function of its own: loop variables must not outlive the tick
        # (a coroutine's locals would keep the last viewer alive)
        for viewer in list(self._viewers.values()):
            viewer.refresh(now)
        for forum in list(self._forums.values()):
            forum.check_timeouts(now)

    # --- numbers -------------------------------------------------------

    def stats(self) -> dict[str, int]:
        downtracks = [dt for v in self._viewers.values() for dt in v.downtracks()]
        sources = [s for f in self._forums.values() for feed in f.feeds.values() for s in feed.sources()]
        return {
            "forums": len(self._forums),
            "peers": len(self._viewers) + len(self._publishers),
            "publishers": len(self._publishers),
            "viewers": len(self._viewers),
            "feeds": sum(len(f.feeds) for f in self._forums.values()),
            "sources": len(sources),
            "buses": sum(1 + len(f.previews) for f in self._forums.values()),
            "bus_subscribers": sum(
                len(b.video.downtracks) + len(b.audio.downtracks)
                for f in self._forums.values()
                for b in [f.program, *f.previews.values()]
            ),
            "decoders_created": self._decoders.value,
            "packets_received": sum(s.packets_received for s in sources),
            "packets_forwarded": self._gone_packets + sum(dt.packets for dt in downtracks),
            "retransmitted": self._gone_retransmitted + sum(dt.retransmitted for dt in downtracks),
            "dropped_frames": self._gone_dropped_frames + sum(dt.dropped_frames for dt in downtracks),
            # viewers' tracks sent to by the C batch now (streaming/fanout_batch.py), the rest one by one
            "batched_downtracks": sum(1 for dt in downtracks if dt.batch is not None),
            "keyframe_requests": sum(s.keyframe_requests_sent for s in sources),
            "sources_with_clock": sum(1 for s in sources if s.clock_reference is not None),
            "tasks": len(self._tasks),
            **(self.shared_port.stats() if self.shared_port is not None else {}),
        }

    def snapshot(self, now: float | None = None) -> PlaneSnapshot:
        """Viewers per forum, program, per-source receive figures and the
        outgoing totals, read from existing counters (plane_snapshot.py);
        `now` is time.time() (injectable for tests)."""
        now = time.time() if now is None else now
        viewers_by_forum: dict[str, list[WebRtcViewer]] = {}
        for viewer in self._viewers.values():
            viewers_by_forum.setdefault(viewer.forum_id, []).append(viewer)
        forums = []
        sources = []
        for forum_id in sorted(set(self._forums) | set(viewers_by_forum)):
            watching = viewers_by_forum.get(forum_id, [])
            fractions = [
                entry[0] / 256
                for v in watching if v.feedback is not None
                for entry in v.feedback.loss.values()
            ]
            forums.append(ForumSnapshot(
                forum_id, len(watching), self.program(forum_id) if forum_id in self._forums else None,
                max(fractions) if fractions else None,
            ))
            forum = self._forums.get(forum_id)
            for feed in (forum.feeds.values() if forum is not None else ()):
                for source in feed.sources():
                    sources.append(SourceSnapshot(
                        forum_id, feed.source_id, source.kind, feed.kind.value,
                        source.packets_received, source.window(now, WINDOW_S),
                    ))
        downtracks = [dt for v in self._viewers.values() for dt in v.downtracks()]
        packets_out = self._gone_packets + sum(dt.packets for dt in downtracks)
        return PlaneSnapshot(
            forums=tuple(forums),
            sources=tuple(sources),
            publishers=len(self._publishers),
            viewers=len(self._viewers),
            packets_out=packets_out,
            # Downtrack.octets counts payload (RFC 3550 SR); add the 12-byte header
            bytes_out=self._gone_octets + sum(dt.octets for dt in downtracks) + 12 * packets_out,
            retransmitted=self._gone_retransmitted + sum(dt.retransmitted for dt in downtracks),
            dropped_frames=self._gone_dropped_frames + sum(dt.dropped_frames for dt in downtracks),
            send_errors=sum(dt.send_errors for dt in downtracks),
            udp_port_dropped=self.shared_port.dropped() if self.shared_port is not None else (),
        )


def _discard(listeners: list[Any], listener: Any) -> None:
    if listener in listeners:
        listeners.remove(listener)
