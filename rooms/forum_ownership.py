"""One owner per forum across nodes: which forums this node needs, and
the leases it holds for them.

A forum is *needed* here while something on this node uses it: a source
connected here or a viewer watching here (`hold` / `drop`, by a key of
the caller's, e.g. a source id), an operator's command (`touch`: needed
for `idle_ms` after it) or an agenda slot within its lead time
(`set_scheduled`, from `scheduled_forums`). `tick()` then takes the lease
of each needed forum nobody holds, renews the leases it holds once a third
of their TTL has passed (so two renewals may fail before one expires),
gives up those no longer needed (nor `busy`: an output or a playout
still runs), and says what changed: `acquired` (start
hosting), `lost` (stop hosting: another node holds it now, or this node
could not renew before its own lease ran out) and `released`.

Pure logic: the lease store (`rooms.store.ForumLeases`) and the clock
(monotonic seconds) are injected, nothing here sleeps or starts a task;
the caller calls `tick()` every `tick_interval_s`. A lease is judged
expired by this node's clock from the moment its acquire or renew was
*sent*, so this node never believes in a lease the store has already
dropped (clock rates drift far less than the TTL).

The owner's address: `resolve_owner` reads the lease's holder and its
public URL from node liveness (`rooms.store.NodeLiveness`), where each
node heart-beats `Settings.public_url`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from rooms.agenda import AgendaClock
from rooms.errors import RoomError
from rooms.events import ParticipantJoined, ParticipantLeft, RoomEvent, SourceAdded, SourceRemoved, SourceUpdated
from rooms.models import SourceKind, SourceState
from rooms.store import ForumLeases, NodeLiveness

logger = logging.getLogger(__name__)

RENEW_FRACTION = 3  # renew once ttl/3 has passed
RETRY_FRACTION = 10  # a needed forum's lease is tried every ttl/10 (how soon a dead owner's is taken)


@dataclass(frozen=True)
class OwnershipChange:
    """What one `tick()` changed, forum ids sorted."""

    acquired: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    released: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.acquired or self.lost or self.released)


@dataclass(frozen=True)
class Owner:
    """The node holding a forum's lease, and where its clients go
    (`public_url` "" while its heartbeat is unknown or expired)."""

    node_id: str
    public_url: str


@dataclass
class _Held:
    sent_at: float  # clock when the last successful acquire/renew was sent
    ttl_s: float

    @property
    def expires_at(self) -> float:
        return self.sent_at + self.ttl_s


@dataclass
class _Need:
    holders: set[str] = field(default_factory=set)
    until: float = float("-inf")  # clock until which a touch keeps it needed
    idle_since: float | None = None  # clock when it stopped being needed


class ForumOwnership:
    """This node's side of the forum leases (see the module docstring).

    `node_id` is this run's instance id; `ttl_ms` the lease TTL (ms);
    `idle_ms` how long a forum stays needed after an operator's touch and
    how long an owned forum nobody needs is kept before its lease is
    given up; `clock` monotonic seconds."""

    def __init__(
        self,
        leases: ForumLeases,
        node_id: str,
        ttl_ms: int,
        clock: Callable[[], float],
        idle_ms: int = 60_000,
    ) -> None:
        if ttl_ms < 30:
            raise ValueError(f"a lease TTL of {ttl_ms} ms leaves no time to renew it")
        self._leases = leases
        self.node_id = node_id
        self.ttl_ms = int(ttl_ms)
        self.idle_s = idle_ms / 1000
        self._clock = clock
        self._needs: dict[str, _Need] = {}
        self._scheduled: frozenset[str] = frozenset()
        self._held: dict[str, _Held] = {}
        self._last_try: dict[str, float] = {}  # forum -> clock of the last acquire attempt
        # whether an owned forum still works for nobody in particular (a restream, a
        # recording, a playout running): such a forum is never idle; the hosts say
        self.busy: Callable[[str], bool] | None = None

    @property
    def tick_interval_s(self) -> float:
        """How often to call `tick()`: a dead owner's lease is taken at
        most this long after it expires."""
        return self.ttl_ms / 1000 / RETRY_FRACTION

    # --- what this node needs ----------------------------------------------

    def hold(self, forum_id: str, key: str) -> None:
        """Something here uses the forum until `drop(forum_id, key)` (a
        source, a viewer: `key` is the caller's id for it)."""
        self._needs.setdefault(forum_id, _Need()).holders.add(key)

    def drop(self, forum_id: str, key: str) -> None:
        need = self._needs.get(forum_id)
        if need is not None:
            need.holders.discard(key)

    def touch(self, forum_id: str) -> None:
        """An operator acted on the forum here: needed for `idle_ms` more."""
        need = self._needs.setdefault(forum_id, _Need())
        need.until = max(need.until, self._clock() + self.idle_s)

    def set_scheduled(self, forum_ids: Iterable[str]) -> None:
        """The forums whose agenda needs a host now (`scheduled_forums`)."""
        self._scheduled = frozenset(forum_ids)

    def needed(self) -> set[str]:
        now = self._clock()
        found = {f for f, need in self._needs.items() if need.holders or need.until > now}
        return found | set(self._scheduled)

    # --- what this node owns ---------------------------------------------------

    def owns(self, forum_id: str) -> bool:
        """True while this node's lease on the forum is surely still valid."""
        held = self._held.get(forum_id)
        return held is not None and self._clock() < held.expires_at

    def owned(self) -> list[str]:
        return sorted(f for f in self._held if self.owns(f))

    async def tick(self) -> OwnershipChange:
        """Take, renew and give up leases (see the module docstring).
        Raises nothing for a store outage: an unreachable store just
        takes nothing, and a held lease is lost once it would have expired."""
        now = self._clock()
        needed = self.needed()
        acquired: list[str] = []
        lost: list[str] = []
        released: list[str] = []
        for forum_id in sorted(self._held):
            held = self._held[forum_id]
            if now >= held.expires_at:
                del self._held[forum_id]
                lost.append(forum_id)
                continue
            if forum_id not in needed and not (self.busy is not None and self.busy(forum_id)):
                need = self._needs.setdefault(forum_id, _Need())
                if need.idle_since is None:
                    need.idle_since = now
                if now - need.idle_since >= self.idle_s:
                    await self._release(forum_id)
                    released.append(forum_id)
                    continue
            else:
                self._needs.setdefault(forum_id, _Need()).idle_since = None
            if now - held.sent_at >= held.ttl_s / RENEW_FRACTION:
                outcome = await self._call(self._leases.renew_lease(forum_id, self.node_id, self.ttl_ms))
                if outcome is False:
                    del self._held[forum_id]
                    lost.append(forum_id)
                elif outcome is True:
                    self._held[forum_id] = _Held(now, self.ttl_ms / 1000)
        for forum_id in sorted(needed - set(self._held) - set(lost)):  # a lost one: next tick
            outcome = await self._call(self._leases.acquire_lease(forum_id, self.node_id, self.ttl_ms))
            self._last_try[forum_id] = now
            if outcome is True:
                self._held[forum_id] = _Held(now, self.ttl_ms / 1000)
                self._needs.setdefault(forum_id, _Need()).idle_since = None
                acquired.append(forum_id)
        self._forget_unused()
        change = OwnershipChange(tuple(acquired), tuple(lost), tuple(released))
        if change:
            logger.info("ForumOwnership(%s): acquired %s, lost %s, released %s",
                        self.node_id, list(change.acquired), list(change.lost), list(change.released))
        return change

    async def release_all(self) -> list[str]:
        """Give every lease up (a graceful stop: another node takes the
        forums at once instead of after the TTL). Returns the forum ids."""
        forums = sorted(self._held)
        for forum_id in forums:
            await self._release(forum_id)
        return forums

    async def _release(self, forum_id: str) -> None:
        self._held.pop(forum_id, None)
        await self._call(self._leases.release_lease(forum_id, self.node_id))

    async def _call(self, call: Awaitable[bool]) -> bool | None:
        """The store's answer; None when the store is unreachable."""
        try:
            return bool(await call)
        except RoomError as exc:
            if exc.code != "unavailable":
                raise
            logger.warning("ForumOwnership(%s): the lease store failed: %s", self.node_id, exc.message)
            return None

    def _forget_unused(self) -> None:
        now = self._clock()
        for forum_id in [f for f, n in self._needs.items()
                         if not n.holders and n.until <= now and f not in self._held]:
            del self._needs[forum_id]


# sources that come from outside: the forum's own slate and playouts are the host's, not a need
_OUTSIDE_SOURCES = frozenset({SourceKind.LIVE, SourceKind.VENUE})


def note_event(ownership: ForumOwnership, event: RoomEvent) -> bool:
    """Hold or drop a need from a room event about a connection on this
    node (a participant joined or left here, a speaker's or the venue's
    source came or went here). True when the needs changed."""
    match event:
        case ParticipantJoined(participant=p) if p.node_id == ownership.node_id:
            ownership.hold(p.forum_id, f"participant:{p.id}")
        case ParticipantLeft(participant=p) if p.node_id == ownership.node_id:
            ownership.drop(p.forum_id, f"participant:{p.id}")
        case SourceAdded(source=s) | SourceUpdated(source=s) if s.node_id == ownership.node_id \
                and s.kind in _OUTSIDE_SOURCES and s.state is not SourceState.ENDED:
            ownership.hold(s.forum_id, f"source:{s.id}")
        case SourceRemoved(source=s) | SourceUpdated(source=s) if s.node_id == ownership.node_id:
            ownership.drop(s.forum_id, f"source:{s.id}")
        case _:
            return False
    return True


async def resolve_owner(forum_id: str, leases: ForumLeases, liveness: NodeLiveness) -> Owner | None:
    """Who hosts the forum and where its clients go; None when nobody
    holds its lease."""
    owner = await leases.lease_owner(forum_id)
    if owner is None:
        return None
    url = next((n.public_url for n in await liveness.nodes() if n.node_id == owner), "")
    return Owner(owner, url)


def scheduled_forums(agenda: AgendaClock, lead: dt.timedelta) -> set[str]:
    """Forums with a recorded slot (simulive) that starts within `lead`
    from the agenda's now or is under way: they need a host even with
    nobody connected, so the talk starts on time."""
    now = agenda.now()
    found: set[str] = set()
    for playout in agenda.recorded_starts(now - LONGEST_SLOT, now + lead):
        end = playout.until or playout.at
        if end > now:
            found.add(playout.forum_id)
    return found


LONGEST_SLOT = dt.timedelta(hours=12)  # how far back a slot still under way may have started
