"""A forum's program policy: what goes on air, above the cut mechanics.

`ProgramSwitcher` decides; `MediaPlane.set_program` cuts (at the next
keyframe, see program_bus.py); `RoomService` records the ProgramState so
every client and /api see it. Operators act through `take`,
`take_preview`, `cut_to_slate`; the agenda through `take_system` (refused
in manual mode). Source states and other nodes' program changes arrive as
room events (`on_source_state`, `on_source_removed`, `on_program_changed`).

The policy is one explicit state machine with one `_set_state`:

    SLATE    the slate is on air (cut to it, or nothing taken yet)
    ON_AIR   `held` is on air and live (or still connecting)
    GRACE    `held` dropped; the media plane keeps its last frame for
             `slate_grace` seconds, then the slate covers it
    COVERED  the slate covers `held`; the program returns to it by itself
             when it is live again, unless an operator takes something else

Timers come from an injected `call_later`, so tests move time by hand.
With several nodes every node runs a switcher per forum (each drives its
own media plane), but only the node that holds a source writes the
policy's covers, returns and follows for it, so each happens once.
Every write to the rooms goes through one lock per forum, and a cover
re-checks the phase after getting it: a take that lands meanwhile wins.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from rooms import events as room_events
from rooms.errors import RoomError
from rooms.models import MediaSource, ProgramState, SourceKind, SourceState
from rooms.service import RoomService
from rooms.store import Subscription
from rooms.tokens import Grant

logger = logging.getLogger(__name__)

SYSTEM = "system"  # `by` of the covers and returns this policy makes
_DOWN = (SourceState.LOST, SourceState.ENDED)
_FOLLOWED = (SourceKind.LIVE, SourceKind.VENUE)  # a recorded video waits for a take (or the agenda)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Cancellable]


class ProgramTarget(Protocol):
    """What the switcher drives: the node's media plane."""

    def set_program(self, forum_id: str, source_id: str | None) -> None: ...


class Phase(enum.Enum):
    SLATE = "slate"
    ON_AIR = "on_air"
    GRACE = "grace"
    COVERED = "covered"


