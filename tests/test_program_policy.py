"""Every cell of rooms.program_policy's transition table (no network, no
clock): the cases are keyed by the module's own TABLE, and a test checks
that every cell has at least one case."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from rooms.models import SourceKind, SourceState
from rooms.program_policy import (
    TABLE,
    AgendaTake,
    CancelGrace,
    Claim,
    Cut,
    Decision,
    GraceOver,
    Manual,
    OperatorSlate,
    OperatorTake,
    Phase,
    PolicyEvent,
    Preview,
    Program,
    ProgramElsewhere,
    Record,
    SourceFacts,
    SourceLive,
    SourceLost,
    SourceRemoved,
    StartGrace,
    claim_of,
    resume,
    step,
)

S, ON, G, C = Phase.SLATE, Phase.ON_AIR, Phase.GRACE, Phase.COVERED
NOBODY, OP, AG = Claim.NOBODY, Claim.OPERATOR, Claim.AGENDA
LIVE, LOST = SourceState.LIVE, SourceState.LOST


def program(phase: Phase, claim: Claim = NOBODY, manual: bool = False, b_live: bool = True) -> Program:
    """`a` (a venue feed) is held in every phase but SLATE (live in SLATE and
    ON_AIR, lost in GRACE and COVERED); `b` a speaker live since t=1 (or
    lost), `r` a recorded video live since t=2, `far` a speaker on another
    node, live since t=0."""
    held = None if phase is S else "a"
    a_state = LOST if phase in (G, C) else LIVE
    sources = {
        "a": SourceFacts(SourceKind.VENUE, a_state, True, 3.0 if phase is not S else 0.5),
        "b": SourceFacts(SourceKind.LIVE, LIVE if b_live else LOST, True, 1.0),
        "r": SourceFacts(SourceKind.RECORDED, LIVE, True, 2.0),
        "far": SourceFacts(SourceKind.LIVE, LIVE, False, 0.0),
    }
    return Program(phase, held, claim, manual, sources)


def remote_a(p: Program) -> Program:
    return dataclasses.replace(p, sources={**p.sources, "a": dataclasses.replace(p.sources["a"], local=False)})


@dataclass(frozen=True)
class Case:
    label: str
    before: Program
    event: PolicyEvent
    phase: Phase
    held: str | None
    claim: Claim
    decisions: tuple[Decision, ...]


def X(at: float = 5.0, kind: SourceKind = SourceKind.LIVE, local: bool = True) -> SourceLive:
    return SourceLive("x", kind, local, at)


def cases() -> dict[tuple[Phase, type], list[Case]]:
    c: dict[tuple[Phase, type], list[Case]] = {cell: [] for cell in TABLE}

    def add(label: str, before: Program, event: PolicyEvent, phase: Phase, held: str | None, claim: Claim,
            *decisions: Decision) -> None:
        c[(before.phase, type(event))].append(Case(label, before, event, phase, held, claim, decisions))

    follow_x = (Cut("x"), Record("x"))
    # --- SourceLive
    add("free: follow", program(S), X(), ON, "x", NOBODY, *follow_x)
    add("operator chose the slate", program(S, OP), X(), S, None, OP)
    add("manual", program(S, manual=True), X(), S, None, NOBODY)
    add("recorded waits for a take", program(S), X(kind=SourceKind.RECORDED), S, None, NOBODY)
    add("another node's: it follows", program(S), X(local=False), S, None, NOBODY)
    add("free: newest wins", program(ON), X(), ON, "x", NOBODY, *follow_x)
    add("held again: nothing", program(ON), SourceLive("a", SourceKind.VENUE, True, 6.0), ON, "a", NOBODY)
    add("operator's take stands", program(ON, OP), X(), ON, "a", OP)
    add("agenda's take stands", program(ON, AG), X(), ON, "a", AG)
    add("manual", program(ON, manual=True), X(), ON, "a", NOBODY)
    add("held back in grace", program(G), SourceLive("a", SourceKind.VENUE, True, 6.0), ON, "a", NOBODY,
        CancelGrace())
    add("free: follow, grace cancelled", program(G), X(), ON, "x", NOBODY, CancelGrace(), *follow_x)
    add("operator's take stands", program(G, OP), X(), G, "a", OP)
    add("held returns", program(C), SourceLive("a", SourceKind.VENUE, True, 6.0), ON, "a", NOBODY,
        Cut("a"), Record("a"))
    add("held returns to the operator's take", program(C, OP), SourceLive("a", SourceKind.VENUE, True, 6.0),
        ON, "a", OP, Cut("a"), Record("a"))
    add("held on another node: it returns", remote_a(program(C)), SourceLive("a", SourceKind.VENUE, False, 6.0),
        C, "a", NOBODY)
    add("free: follow (the reconnect)", program(C), X(), ON, "x", NOBODY, *follow_x)
    add("operator's take stands", program(C, OP), X(), C, "a", OP)
    add("manual", program(C, manual=True), X(), C, "a", NOBODY)
    # --- SourceLost
    add("nothing on air", program(S), SourceLost("b"), S, None, NOBODY)
    add("held: grace", program(ON), SourceLost("a"), G, "a", NOBODY, StartGrace("a"))
    add("held on another node: its node times", remote_a(program(ON)), SourceLost("a"), G, "a", NOBODY)
    add("held reconnecting: no grace", program(ON), SourceLost("a", SourceState.CONNECTING), ON, "a", NOBODY)
    add("another source", program(ON), SourceLost("b"), ON, "a", NOBODY)
    add("nothing more", program(G), SourceLost("a", SourceState.ENDED), G, "a", NOBODY)
    add("nothing more", program(C), SourceLost("b"), C, "a", NOBODY)
    # --- SourceRemoved
    add("not on air", program(S), SourceRemoved("b"), S, None, NOBODY)
    add("held: newest live follows", program(ON), SourceRemoved("a"), ON, "b", NOBODY, Cut("b"), Record("b"))
    add("held, operator's: choice void, follow", program(ON, OP), SourceRemoved("a"), ON, "b", NOBODY,
        Cut("b"), Record("b"))
    add("held, none live: slate", program(ON, b_live=False), SourceRemoved("a"), S, None, NOBODY, Cut(None))
    add("held, manual: slate", program(ON, manual=True), SourceRemoved("a"), S, None, NOBODY, Cut(None))
    add("another source", program(ON), SourceRemoved("b"), ON, "a", NOBODY)
    add("held in grace: follow", program(G), SourceRemoved("a"), ON, "b", NOBODY, CancelGrace(),
        Cut("b"), Record("b"))
    add("held in grace, none live", program(G, b_live=False), SourceRemoved("a"), S, None, NOBODY,
        CancelGrace(), Cut(None))
    add("another source", program(G), SourceRemoved("b"), G, "a", NOBODY)
    add("held covered: follow (agenda's take over)", program(C, AG), SourceRemoved("a"), ON, "b", NOBODY,
        Cut("b"), Record("b"))
    add("held covered, none live: slate", program(C, b_live=False), SourceRemoved("a"), S, None, NOBODY,
        Cut(None))
    add("another source", program(C), SourceRemoved("b"), C, "a", NOBODY)
    # --- GraceOver
    add("stale", program(S), GraceOver("a"), S, None, NOBODY)
    add("stale", program(ON), GraceOver("a"), ON, "a", NOBODY)
    add("free and one live: follow it", program(G), GraceOver("a"), ON, "b", NOBODY, Cut("b"), Record("b"))
    add("none live: cover", program(G, b_live=False), GraceOver("a"), C, "a", NOBODY, Record(None))
    add("operator's: cover", program(G, OP), GraceOver("a"), C, "a", OP, Record(None))
    add("stale: another source", program(G), GraceOver("b"), G, "a", NOBODY)
    add("stale", program(C), GraceOver("a"), C, "a", NOBODY)
    # --- OperatorTake
    add("take", program(S), OperatorTake("b"), ON, "b", OP, Cut("b"))
    add("take", program(ON), OperatorTake("b"), ON, "b", OP, Cut("b"))
    add("take the held: claim only", program(ON), OperatorTake("a"), ON, "a", OP)
    add("take from grace", program(G), OperatorTake("b"), ON, "b", OP, CancelGrace(), Cut("b"))
    add("take from cover", program(C), OperatorTake("b"), ON, "b", OP, Cut("b"))
    add("take a lost source: grace", program(C), OperatorTake("a"), G, "a", OP, StartGrace("a"), Cut("a"))
    # --- OperatorSlate
    add("claim only", program(S), OperatorSlate(), S, None, OP)
    add("cut", program(ON), OperatorSlate(), S, None, OP, Cut(None))
    add("cut", program(G), OperatorSlate(), S, None, OP, CancelGrace(), Cut(None))
    add("cut", program(C), OperatorSlate(), S, None, OP, Cut(None))
    # --- Preview
    for phase in Phase:
        add("never changes the program", program(phase), Preview("b"), phase, None if phase is S else "a", NOBODY)
    # --- Manual
    add("on", program(S), Manual(True), S, None, NOBODY)
    add("off: follow the newest live", program(S, manual=True), Manual(False), ON, "b", NOBODY,
        Cut("b"), Record("b"))
    add("off, operator's slate stands", program(S, OP, manual=True), Manual(False), S, None, OP)
    add("on", program(ON), Manual(True), ON, "a", NOBODY)
    add("off: held is the newest", program(ON, manual=True), Manual(False), ON, "a", NOBODY)
    add("off: operator's take stands", program(ON, OP, manual=True), Manual(False), ON, "a", OP)
    add("on", program(G), Manual(True), G, "a", NOBODY)
    add("off: the grace runs", program(G, manual=True), Manual(False), G, "a", NOBODY)
    add("on", program(C), Manual(True), C, "a", NOBODY)
    add("off: follow", program(C, manual=True), Manual(False), ON, "b", NOBODY, Cut("b"), Record("b"))
    add("off: none live", program(C, manual=True, b_live=False), Manual(False), C, "a", NOBODY)
    # --- AgendaTake
    add("take", program(S), AgendaTake("r"), ON, "r", AG, Cut("r"))
    add("take", program(ON), AgendaTake("r"), ON, "r", AG, Cut("r"))
    add("take", program(G), AgendaTake("r"), ON, "r", AG, CancelGrace(), Cut("r"))
    add("take", program(C), AgendaTake("r"), ON, "r", AG, Cut("r"))
    # --- ProgramElsewhere
    add("another node followed", program(S), ProgramElsewhere("far", NOBODY), ON, "far", NOBODY, Cut("far"))
    add("rooms cleared: nothing", program(S), ProgramElsewhere(None, NOBODY), S, None, NOBODY)
    add("an operator elsewhere", program(ON), ProgramElsewhere("b", OP), ON, "b", OP, Cut("b"))
    add("rooms cleared the held", program(ON), ProgramElsewhere(None, NOBODY), S, None, NOBODY, Cut(None))
    add("an operator's slate elsewhere", program(ON), ProgramElsewhere(None, OP), S, None, OP, Cut(None))
    add("the holder covered", program(G), ProgramElsewhere(None, NOBODY), C, "a", NOBODY, CancelGrace())
    add("the agenda elsewhere", program(G), ProgramElsewhere("r", AG), ON, "r", AG, CancelGrace(), Cut("r"))
    add("our cover seen again", program(C), ProgramElsewhere(None, NOBODY), C, "a", NOBODY)
    add("the holder returned", program(C), ProgramElsewhere("a", NOBODY), G, "a", NOBODY, StartGrace("a"),
        Cut("a"))
    return c


CASES = cases()


def test_every_cell_of_the_table_has_a_case() -> None:
    assert set(CASES) == set(TABLE)
    empty = [f"{phase.value} x {event.__name__}" for (phase, event), found in CASES.items() if not found]
    assert not empty, empty


@pytest.mark.parametrize(
    "case", [case for found in CASES.values() for case in found],
    ids=[f"{phase.value}-{event.__name__}-{case.label}" for (phase, event), found in CASES.items()
         for case in found])
def test_cell(case: Case) -> None:
    after, decisions = step(case.before, case.event)
    assert (after.phase, after.held, after.claim) == (case.phase, case.held, case.claim)
    assert decisions == case.decisions
    assert after.manual == (case.event.on if isinstance(case.event, Manual) else case.before.manual)


def test_the_reported_sequence_a_killed_b_publishes() -> None:
    """Issue 14 item 2 as a sequence: A follows, is lost, covered; B goes
    live and on air; A's late removal changes nothing."""
    p = Program()
    p, d = step(p, SourceLive("A", SourceKind.LIVE, True, 1.0))
    assert (p.phase, p.held, d) == (ON, "A", (Cut("A"), Record("A")))
    p, d = step(p, SourceLost("A"))
    p, d = step(p, GraceOver("A"))
    assert (p.phase, d) == (C, (Record(None),))
    p, d = step(p, SourceLive("B", SourceKind.LIVE, True, 9.0))
    assert (p.phase, p.held, d) == (ON, "B", (Cut("B"), Record("B")))
    p, d = step(p, SourceRemoved("A"))
    assert (p.phase, p.held, d) == (ON, "B", ())


def test_resume_follows_a_source_already_live() -> None:
    p = Program(sources={"b": SourceFacts(SourceKind.LIVE, LIVE, True, 1.0)})
    assert resume(p)[1] == (Cut("b"), Record("b"))
    assert resume(Program(claim=OP, sources=p.sources))[1] == ()
    assert resume(Program(manual=True, sources=p.sources))[1] == ()


def test_claims_from_who_wrote() -> None:
    assert [claim_of(b) for b in ("", "system", "agenda", "Op")] == [NOBODY, NOBODY, AG, OP]
