"""A forum's program policy as a pure state machine: what goes on air.

No I/O and no clock: `step(program, event)` returns the next `Program`
and the decisions the applier (streaming/program_switcher.py) carries out
in order. Times are injected values (`SourceLive.at`, seconds on any
monotonic clock); the grace timer is a decision (`StartGrace`) whose
expiry comes back as the `GraceOver` event.

Phases (`Program.phase`, with `held` the source concerned):

    SLATE    the slate is on air (nothing taken yet, cut to it, or the
             source on air was removed)
    ON_AIR   `held` is on air (live, or still connecting: the media plane
             shows the slate until its first keyframe)
    GRACE    `held` dropped; the media plane keeps its last frame and cuts
             to the slate by itself when the grace runs out
    COVERED  the slate covers `held` (recorded in the rooms); `held` comes
             back by itself when it is live again

Who chose what is on air (`Program.claim`): NOBODY (the policy itself:
start, a follow, a cover, a return), OPERATOR (a take or a cut to the
slate by an operator) or AGENDA (a take by the agenda). The follow rule:
with nobody's choice in the way (`claim` NOBODY and not manual), the
newest live source of kind LIVE or VENUE goes on air, from every phase; a
RECORDED source waits for a take (the operator's or the agenda's). A
choice stands until it is replaced, or until the source it chose is
removed: then nobody's choice is in the way any more.

Decisions: `Cut(x)` the media plane's program carries x (None: the slate)
from x's next keyframe; `Record(x)` write the ProgramState as the policy's
own (by "system"; None: the slate covers); `StartGrace(x)` call back
`GraceOver(x)` after `slate_grace`; `CancelGrace()` forget that timer.
Writes and follows for a source are made only by the node that holds it
(`SourceFacts.local`); the others adopt them as `ProgramElsewhere`.

F below = "nobody's choice is in the way": not manual and claim NOBODY.
L = the newest live LIVE/VENUE source other than `held` (if any).
"follow x" = ON_AIR(x), claim NOBODY, [CancelGrace,] Cut(x), Record(x);
only if x is local (else nothing: its node follows and we adopt that).
"take x by C" = claim C, CancelGrace if GRACE; ON_AIR(x), or GRACE(x) +
StartGrace(x) (if local) when x is known lost; Cut(x) unless x was
already held in ON_AIR/GRACE.

    event \\ phase     SLATE            ON_AIR(h)          GRACE(h)           COVERED(h)
    ----------------  ---------------  -----------------  -----------------  -----------------
    SourceLive(x)     F: follow x      x=h: -             x=h: ON_AIR(h),    x=h: return: ON_AIR(h),
                      else -           F: follow x        CancelGrace        Cut(h), Record(h)
                                       else -             F: follow x        F: follow x
                                                          else -             else -
    SourceLost(x)     -                x=h lost/ended:    -                  -
                                       GRACE(h),
                                       StartGrace(h)
                                       else -
    SourceRemoved(x)  -                x=h: choice void:  x=h: as ON_AIR,    x=h: as ON_AIR
                                       follow L if not    with CancelGrace   else -
                                       manual, else       else -
                                       SLATE, Cut(None)
                                       (no Record: the rooms clear x themselves)
                                       else -
    GraceOver(x)      -                -                  x=h: F and L:      -
                                                          follow L, else
                                                          COVERED(h),
                                                          Record(None)
                                                          else - (stale)
    OperatorTake(x)   take x by OPERATOR (every phase)
    OperatorSlate     SLATE, claim OPERATOR, Cut(None) [CancelGrace in GRACE]; SLATE: claim only
    Preview(x)        - (the preview never changes the program)
    Manual(on)        manual := on; on: nothing else. off, F: SLATE/COVERED follow L (if any),
                      ON_AIR(h) follow L if L is newer than h; GRACE waits for GraceOver
    AgendaTake(x)     take x by AGENDA (every phase)
    ProgramElsewhere  x: take x by its claim. None by OPERATOR/AGENDA: as OperatorSlate
      (x, claim)      with that claim. None by NOBODY (another node's cover, the rooms
                      clearing a removed source): GRACE/COVERED(h) -> COVERED(h),
                      CancelGrace; ON_AIR(h) -> SLATE, Cut(None); SLATE -> -

`TABLE` names the same cells (phase, event) for the tests, which are
parametrized from it. `resume()` is the start row: a policy that starts
with the slate on air by nobody's choice follows L at once.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from rooms.models import SourceKind, SourceState

SYSTEM = "system"  # `by` of the policy's own writes (rooms.service.set_program_system)
AGENDA_BY = "agenda"
FOLLOWED = (SourceKind.LIVE, SourceKind.VENUE)  # a recorded video waits for a take


class Phase(enum.Enum):
    SLATE = "slate"
    ON_AIR = "on_air"
    GRACE = "grace"
    COVERED = "covered"


class Claim(enum.Enum):
    NOBODY = "nobody"
    OPERATOR = "operator"
    AGENDA = "agenda"


def claim_of(by: str) -> Claim:
    """The claim of a ProgramChanged written `by` someone: "" and "system"
    are the policy's own, "agenda" the agenda's, any other an operator's."""
    if by in ("", SYSTEM):
        return Claim.NOBODY
    return Claim.AGENDA if by == AGENDA_BY else Claim.OPERATOR