class ProgramSwitcher:
    """One forum's program policy on the node that hosts its media.

    `follow_live`: while the slate is on air because nobody chose it (no
    operator cut to it) and the forum is not manual, a speaker's or the
    venue's source that goes live is put on air by itself - an unattended
    forum still shows its speaker."""

    def __init__(
        self,
        forum_id: str,
        rooms: RoomService,
        media: ProgramTarget | None,
        *,
        slate_grace: float = 1.0,
        call_later: CallLater | None = None,
        follow_live: bool = True,
        node_id: str | None = None,
    ) -> None:
        self.forum_id = forum_id
        self.node_id = node_id  # None: every source counts as this node's
        self._rooms = rooms
        self._media = media
        self.slate_grace = slate_grace
        self._call_later = call_later
        self.follow_live = follow_live
        self._phase = Phase.SLATE
        self.held: str | None = None  # the source the program is on, or waits for
        self.manual = False
        self.slate_chosen = False  # an operator (not the policy) put the slate on air
        self._version = -1  # the newest ProgramState version applied
        self._states: dict[str, SourceState] = {}
        self._kinds: dict[str, SourceKind] = {}
        self._nodes: dict[str, str] = {}  # source -> the node whose media plane holds it
        self._timer: Cancellable | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # the latest (phase, held) changes, for status pages and tests
        self.transitions: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)

    # --- lifecycle -------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    async def start(self) -> None:
        """Load what the rooms know now and put the media plane in line."""
        for source in await self._rooms.sources(self.forum_id):
            self._remember(source)
        state = await self._rooms.program(self.forum_id)
        self._adopt(state)
        if state.program is None:
            self._apply_media(None)

    async def stop(self) -> None:
        """Cancel the timer and pending writes (idempotent)."""
        self._cancel_timer()
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- operators (authorized by the rooms) ------------------------------

    async def take(self, grant: Grant, source_id: str | None = None,
                   expected_version: int | None = None) -> ProgramState:
        """Put a live source on air (None: what is in preview, swapping
        program and preview as take_preview does)."""
        if source_id is None and expected_version is None:
            return await self.take_preview(grant)
        async with self._lock:
            state = await self._rooms.take(self.forum_id, grant, source_id, expected_version=expected_version)
            self._adopt(state)
        return state

    async def take_preview(self, grant: Grant) -> ProgramState:
        """TAKE as on a vision mixer: the preview goes on air and what was on
        air moves to preview (unless it was the slate)."""
        async with self._lock:
            before = await self._rooms.program(self.forum_id)
            state = await self._rooms.take(self.forum_id, grant, None)
            self._adopt(state)
            if before.program is not None and not before.slate and before.program != state.program:
                with contextlib.suppress(RoomError):  # the old source may be gone meanwhile
                    state = await self._rooms.set_preview(self.forum_id, grant, before.program)
                    self._adopt(state)
        return state

    async def cut_to_slate(self, grant: Grant) -> ProgramState:
        async with self._lock:
            state = await self._rooms.take(self.forum_id, grant, slate=True)
            self._adopt(state, chosen=True)
        return state

    async def set_preview(self, grant: Grant, source_id: str | None) -> ProgramState:
        state = await self._rooms.set_preview(self.forum_id, grant, source_id)
        self.manual = state.manual
        return state

    async def set_manual(self, grant: Grant, manual: bool) -> ProgramState:
        async with self._lock:
            state = await self._rooms.set_manual(self.forum_id, grant, manual)
            self._adopt(state)
        return state

    # --- the agenda and other system writers ------------------------------

    async def take_system(self, source_id: str | None, by: str = "agenda", *,
                          unless_manual: bool = True) -> ProgramState | None:
        """Put a source on air without a grant (None: the slate). In manual
        mode with `unless_manual`, nothing happens and None is returned."""
        async with self._lock:
            current = await self._rooms.program(self.forum_id)
            self._adopt(current)
            if unless_manual and current.manual:
                logger.info("ProgramSwitcher(%s) manual: %s does not take %s", self.forum_id, by, source_id)
                return None
            state = await self._rooms.set_program_system(self.forum_id, source_id, by)
            self._adopt(state)
        return state

    # --- what happens elsewhere (room events) -----------------------------

    def on_program_changed(self, state: ProgramState, by: str = "") -> None:
        """A ProgramChanged/PreviewChanged from any node; stale versions
        (ours, already applied) are ignored."""
        self._adopt(state, chosen=state.program is None and by not in ("", SYSTEM))

    def on_source(self, source: MediaSource) -> None:
        """SourceAdded/SourceUpdated."""
        self._kinds[source.id] = source.kind
        self._nodes[source.id] = source.node_id
        self.on_source_state(source.id, source.state)

    def on_source_state(self, source_id: str, state: SourceState) -> None:
        previous = self._states.get(source_id)
        self._states[source_id] = state
        if source_id == self.held:
            if self._phase is Phase.ON_AIR and state in _DOWN:
                self._set_state(Phase.GRACE, source_id)
                if self._local(source_id):  # the node holding the source covers it, once
                    self._start_timer()
            elif self._phase is Phase.GRACE and state is SourceState.LIVE:
                self._cancel_timer()
                self._set_state(Phase.ON_AIR, source_id)
            elif self._phase is Phase.COVERED and state is SourceState.LIVE and self._local(source_id):
                self._spawn(self._return(source_id))
        elif (
            state is SourceState.LIVE and previous is not SourceState.LIVE
            and self._phase is Phase.SLATE and self.follow_live and not self.manual
            and not self.slate_chosen and self._kinds.get(source_id) in _FOLLOWED and self._local(source_id)
        ):
            self._spawn(self._follow(source_id))

    def on_source_removed(self, source_id: str) -> None:
        self._states.pop(source_id, None)
        self._kinds.pop(source_id, None)
        self._nodes.pop(source_id, None)
        if source_id == self.held and self._phase in (Phase.GRACE, Phase.COVERED, Phase.ON_AIR):
            # the rooms clear it from the program themselves; nothing to return to
            self._cancel_timer()
            self._set_state(Phase.SLATE, None)
            self._apply_media(None)

    # --- the machine ------------------------------------------------------

    def _remember(self, source: MediaSource) -> None:
        self._states[source.id] = source.state
        self._kinds[source.id] = source.kind
        self._nodes[source.id] = source.node_id

    def _local(self, source_id: str) -> bool:
        """Is the source held by this node (so its policy writes are ours)?"""
        node = self._nodes.get(source_id, "")
        return self.node_id is None or not node or node == self.node_id

    def _adopt(self, state: ProgramState, chosen: bool = False) -> None:
        """Make the machine follow a ProgramState the rooms hold."""
        if state.forum_id != self.forum_id or state.version <= self._version:
            return
        self._version = state.version
        self.manual = state.manual
        target = state.program
        if target is None:
            if self._phase is Phase.COVERED and not chosen and state.slate:
                return  # our own cover, seen again
            self._cancel_timer()
            if chosen:
                self.slate_chosen = True
            if self._phase is not Phase.SLATE or self.held is not None:
                self._set_state(Phase.SLATE, None)
                self._apply_media(None)
            return
        self.slate_chosen = False
        if target == self.held and self._phase in (Phase.ON_AIR, Phase.GRACE):
            return
        self._cancel_timer()
        if self._states.get(target) in _DOWN:
            self._set_state(Phase.GRACE, target)
            if self._local(target):
                self._start_timer()
        else:
            self._set_state(Phase.ON_AIR, target)
        self._apply_media(target)

    def _set_state(self, phase: Phase, held: str | None) -> None:
        if (phase, held) == (self._phase, self.held):
            return
        logger.info("ProgramSwitcher(%s) %s(%s) -> %s(%s)", self.forum_id, self._phase.value, self.held,
                    phase.value, held)
        self._phase = phase
        self.held = held
        self.transitions.append((phase.value, held or ""))

    def _apply_media(self, source_id: str | None) -> None:
        if self._media is None:
            return
        try:
            self._media.set_program(self.forum_id, source_id)
        except Exception as exc:  # a source the media plane does not hold (yet): the slate shows
            logger.warning("ProgramSwitcher(%s) set_program(%s): %r", self.forum_id, source_id, exc)

    # --- timers and writes ------------------------------------------------

    def _start_timer(self) -> None:
        self._cancel_timer()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        held = self.held
        self._timer = call_later(self.slate_grace, lambda: self._grace_over(held))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _grace_over(self, held: str | None) -> None:
        self._timer = None
        if self._phase is Phase.GRACE and self.held == held:
            self._set_state(Phase.COVERED, held)
            self._spawn(self._cover(held))

    async def _cover(self, held: str | None) -> None:
        async with self._lock:
            if self._phase is not Phase.COVERED or self.held != held:
                return  # a take landed meanwhile
            state = await self._rooms.set_program_system(self.forum_id, None, SYSTEM)
            self._version = max(self._version, state.version)
            self.manual = state.manual
        # the media plane stays on `held`: it shows the slate while held is down
        # and cuts back at its first keyframe, without waiting for the rooms

    async def _return(self, held: str) -> None:
        async with self._lock:
            if self._phase is not Phase.COVERED or self.held != held:
                return
            if self._states.get(held) is not SourceState.LIVE:
                return
            state = await self._rooms.set_program_system(self.forum_id, held, SYSTEM)
            self._version = max(self._version, state.version)
            self._set_state(Phase.ON_AIR, held)
            self._apply_media(held)

    async def _follow(self, source_id: str) -> None:
        async with self._lock:
            if self._phase is not Phase.SLATE or self.slate_chosen or self.manual:
                return
            if self._states.get(source_id) is not SourceState.LIVE:
                return
            state = await self._rooms.set_program_system(self.forum_id, source_id, SYSTEM)
            self._adopt(state)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RoomError as exc:
            logger.warning("ProgramSwitcher(%s): %s", self.forum_id, exc.message)
        except Exception:
            logger.exception("ProgramSwitcher(%s) write failed", self.forum_id)

    async def idle(self) -> None:
        """Wait for pending writes (covers, returns) to finish (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Switchboard:
    """The switchers of the forums this node hosts, fed by the room events.

    One task reads `rooms.events()` and hands each event to its forum's
    switcher; switchers are made on first use."""

    def __init__(self, rooms: RoomService, media: ProgramTarget | None, *, slate_grace: float = 1.0,
                 call_later: CallLater | None = None) -> None:
        self._rooms = rooms
        self._media = media
        self._slate_grace = slate_grace
        self._call_later = call_later
        self._switchers: dict[str, ProgramSwitcher] = {}
        self._starting: dict[str, asyncio.Future[ProgramSwitcher]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._events: Subscription | None = None

    async def start(self) -> None:
        self._events = self._rooms.events()  # now, so nothing between start and the loop is lost
        self._pump = asyncio.create_task(self._run(self._events), name="switchboard")

    async def stop(self) -> None:
        if self._events is not None:
            self._events.close()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        switchers, self._switchers = list(self._switchers.values()), {}
        for switcher in switchers:
            await switcher.stop()

    async def switcher(self, forum_id: str) -> ProgramSwitcher:
        """The forum's switcher (RoomError not_found for an unknown forum)."""
        found = self._switchers.get(forum_id)
        if found is not None:
            return found
        self._rooms.forum(forum_id)
        pending = self._starting.get(forum_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ProgramSwitcher] = asyncio.get_running_loop().create_future()
        self._starting[forum_id] = future
        switcher = ProgramSwitcher(forum_id, self._rooms, self._media, slate_grace=self._slate_grace,
                                   call_later=self._call_later, node_id=self._rooms.node_id)
        try:
            await switcher.start()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._starting.pop(forum_id, None)
        self._switchers[forum_id] = switcher
        future.set_result(switcher)
        return switcher

    def get(self, forum_id: str) -> ProgramSwitcher | None:
        return self._switchers.get(forum_id)

    async def _run(self, events: "Subscription") -> None:
        async for event in events:
            try:
                await self._route(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Switchboard: %s failed", type(event).__name__)

    async def _route(self, event: room_events.RoomEvent) -> None:
        forum_id = room_events.forum_of(event)
        if forum_id is None or self._rooms.event.forum(forum_id) is None:
            return
        match event:
            case room_events.ProgramChanged() | room_events.PreviewChanged():
                (await self.switcher(forum_id)).on_program_changed(event.state, event.by)
            case room_events.SourceAdded() | room_events.SourceUpdated():
                (await self.switcher(forum_id)).on_source(event.source)
            case room_events.SourceRemoved():
                switcher = self._switchers.get(forum_id)
                if switcher is not None:
                    switcher.on_source_removed(event.source.id)
            case _:
                pass
