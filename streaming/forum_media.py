"""One forum's media on this node: its feeds, their liveness, its program
bus and the pinned buses of operators' preview tiles.

No program policy here: the program carries what `set_program` last said
(the ProgramSwitcher applies rooms/program_policy.py; None, or nothing
said yet, is the slate). Only the packet-level mechanics stay: a chosen
source that is lost keeps its last frame for `slate_grace` seconds, then
the slate feed is cut in at its next keyframe, and the source is cut back
in at its own first keyframe once live again, without waiting for the
rooms.

Viewers always get a picture and a sound: the slate feed is every bus's
`cover`, standing in for a live feed's track that is missing or does not
flow (no video: the slate's picture; no audio: its silence). A track that
stops while the rest of its feed flows (track_timeout) counts as missing
until its next packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from rooms.models import SourceKind, SourceState
from streaming.media_config import MediaConfig
from streaming.program_bus import ProgramBus
from streaming.rtp_source import SourceFeed

logger = logging.getLogger(__name__)


class ForumMedia:
    """`notify(source_id, state)` reports every feed state change."""

    def __init__(
        self, forum_id: str, config: MediaConfig, notify: Callable[[str, SourceState], None]
    ) -> None:
        self.forum_id = forum_id
        self._config = config
        self._notify = notify
        self.feeds: dict[str, SourceFeed] = {}
        self.states: dict[str, SourceState] = {}
        self._lost_at: dict[str, float] = {}
        self.program = ProgramBus(f"{forum_id}/program")
        self.previews: dict[str, ProgramBus] = {}
        self.driven = False  # set_program was called: the forum keeps its choice while empty
        self.chosen: str | None = None  # what set_program said (None: the slate)
        self._timer: asyncio.TimerHandle | None = None
        self.on_program: Callable[[str | None], None] | None = None  # target changed

    # --- feeds -------------------------------------------------------------

    def add_feed(self, feed: SourceFeed) -> None:
        old = self.feeds.get(feed.source_id)
        self.feeds[feed.source_id] = feed
        self.states[feed.source_id] = SourceState.CONNECTING
        for source in feed.sources():
            source.on_resume = lambda sid=feed.source_id: self._track_flowing(sid)
        preview = self.previews.get(feed.source_id)
        if preview is not None and old is not None:
            preview.switch_to(feed)
        if feed.kind == SourceKind.SLATE:
            for bus in self._buses():
                bus.set_cover(feed)
        self._notify(feed.source_id, SourceState.CONNECTING)
        if any(not s.idle for s in feed.sources()):
            self.feed_flowing(feed.source_id)
        self.evaluate()

    def remove_feed(self, source_id: str) -> SourceFeed | None:
        feed = self.feeds.pop(source_id, None)
        if feed is None:
            return None
        self.states.pop(source_id, None)
        self._lost_at.pop(source_id, None)
        for source in feed.sources():
            source.on_resume = None
        preview = self.previews.get(source_id)
        if preview is not None:
            preview.switch_to(None)
        if self.program.feed is feed:
            self.program.switch_to(None)
        for bus in self._buses():
            if bus.cover is feed:
                bus.set_cover(None)
        self._notify(source_id, SourceState.ENDED)
        self.evaluate()
        return feed

    def feed_flowing(self, source_id: str) -> None:
        """Media arrives (again) for this feed."""
        if source_id not in self.feeds or self.states.get(source_id) == SourceState.LIVE:
            return
        self.states[source_id] = SourceState.LIVE
        self._lost_at.pop(source_id, None)
        self._notify(source_id, SourceState.LIVE)
        self.evaluate()

    def _track_flowing(self, source_id: str) -> None:
        """A track of this feed has a packet after being idle."""
        self.feed_flowing(source_id)
        self._refresh(source_id)

    def _refresh(self, source_id: str) -> None:
        """Buses showing this live feed (all of them, for the cover) re-pick
        their tracks."""
        feed = self.feeds.get(source_id)
        if feed is None:
            return
        for bus in self._buses():
            if bus.feed is None or self.states.get(bus.feed.source_id) != SourceState.LIVE:
                continue  # a lost feed keeps its frozen picture through the grace
            if bus.feed is feed or bus.cover is feed:
                bus.refresh()

    def _buses(self) -> list[ProgramBus]:
        return [self.program, *self.previews.values()]

    def feed_lost(self, source_id: str) -> None:
        """Media stopped or the peer failed."""
        if source_id not in self.feeds or self.states.get(source_id) == SourceState.LOST:
            return
        self.states[source_id] = SourceState.LOST
        self._lost_at[source_id] = time.monotonic()
        for source in self.feeds[source_id].sources():
            source.idle = True  # so the next packet reports it flowing again
        self._notify(source_id, SourceState.LOST)
        self.evaluate()

    def check_timeouts(self, now: float) -> None:
        """Feeds whose every source went quiet for media_timeout are lost."""
        timeout = self._config.media_timeout
        for source_id, feed in list(self.feeds.items()):
            if self.states.get(source_id) != SourceState.LIVE:
                continue
            sources = feed.sources()
            if sources and all(now - s.last_arrival > timeout for s in sources):
                self.feed_lost(source_id)
                continue
            track_timeout = max(timeout, self._config.track_timeout)
            quiet = [s for s in sources if not s.idle and now - s.last_arrival > track_timeout]
            for source in quiet:  # the rest of the feed flows: this track is missing for now
                logger.info("Forum(%s) %s of %s stopped: the cover stands in", self.forum_id, source.kind,
                            source_id)
                source.idle = True  # its next packet calls on_resume
            if quiet:
                self._refresh(source_id)

    # --- program -------------------------------------------------------

    def set_program(self, source_id: str | None) -> None:
        """Carry `source_id` (None: the slate) from its next keyframe."""
        self.driven = True
        self.chosen = source_id
        self.evaluate()

    def target(self) -> SourceFeed | None:
        """What the program should carry now: the chosen source while it is
        live (or lost for less than the grace), else the slate feed."""
        now = time.monotonic()
        current = self.program.feed
        if (
            current is not None
            and current.source_id == self.chosen
            and self.states.get(current.source_id) == SourceState.LOST
            and now - self._lost_at.get(current.source_id, now) < self._config.slate_grace
        ):
            return current  # inside its grace: the slate waits
        sid = self.chosen
        if sid is not None and self.states.get(sid) == SourceState.LIVE:
            return self.feeds[sid]
        for feed in self.feeds.values():
            if feed.kind == SourceKind.SLATE:
                return feed
        return None

    def evaluate(self) -> None:
        target = self.target()
        if target is not self.program.feed:
            logger.info(
                "Forum(%s) program -> %s", self.forum_id, target.source_id if target else None
            )
            self.program.switch_to(target)
            if self.on_program is not None:
                self.on_program(target.source_id if target else None)
        # re-check when a grace period runs out
        current = self.program.feed
        if current is not None and self.states.get(current.source_id) == SourceState.LOST:
            if self._timer is None:
                delay = self._config.slate_grace + 0.05
                self._timer = asyncio.get_running_loop().call_later(delay, self._grace_over)

    def _grace_over(self) -> None:
        self._timer = None
        self.evaluate()

    # --- buses for viewers ---------------------------------------------

    def bus_for(self, source_id: str | None) -> ProgramBus | None:
        """The program bus, or the pinned bus of one feed (None if unknown)."""
        if source_id is None:
            return self.program
        bus = self.previews.get(source_id)
        if bus is None:
            feed = self.feeds.get(source_id)
            if feed is None:
                return None
            bus = ProgramBus(f"{self.forum_id}/{source_id}")
            bus.cover = next((f for f in self.feeds.values() if f.kind == SourceKind.SLATE), None)
            bus.switch_to(feed)
            self.previews[source_id] = bus
        return bus

    def release_bus(self, source_id: str | None) -> None:
        """Drop a pinned bus nobody watches any more."""
        if source_id is None:
            return
        bus = self.previews.get(source_id)
        if bus is not None and bus.viewers == 0:
            bus.close()
            del self.previews[source_id]

    @property
    def empty(self) -> bool:
        return not self.feeds and self.program.viewers == 0 and not self.previews

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.program.close()
        for bus in self.previews.values():
            bus.close()
        self.previews.clear()
