"""Simulive: recorded speakers' videos start at their slot by themselves.

One scheduler per node (not one per forum): one task asks the agenda
clock (rooms.agenda.AgendaClock, injectable and movable in tests) what is
due for every forum, every `tick` seconds or at once when poked; the
videos are prepared in the node's media library, which all forums share.
For each due ScheduledPlayout it takes the video from the library: the
speaker's own upload when they sent one from their invite link, else the
event file's video (normalized once; prepared `LEAD` before the slot),
and hands it to the forum's host (`SlotHosts.slot_host`), which plays it
as a RECORDED source and puts it on air, unless the forum is in manual
mode (then the operator sees it as a tile to take). The playout stops at
the end of its file or of its slot, whichever is first (the host's
`end_slots`, each tick).

A node that starts (or restarts) while a recorded slot is under way joins
it where it should be: the video plays from its first keyframe at or
after the time elapsed in the slot (a start only `JOIN_AFTER` late plays
from the top instead: the talk's opening matters more). A slot already
over, or a video that cannot be prepared, is skipped with a log line;
nothing here stops the other forums.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Protocol

from rooms.agenda import AgendaClock, ScheduledPlayout
from rooms.errors import RoomError
from streaming.forum_host import ForumHost, SlotPlaying, system_grant
from streaming.media_library import MediaItem, MediaLibrary

logger = logging.getLogger(__name__)

BY = "agenda"
TICK_S = 0.5  # how often the clock is asked; a start is at most this late
LEAD = dt.timedelta(minutes=15)  # normalize videos this long before their slot
JOIN_AFTER = dt.timedelta(seconds=5)  # later than this into its slot: join mid-file
LONGEST_SLOT = dt.timedelta(hours=12)  # how far back to look for a slot still under way


class SlotHosts(Protocol):
    """Where the scheduler's slots play (streaming/forum_hosts.py)."""

    async def slot_host(self, forum_id: str) -> ForumHost | None:
        """The running host that plays this forum's slots on this node, or
        None when another node hosts the forum (it plays them there)."""

    def slot_hosts(self) -> list[ForumHost]:
        """The hosts this node runs now (their slots are ended on time)."""


@dataclass
class SchedulerStats:
    started: list[SlotPlaying] = field(default_factory=list)
    skipped: list[tuple[ScheduledPlayout, str]] = field(default_factory=list)


class AgendaScheduler:
    """The simulive scheduler of one node (every forum of the agenda)."""

    def __init__(self, agenda: AgendaClock, library: MediaLibrary, hosts: SlotHosts,
                 tick: float = TICK_S) -> None:
        self._agenda = agenda
        self._library = library
        self._hosts = hosts
        self._tick = tick
        self._grant = system_grant(BY)
        self._since = agenda.now()
        self._prepared: dict[tuple[str, str], asyncio.Task[MediaItem]] = {}
        self._poke = asyncio.Event()
        self._joining: list[ScheduledPlayout] = []  # slots under way when this node started
        self._task: asyncio.Task[None] | None = None
        self.stats = SchedulerStats()
        self.started = asyncio.Queue[SlotPlaying]()  # each start, for status pages and tests

    async def start(self) -> None:
        now = self._agenda.now()
        self._since = now
        for under_way in self._agenda.recorded_starts(now - LONGEST_SLOT, now + dt.timedelta(microseconds=1)):
            if under_way.until is not None and under_way.until > now:
                self._prepare(under_way)
                self._joining.append(under_way)
        self._task = asyncio.create_task(self._run(), name="agenda-scheduler")

    async def stop(self) -> None:
        """Stop asking the clock and cancel the preparations (idempotent);
        what plays stops with its host."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for prepared in self._prepared.values():
            prepared.cancel()
        for prepared in self._prepared.values():
            with contextlib.suppress(BaseException):
                await prepared
        self._prepared.clear()

    def poke(self) -> None:
        """Look at the clock now (after a test moved it, or a settings change)."""
        self._poke.set()

    def join_under_way(self, forum_id: str) -> None:
        """This node just took the forum over (its lease): play the forum's
        slot under way, from where it should be now (as a node that starts
        mid-slot does); a slot this node already plays is not started twice."""
        now = self._agenda.now()
        for under_way in self._agenda.recorded_starts(now - LONGEST_SLOT, now + dt.timedelta(microseconds=1)):
            if under_way.forum_id == forum_id and under_way.until is not None and under_way.until > now \
                    and under_way not in self._joining:
                self._prepare(under_way)
                self._joining.append(under_way)
        self.poke()

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("AgendaScheduler step failed; going on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._tick)  # pacing, or a poke
            self._poke.clear()

    async def step(self) -> None:
        """One look at the clock: prepare what comes, start what is due,
        stop what ran past its slot."""
        now = self._agenda.now()
        for upcoming in self._agenda.recorded_starts(now, now + LEAD):
            self._prepare(upcoming)
        # (since, now]: each start is seen exactly once, however the clock moves
        due = [p for p in self._agenda.recorded_starts(self._since, now + dt.timedelta(microseconds=1))
               if p.at > self._since]
        due, self._joining = self._joining + due, []
        self._since = now
        for playout in due:
            await self._start(playout, now)
        for host in self._hosts.slot_hosts():
            await host.end_slots(now, self._grant)

    def _prepare(self, playout: ScheduledPlayout) -> asyncio.Task[MediaItem]:
        key = (playout.forum_id, str(playout.video))
        task = self._prepared.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._library.add_file(playout.forum_id, playout.video),
                                       name=f"agenda-prepare-{playout.speaker_id}")
            task.add_done_callback(_retrieve)
            self._prepared[key] = task
        return task

    async def _start(self, playout: ScheduledPlayout, now: dt.datetime) -> None:
        if playout.until is not None and now >= playout.until:
            self._skip(playout, "its slot is already over")
            return
        late = now - playout.at
        start_at = late.total_seconds() if late > JOIN_AFTER else 0.0
        try:
            host = await self._hosts.slot_host(playout.forum_id)
            if host is None:
                logger.info("AgendaScheduler: %s in %s plays on the node hosting the forum",
                            playout.speaker_id, playout.forum_id)
                return
            if any(playing.playout == playout for playing in host.slots()):
                return  # already playing here (joined at start and again at a takeover)
            # the speaker's own upload (from their invite link) replaces the event file's video
            uploaded = self._library.speaker_item(playout.forum_id, playout.speaker_id)
            item = uploaded if uploaded is not None else await asyncio.shield(self._prepare(playout))
            if start_at and item.duration and start_at >= item.duration:
                self._skip(playout, f"its video ({item.duration:.0f} s) already played out in the slot")
                return
            playing = await host.play_slot(playout, item, self._agenda.playout_label(playout), start_at,
                                           self._grant)
        except RoomError as exc:
            self._skip(playout, exc.message)
            return
        self.stats.started.append(playing)
        logger.info("AgendaScheduler: %s plays in %s as %s from %.0f s (%s)", playout.speaker_id,
                    playout.forum_id, playing.source_id, start_at,
                    "on air" if playing.on_air else "manual: not taken")
        self.started.put_nowait(playing)

    def _skip(self, playout: ScheduledPlayout, why: str) -> None:
        logger.warning("AgendaScheduler: skipping %s in %s at %s: %s", playout.speaker_id, playout.forum_id,
                       playout.at.isoformat(), why)
        self.stats.skipped.append((playout, why))


def _retrieve(task: asyncio.Task[MediaItem]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("AgendaScheduler: preparing a video failed: %s", task.exception())