@dataclass(frozen=True)
class SourceFacts:
    """What the policy knows of a source. `live_at`: when it last became
    live (s, injected monotonic clock), orders "newest"."""

    kind: SourceKind
    state: SourceState = SourceState.CONNECTING
    local: bool = True
    live_at: float = 0.0


@dataclass(frozen=True)
class Program:
    phase: Phase = Phase.SLATE
    held: str | None = None
    claim: Claim = Claim.NOBODY
    manual: bool = False
    sources: Mapping[str, SourceFacts] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        """F: nobody's choice is in the way of the follow rule."""
        return not self.manual and self.claim is Claim.NOBODY

    def newest_live(self) -> str | None:
        """L: the newest live LIVE/VENUE source other than `held`."""
        live = [(f.live_at, sid) for sid, f in self.sources.items()
                if f.state is SourceState.LIVE and f.kind in FOLLOWED and sid != self.held]
        return max(live)[1] if live else None


# --- events -------------------------------------------------------------------


@dataclass(frozen=True)
class SourceLive:
    """`source_id` became live (it was not live before)."""

    source_id: str
    kind: SourceKind
    local: bool = True
    at: float = 0.0


@dataclass(frozen=True)
class SourceLost:
    """A source is not live (any more): lost, ended or reconnecting."""

    source_id: str
    state: SourceState = SourceState.LOST
    kind: SourceKind = SourceKind.LIVE
    local: bool = True


@dataclass(frozen=True)
class SourceRemoved:
    source_id: str


@dataclass(frozen=True)
class GraceOver:
    source_id: str


@dataclass(frozen=True)
class OperatorTake:
    """The rooms accepted an operator's take of `source_id`."""

    source_id: str


@dataclass(frozen=True)
class OperatorSlate:
    """The rooms accepted an operator's cut to the slate."""


@dataclass(frozen=True)
class Preview:
    source_id: str | None


@dataclass(frozen=True)
class Manual:
    on: bool


@dataclass(frozen=True)
class AgendaTake:
    """The rooms accepted the agenda's take of `source_id`."""

    source_id: str


@dataclass(frozen=True)
class ProgramElsewhere:
    """The rooms' program changed by a write this policy did not make here
    (another node, the rooms clearing a removed source)."""

    program: str | None
    claim: Claim


PolicyEvent = (SourceLive | SourceLost | SourceRemoved | GraceOver | OperatorTake | OperatorSlate | Preview
               | Manual | AgendaTake | ProgramElsewhere)


# --- decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """The media plane's program carries `source_id` (None: the slate)."""

    source_id: str | None


@dataclass(frozen=True)
class Record:
    """Write the ProgramState as the policy's own (None: the slate covers)."""

    source_id: str | None


@dataclass(frozen=True)
class StartGrace:
    source_id: str


@dataclass(frozen=True)
class CancelGrace:
    pass


Decision = Cut | Record | StartGrace | CancelGrace
Step = tuple[Program, tuple[Decision, ...]]

EVENTS: tuple[type, ...] = (SourceLive, SourceLost, SourceRemoved, GraceOver, OperatorTake, OperatorSlate,
                            Preview, Manual, AgendaTake, ProgramElsewhere)
TABLE: tuple[tuple[Phase, type], ...] = tuple((phase, event) for event in EVENTS for phase in Phase)


# --- the machine ----------------------------------------------------------------


def _with_source(p: Program, source_id: str, facts: SourceFacts | None) -> Program:
    sources = dict(p.sources)
    if facts is None:
        sources.pop(source_id, None)
    else:
        sources[source_id] = facts
    return dataclasses.replace(p, sources=sources)


def _follow(p: Program, source_id: str) -> Step:
    facts = p.sources.get(source_id)
    if facts is None or not facts.local:
        return p, ()  # its node follows; we adopt that as ProgramElsewhere
    cancel: tuple[Decision, ...] = (CancelGrace(),) if p.phase is Phase.GRACE else ()
    nxt = dataclasses.replace(p, phase=Phase.ON_AIR, held=source_id, claim=Claim.NOBODY)
    return nxt, (*cancel, Cut(source_id), Record(source_id))


