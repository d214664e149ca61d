"""Simulive: recorded speakers' videos start at their slot by themselves.

One task asks the agenda clock (rooms.agenda.AgendaClock, injectable and
movable in tests) what is due, every `tick` seconds or at once when
poked. For each due ScheduledPlayout it takes the video from the media
library: the speaker's own upload when they sent one from their invite
link (tus_uploads.recorded_speaker), else the event file's video
(normalized once; prepared ahead, `lead` seconds before the slot), plays it with FilePlayout as a RECORDED source (ForumInputs), and
puts it on air through the forum's ProgramSwitcher, unless the forum is
in manual mode (then the operator sees it as a live tile to take). The
playout stops at the end of its file or of its slot, whichever is first.
A node that starts (or restarts) while a recorded slot is under way
joins it where it should be: the video plays from its first keyframe at
or after the time elapsed in the slot (a start only a few seconds late
plays from the top instead: the talk's opening matters more). A slot
already over, or a video that cannot be prepared, is skipped with a log
line; nothing here stops the other forums.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from rooms.agenda import AgendaClock, ScheduledPlayout
from rooms.errors import RoomError
from rooms.models import Event
from signaling.app_keys import AGENDA, EVENT
from signaling.forum_inputs import INPUTS, ForumInputs, system_grant
from streaming.media_library import MediaItem
from streaming.program_switcher import Switchboard

logger = logging.getLogger(__name__)

BY = "agenda"
TICK_S = 0.5  # how often the clock is asked; a start is at most this late
LEAD = dt.timedelta(minutes=15)  # normalize videos this long before their slot
LIVE_WAIT_S = 5.0
JOIN_AFTER = dt.timedelta(seconds=5)  # later than this into its slot: join mid-file
LONGEST_SLOT = dt.timedelta(hours=12)  # how far back to look for a slot still under way


@dataclass
class Running:
    playout: ScheduledPlayout
    source_id: str
    on_air: bool = False


@dataclass
class RunnerStats:
    started: list[Running] = field(default_factory=list)
    skipped: list[tuple[ScheduledPlayout, str]] = field(default_factory=list)


class AgendaRunner:
    """The simulive scheduler of one node (the forums of `event`)."""

    def __init__(self, event: Event, agenda: AgendaClock, inputs: ForumInputs, board: Switchboard,
                 tick: float = TICK_S) -> None:
        self._event = event
        self._agenda = agenda
        self._inputs = inputs
        self._board = board
        self._tick = tick
        self._grant = system_grant(BY)
        self._since = agenda.now()
        self._prepared: dict[tuple[str, str], asyncio.Task[MediaItem]] = {}
        self._running: dict[str, Running] = {}  # source id -> what plays
        self._poke = asyncio.Event()
        self._joining: list[ScheduledPlayout] = []  # slots under way when this node started
        self._task: asyncio.Task[None] | None = None
        self.stats = RunnerStats()
        self.started = asyncio.Queue[Running]()  # each start, for status pages and tests

    async def start(self) -> None:
        now = self._agenda.now()
        self._since = now
        for under_way in self._agenda.recorded_starts(now - LONGEST_SLOT, now + dt.timedelta(microseconds=1)):
            if under_way.until is not None and under_way.until > now:
                self._prepare(under_way)
                self._joining.append(under_way)
        self._task = asyncio.create_task(self._run(), name="agenda-runner")

    async def stop(self) -> None:
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

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("AgendaRunner step failed; going on")
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
        for source_id, running in list(self._running.items()):
            until = running.playout.until
            gone = all(p.source_id != source_id for p in self._inputs.playouts(running.playout.forum_id))
            if gone:
                del self._running[source_id]  # the file played out
            elif until is not None and now >= until:
                logger.info("AgendaRunner: slot of %s in %s is over: stopping %s",
                            running.playout.speaker_id, running.playout.forum_id, source_id)
                del self._running[source_id]
                with contextlib.suppress(RoomError):
                    await self._inputs.stop_playout(running.playout.forum_id, self._grant, source_id)

    def _prepare(self, playout: ScheduledPlayout) -> asyncio.Task[MediaItem]:
        key = (playout.forum_id, str(playout.video))
        task = self._prepared.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._inputs.library.add_file(playout.forum_id, playout.video),
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
            # the speaker's own upload (from their invite link) replaces the event file's video
            uploaded = self._inputs.library.speaker_item(playout.forum_id, playout.speaker_id)
            item = uploaded if uploaded is not None else await asyncio.shield(self._prepare(playout))
            if start_at and item.duration and start_at >= item.duration:
                self._skip(playout, f"its video ({item.duration:.0f} s) already played out in the slot")
                return
            running_playout = await self._inputs.start_playout(playout.forum_id, self._grant, item,
                                                               name=self._agenda.playout_label(playout),
                                                               start_at=start_at)
        except RoomError as exc:
            self._skip(playout, exc.message)
            return
        running = Running(playout, running_playout.source_id)
        self._running[running.source_id] = running
        self.stats.started.append(running)
        if await self._inputs.wait_live(running.source_id, LIVE_WAIT_S):
            switcher = await self._board.switcher(playout.forum_id)
            try:
                state = await switcher.take_system(running.source_id, BY)
            except RoomError as exc:
                logger.warning("AgendaRunner: could not take %s: %s", running.source_id, exc.message)
                state = None
            running.on_air = state is not None
        logger.info("AgendaRunner: %s plays in %s as %s from %.0f s (%s)", playout.speaker_id,
                    playout.forum_id, running.source_id, start_at,
                    "on air" if running.on_air else "manual: not taken")
        self.started.put_nowait(running)

    def _skip(self, playout: ScheduledPlayout, why: str) -> None:
        logger.warning("AgendaRunner: skipping %s in %s at %s: %s", playout.speaker_id, playout.forum_id,
                       playout.at.isoformat(), why)
        self.stats.skipped.append((playout, why))


def _retrieve(task: asyncio.Task[MediaItem]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("AgendaRunner: preparing a video failed: %s", task.exception())


RUNNER = web.AppKey("agenda_runner", AgendaRunner)


async def _runner_ctx(app: web.Application) -> AsyncIterator[None]:
    from signaling.operator_api import SWITCHBOARD

    runner = AgendaRunner(app[EVENT], app[AGENDA], app[INPUTS], app[SWITCHBOARD])
    await runner.start()
    app[RUNNER] = runner
    try:
        yield
    finally:
        await runner.stop()


def setup_agenda_runner(app: web.Application) -> None:
    """Register after the forum inputs and the switchboard contexts."""
    app.cleanup_ctx.append(_runner_ctx)
