"""A forum's program switcher: applies the program policy on this node.

The policy itself is rooms/program_policy.py, a pure state machine with
its transition table written down (slate / on air / grace / covered;
follow the newest live source unless an operator's or the agenda's
choice is in the way; manual mode). `ProgramSwitcher` feeds it what
happens and carries out its decisions: `Cut` -> `MediaPlane.set_program`
(the keyframe-aligned cut, see program_bus.py), `Record` -> a ProgramState
written through `RoomService` (by "system"), `StartGrace`/`CancelGrace`
-> a timer from the injected `call_later`, whose expiry is fed back.

Operators act through `take`, `take_preview`, `cut_to_slate`,
`set_preview`, `set_manual` (the rooms authorize and write, then the
policy hears what they accepted); the agenda through `take_system`
(refused in manual mode). Source states and other writers' program
changes arrive as room events (`on_source`, `on_source_state`,
`on_source_removed`, `on_program_changed`) from the node's one room-event
pump (streaming/forum_hosts.py). The switcher is part of its forum's
ForumHost (streaming/forum_host.py), the only owner of a forum's program.

A switcher runs where its forum is hosted; should two nodes host one
forum, only the node that holds a source writes the policy's covers,
returns and follows for it, so each happens once. Every
write goes through one lock per forum and is made only if the policy
still wants it when the lock is got: a take that lands meanwhile wins.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from rooms import program_policy as policy
from rooms.errors import RoomError
from rooms.models import MediaSource, ProgramState, SourceState
from rooms.program_policy import Claim, Phase
from rooms.service import RoomService
from rooms.tokens import Grant

logger = logging.getLogger(__name__)

SYSTEM = policy.SYSTEM  # `by` of the covers, returns and follows the policy makes

__all__ = ["Phase", "ProgramSwitcher", "ProgramTarget", "SYSTEM"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Cancellable]


class ProgramTarget(Protocol):
    """What the switcher drives: the node's media plane."""

    def set_program(self, forum_id: str, source_id: str | None) -> None: ...