def _take(p: Program, source_id: str, claim: Claim) -> Step:
    decisions: list[Decision] = []
    if p.phase is Phase.GRACE:
        decisions.append(CancelGrace())
    already = p.held == source_id and p.phase in (Phase.ON_AIR, Phase.GRACE)
    facts = p.sources.get(source_id)
    if facts is not None and facts.state in (SourceState.LOST, SourceState.ENDED):
        nxt = dataclasses.replace(p, phase=Phase.GRACE, held=source_id, claim=claim)
        if facts.local:
            decisions.append(StartGrace(source_id))
    else:
        nxt = dataclasses.replace(p, phase=Phase.ON_AIR, held=source_id, claim=claim)
    if not already:
        decisions.append(Cut(source_id))
    return nxt, tuple(decisions)


def _slate(p: Program, claim: Claim) -> Step:
    cancel: tuple[Decision, ...] = (CancelGrace(),) if p.phase is Phase.GRACE else ()
    nxt = dataclasses.replace(p, phase=Phase.SLATE, held=None, claim=claim)
    if p.phase is Phase.SLATE:
        return nxt, ()
    return nxt, (*cancel, Cut(None))


def step(p: Program, event: PolicyEvent) -> Step:
    """The next Program and the decisions to apply, in order (see the table)."""
    match event:
        case SourceLive(source_id=x):
            facts = SourceFacts(event.kind, SourceState.LIVE, event.local, event.at)
            p = _with_source(p, x, facts)
            if x == p.held:
                if p.phase is Phase.GRACE:
                    return dataclasses.replace(p, phase=Phase.ON_AIR), (CancelGrace(),)
                if p.phase is Phase.COVERED:
                    if not event.local:
                        return p, ()
                    return dataclasses.replace(p, phase=Phase.ON_AIR), (Cut(x), Record(x))
                return p, ()
            if p.free and event.kind in FOLLOWED:
                return _follow(p, x)
            return p, ()
        case SourceLost(source_id=x):
            old = p.sources.get(x) or SourceFacts(event.kind, local=event.local)
            p = _with_source(p, x, dataclasses.replace(old, state=event.state))
            if x == p.held and p.phase is Phase.ON_AIR and event.state is not SourceState.CONNECTING:
                return dataclasses.replace(p, phase=Phase.GRACE), ((StartGrace(x),) if old.local else ())
            return p, ()
        case SourceRemoved(source_id=x):
            p = _with_source(p, x, None)
            if x != p.held or p.phase is Phase.SLATE:
                return p, ()
            cancel: tuple[Decision, ...] = (CancelGrace(),) if p.phase is Phase.GRACE else ()
            freed = dataclasses.replace(p, phase=Phase.SLATE, held=None, claim=Claim.NOBODY)
            following = freed.newest_live() if freed.free else None
            if following is not None and freed.sources[following].local:
                nxt, decisions = _follow(freed, following)
                return nxt, (*cancel, *decisions)
            return freed, (*cancel, Cut(None))
        case GraceOver(source_id=x):
            if p.phase is not Phase.GRACE or x != p.held:
                return p, ()  # stale: a take or a return landed meanwhile
            following = p.newest_live() if p.free else None
            covered = dataclasses.replace(p, phase=Phase.COVERED)  # the timer has fired: nothing to cancel
            if following is not None and p.sources[following].local:
                return _follow(covered, following)
            return covered, (Record(None),)
        case OperatorTake(source_id=x):
            return _take(p, x, Claim.OPERATOR)
        case OperatorSlate():
            return _slate(p, Claim.OPERATOR)
        case Preview():
            return p, ()
        case Manual(on=on):
            p = dataclasses.replace(p, manual=on)
            if on or not p.free or p.phase is Phase.GRACE:
                return p, ()
            following = p.newest_live()
            if following is None:
                return p, ()
            if p.phase is Phase.ON_AIR and p.held is not None:
                held = p.sources.get(p.held)
                if held is not None and held.live_at >= p.sources[following].live_at:
                    return p, ()
            return _follow(p, following)
        case AgendaTake(source_id=x):
            return _take(p, x, Claim.AGENDA)
        case ProgramElsewhere(program=x, claim=claim):
            if x is not None:
                return _take(p, x, claim)
            if claim is not Claim.NOBODY:
                return _slate(p, claim)
            if p.phase in (Phase.GRACE, Phase.COVERED):
                cancel = (CancelGrace(),) if p.phase is Phase.GRACE else ()
                return dataclasses.replace(p, phase=Phase.COVERED), cancel
            return _slate(p, Claim.NOBODY)
    raise TypeError(f"not a program policy event: {event!r}")


def resume(p: Program) -> Step:
    """The start row: with the slate on air by nobody's choice, follow L."""
    if p.phase is Phase.SLATE and p.free:
        following = p.newest_live()
        if following is not None:
            return _follow(p, following)
    return p, ()