class ProgramSwitcher:
    """One forum's program policy applied on the node that hosts its media."""

    def __init__(
        self,
        forum_id: str,
        rooms: RoomService,
        media: ProgramTarget | None,
        *,
        slate_grace: float = 1.0,
        call_later: CallLater | None = None,
        clock: Callable[[], float] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.forum_id = forum_id
        self.node_id = node_id  # None: every source counts as this node's
        self._rooms = rooms
        self._media = media
        self.slate_grace = slate_grace
        self._call_later = call_later
        self._clock = clock
        self._program = policy.Program()
        self._version = -1  # the newest ProgramState version applied
        self._timer: Cancellable | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # the latest (phase, held) changes, for status pages and tests
        self.transitions: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)

    # --- what the policy holds --------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._program.phase

    @property
    def held(self) -> str | None:
        """The source the program is on, or waits for."""
        return self._program.held

    @property
    def manual(self) -> bool:
        return self._program.manual

    @property
    def claim(self) -> Claim:
        return self._program.claim

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Load what the rooms know now and put the media plane in line."""
        sources = {s.id: self._facts(s) for s in await self._rooms.sources(self.forum_id)}
        state = await self._rooms.program(self.forum_id)
        self._program = policy.Program(manual=state.manual, sources=sources)
        self._version = state.version
        if state.program is not None:
            claim = Claim.OPERATOR if state.manual else Claim.NOBODY  # who chose it is not recorded
            self._step(policy.ProgramElsewhere(state.program, claim))
        else:
            self._apply([policy.Cut(None)])
            program, decisions = policy.resume(self._program)
            self._commit(program, decisions)

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
        program and preview as take_preview does). RoomError: forbidden,
        not_found, conflict (not live, or `expected_version` is stale)."""
        if source_id is None and expected_version is None:
            return await self.take_preview(grant)
        async with self._lock:
            state = await self._rooms.take(self.forum_id, grant, source_id, expected_version=expected_version)
            self._adopt(state, grant.name, took=True)
        return state

    async def take_preview(self, grant: Grant) -> ProgramState:
        """TAKE as on a vision mixer: the preview goes on air and what was on
        air moves to preview (unless it was the slate)."""
        async with self._lock:
            before = await self._rooms.program(self.forum_id)
            state = await self._rooms.take(self.forum_id, grant, None)
            self._adopt(state, grant.name, took=True)
            if before.program is not None and not before.slate and before.program != state.program:
                with contextlib.suppress(RoomError):  # the old source may be gone meanwhile
                    state = await self._rooms.set_preview(self.forum_id, grant, before.program)
                    self._adopt(state, grant.name)
        return state

    async def cut_to_slate(self, grant: Grant) -> ProgramState:
        async with self._lock:
            state = await self._rooms.take(self.forum_id, grant, slate=True)
            self._adopt(state, grant.name, took=True)
        return state

    async def set_preview(self, grant: Grant, source_id: str | None) -> ProgramState:
        async with self._lock:
            state = await self._rooms.set_preview(self.forum_id, grant, source_id)
            self._adopt(state, grant.name)
        return state

    async def set_manual(self, grant: Grant, manual: bool) -> ProgramState:
        async with self._lock:
            state = await self._rooms.set_manual(self.forum_id, grant, manual)
            self._adopt(state, grant.name)
        return state

    # --- the agenda and other system writers ------------------------------

    async def take_system(self, source_id: str | None, by: str = policy.AGENDA_BY, *,
                          unless_manual: bool = True) -> ProgramState | None:
        """Put a source on air without a grant (None: the slate). In manual
        mode with `unless_manual`, nothing happens and None is returned."""
        async with self._lock:
            current = await self._rooms.program(self.forum_id)
            self._adopt(current, by)
            if unless_manual and current.manual:
                logger.info("ProgramSwitcher(%s) manual: %s does not take %s", self.forum_id, by, source_id)
                return None
            state = await self._rooms.set_program_system(self.forum_id, source_id, by)
            self._adopt(state, by, took=True)
        return state

    # --- what happens elsewhere (room events) -----------------------------

    def on_program_changed(self, state: ProgramState, by: str = "") -> None:
        """A ProgramChanged/PreviewChanged from any node; stale versions
        (ours, already applied) are ignored."""
        self._adopt(state, by)

    def on_source(self, source: MediaSource) -> None:
        """SourceAdded/SourceUpdated."""
        self._source_state(source.id, source.state, self._facts(source))

    def on_source_state(self, source_id: str, state: SourceState) -> None:
        self._source_state(source_id, state, None)

    def on_source_removed(self, source_id: str) -> None:
        self._step(policy.SourceRemoved(source_id))

    # --- feeding the policy ---------------------------------------------

    def _facts(self, source: MediaSource) -> policy.SourceFacts:
        local = self.node_id is None or not source.node_id or source.node_id == self.node_id
        known = self._program.sources.get(source.id)
        return policy.SourceFacts(source.kind, source.state, local, known.live_at if known else 0.0)

    def _source_state(self, source_id: str, state: SourceState, facts: policy.SourceFacts | None) -> None:
        known = self._program.sources.get(source_id)
        facts = facts or known or policy.SourceFacts(policy.FOLLOWED[0])
        if state is SourceState.LIVE:
            if known is not None and known.state is SourceState.LIVE:
                return  # no news: it was live already
            now = self._clock() if self._clock is not None else asyncio.get_running_loop().time()
            self._step(policy.SourceLive(source_id, facts.kind, facts.local, now))
        elif known is None or known.state is not state:
            self._step(policy.SourceLost(source_id, state, facts.kind, facts.local))

    def _adopt(self, state: ProgramState, by: str, took: bool = False) -> None:
        """Make the policy follow a ProgramState the rooms hold (newer than
        the last applied): manual first, then the program if it moved.
        `took`: the state answers a take or a cut by `by` that the rooms
        accepted; it counts even when it changed nothing (a take of what is
        on air makes it that operator's choice)."""
        if state.forum_id != self.forum_id or state.version < self._version:
            return
        if state.version == self._version and not took:
            return
        self._version = state.version
        if state.manual != self._program.manual:
            self._step(policy.Manual(state.manual))
        held = self._program.held if self._program.phase in (Phase.ON_AIR, Phase.GRACE) else None
        if state.program == held and not took:
            return  # a preview or manual change, or our own write seen again
        claim = policy.claim_of(by)
        if state.program is None:
            event: policy.PolicyEvent = (policy.OperatorSlate() if claim is Claim.OPERATOR
                                         else policy.ProgramElsewhere(None, claim))
        elif claim is Claim.OPERATOR:
            event = policy.OperatorTake(state.program)
        elif claim is Claim.AGENDA:
            event = policy.AgendaTake(state.program)
        else:
            event = policy.ProgramElsewhere(state.program, claim)
        self._step(event)

    def _step(self, event: policy.PolicyEvent) -> None:
        program, decisions = policy.step(self._program, event)
        self._commit(program, decisions)

    def _commit(self, program: policy.Program, decisions: tuple[policy.Decision, ...]) -> None:
        old = self._program
        self._program = program
        if (old.phase, old.held) != (program.phase, program.held):
            logger.info("ProgramSwitcher(%s) %s(%s) -> %s(%s) [%s]", self.forum_id, old.phase.value, old.held,
                        program.phase.value, program.held, program.claim.value)
            self.transitions.append((program.phase.value, program.held or ""))
        self._apply(decisions)

    # --- carrying out decisions -------------------------------------------

    def _apply(self, decisions: "tuple[policy.Decision, ...] | list[policy.Decision]") -> None:
        for decision in decisions:
            match decision:
                case policy.Cut(source_id=source_id):
                    self._cut(source_id)
                case policy.Record(source_id=source_id):
                    self._spawn(self._record(source_id))
                case policy.StartGrace(source_id=source_id):
                    self._start_timer(source_id)
                case policy.CancelGrace():
                    self._cancel_timer()

    def _cut(self, source_id: str | None) -> None:
        if self._media is None:
            return
        try:
            self._media.set_program(self.forum_id, source_id)
        except Exception as exc:  # a source the media plane does not hold (yet): the slate shows
            logger.warning("ProgramSwitcher(%s) set_program(%s): %r", self.forum_id, source_id, exc)

    def _start_timer(self, source_id: str) -> None:
        self._cancel_timer()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(self.slate_grace, lambda: self._grace_over(source_id))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _grace_over(self, source_id: str) -> None:
        self._timer = None
        self._step(policy.GraceOver(source_id))

    def _still_wanted(self, source_id: str | None) -> bool:
        p = self._program
        if source_id is None:
            return p.phase is Phase.COVERED
        return p.phase is Phase.ON_AIR and p.held == source_id

    async def _record(self, source_id: str | None) -> None:
        """Write the policy's own ProgramState (a follow, a return, a cover)."""
        async with self._lock:
            if not self._still_wanted(source_id):
                return  # a take landed meanwhile
            state = await self._rooms.set_program_system(self.forum_id, source_id, SYSTEM)
            self._version = max(self._version, state.version)
        # a cover leaves the media plane on `held`: it shows the slate while
        # held is down and cuts back at its first keyframe by itself

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
        """Wait for pending writes (covers, returns, follows) to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
