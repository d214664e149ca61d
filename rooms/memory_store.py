"""The embedded store: one node, state in this process.

Atomicity comes free: no method awaits between reading and writing, so
on one event loop every call is a transaction. Events fan out to this
process's subscriptions only (it is the only node); a request to this
node calls its handler, to any other node is "unavailable". Heartbeats and
forum leases expire on the injected `clock` (monotonic seconds), so tests
move time by hand.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rooms.chat import ChatMessage
from rooms.errors import RoomError
from rooms.events import RoomEvent
from rooms.models import MediaSource, Participant, ProgramState
from rooms.store import (
    Admission,
    Counts,
    JsonObject,
    NodeInfo,
    Reaped,
    Store,
    Swap,
    counts_against_capacity,
    counts_against_source_bounds,
)

logger = logging.getLogger(__name__)


def _check_ttl(ttl_ms: int) -> None:
    if ttl_ms < 1:
        raise RoomError("invalid", f"a lease lasts at least 1 ms, not {ttl_ms}")


class MemoryStore(Store):
    def __init__(
        self,
        node_id: str = "local",
        queue_size: int = 1000,
        chat_keep: int = 500,
        clock: Callable[[], float] = time.monotonic,  # heartbeat and lease expiry, in seconds
    ) -> None:
        super().__init__(node_id, queue_size)
        self.chat_keep = chat_keep
        self._clock = clock
        self._participants: dict[str, dict[str, Participant]] = {}
        self._seats: dict[tuple[str, str], set[str]] = {}  # (forum, holder) -> seated participant ids
        self._sources: dict[str, dict[str, MediaSource]] = {}
        self._programs: dict[str, ProgramState] = {}
        self._chat: dict[str, OrderedDict[str, ChatMessage]] = {}
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}  # id -> (info, expires at)
        self._leases: dict[str, tuple[str, float]] = {}  # forum -> (owner, expires at)
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        if self._started:
            logger.debug("MemoryStore(%s) stopping", self.node_id)
        self._started = False
        self._stop_serving()
        self._fanout.close_all()

    # --- participants --------------------------------------------------------

    async def admit(self, participant: Participant, capacity: int, seats_per_holder: int = 0) -> Admission:
        forum = self._participants.setdefault(participant.forum_id, {})
        previous = forum.get(participant.id)
        if counts_against_capacity(participant.role):
            has_seat = previous is not None and counts_against_capacity(previous.role)
            if not has_seat:
                held = self._seats.get((participant.forum_id, participant.holder), set())
                if participant.holder and seats_per_holder > 0 and len(held) >= seats_per_holder:
                    return Admission.HOLDER_FULL
                if self._viewers(forum) >= capacity:
                    return Admission.FULL
        if previous is not None:
            self._unseat(previous)
        forum[participant.id] = participant
        if counts_against_capacity(participant.role) and participant.holder:
            self._seats.setdefault((participant.forum_id, participant.holder), set()).add(participant.id)
        return Admission.ADMITTED

    def _unseat(self, participant: Participant) -> None:
        key = (participant.forum_id, participant.holder)
        held = self._seats.get(key)
        if held is not None:
            held.discard(participant.id)
            if not held:
                del self._seats[key]

    async def remove_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        participant = self._participants.get(forum_id, {}).pop(participant_id, None)
        if participant is not None:
            self._unseat(participant)
        return participant

    async def participants(self, forum_id: str) -> list[Participant]:
        found = self._participants.get(forum_id, {}).values()
        return sorted(found, key=lambda p: (p.joined_at, p.id))

    async def get_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        return self._participants.get(forum_id, {}).get(participant_id)

    async def counts(self, forum_id: str) -> Counts:
        forum = self._participants.get(forum_id, {})
        return Counts(self._viewers(forum), len(forum))

    @staticmethod
    def _viewers(forum: dict[str, Participant]) -> int:
        return sum(1 for p in forum.values() if counts_against_capacity(p.role))

    # --- sources -------------------------------------------------------------

    async def put_source(self, source: MediaSource) -> MediaSource | None:
        forum = self._sources.setdefault(source.forum_id, {})
        previous = forum.get(source.id)
        forum[source.id] = source
        return previous

    async def add_source(self, source: MediaSource, per_forum: int = 0, per_holder: int = 0) -> Admission:
        forum = self._sources.setdefault(source.forum_id, {})
        if source.id not in forum and counts_against_source_bounds(source):
            counted = [s for s in forum.values() if counts_against_source_bounds(s)]
            if per_holder > 0 and sum(1 for s in counted if s.holder == source.holder) >= per_holder:
                return Admission.HOLDER_FULL
            if per_forum > 0 and len(counted) >= per_forum:
                return Admission.FULL
        forum[source.id] = source
        return Admission.ADMITTED

    async def remove_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        return self._sources.get(forum_id, {}).pop(source_id, None)

    async def sources(self, forum_id: str) -> list[MediaSource]:
        return sorted(self._sources.get(forum_id, {}).values(), key=lambda s: s.id)

    async def get_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        return self._sources.get(forum_id, {}).get(source_id)

    # --- program state -------------------------------------------------------

    async def _read_program(self, forum_id: str) -> Swap[ProgramState]:
        state = self._programs.get(forum_id) or ProgramState(forum_id)
        return Swap(state, self._programs.get(forum_id))

    async def _swap_program(self, forum_id: str, token: Any, new: ProgramState) -> bool:
        if self._programs.get(forum_id) is not token:
            return False
        self._programs[forum_id] = new
        return True

    # --- chat ----------------------------------------------------------------

    async def append_message(self, message: ChatMessage) -> None:
        history = self._chat.setdefault(message.forum_id, OrderedDict())
        history[message.id] = message
        while len(history) > self.chat_keep:
            history.popitem(last=False)

    async def messages(self, forum_id: str, limit: int = 50) -> list[ChatMessage]:
        if limit <= 0:
            return []
        return list(self._chat.get(forum_id, {}).values())[-limit:]

    async def _read_message(self, forum_id: str, message_id: str) -> Swap[ChatMessage] | None:
        history = self._chat.get(forum_id)
        message = None if history is None else history.get(message_id)
        return None if message is None else Swap(message, message)

    async def _swap_message(self, token: Any, new: ChatMessage) -> bool:
        history: dict[str, ChatMessage] = self._chat.get(new.forum_id, {})
        if history.get(new.id) is not token:
            return False
        history[new.id] = new
        return True

    # --- pub/sub -------------------------------------------------------------

    async def _publish(self, event: RoomEvent) -> None:
        self._fanout.deliver(event)

    async def _send_request(self, node_id: str, message: JsonObject) -> bool:
        return False  # this process is the only node: requests to itself never get here

    async def _send_reply(self, node_id: str, message: JsonObject) -> None:
        self._on_reply(message)

    # --- forum leases ----------------------------------------------------------

    def _live_lease(self, forum_id: str) -> str | None:
        held = self._leases.get(forum_id)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._leases[forum_id]
            return None
        return held[0]

    async def acquire_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        _check_ttl(ttl_ms)
        if self._live_lease(forum_id) not in (None, owner):
            return False
        self._leases[forum_id] = (owner, self._clock() + ttl_ms / 1000)
        return True

    async def renew_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        _check_ttl(ttl_ms)
        if self._live_lease(forum_id) != owner:
            return False
        self._leases[forum_id] = (owner, self._clock() + ttl_ms / 1000)
        return True

    async def release_lease(self, forum_id: str, owner: str) -> bool:
        if self._live_lease(forum_id) != owner:
            return False
        del self._leases[forum_id]
        return True

    async def lease_owner(self, forum_id: str) -> str | None:
        return self._live_lease(forum_id)

    # --- nodes ---------------------------------------------------------------

    async def heartbeat(self, node_id: str, load: dict[str, Any], ttl_s: float, public_url: str = "") -> None:
        info = NodeInfo(node_id, dict(load), time.time(), public_url)
        self._nodes[node_id] = (info, self._clock() + ttl_s)

    async def nodes(self) -> list[NodeInfo]:
        now = self._clock()
        return sorted(
            (info for info, expires in self._nodes.values() if expires > now),
            key=lambda n: n.node_id,
        )

    async def dead_nodes(self) -> list[str]:
        now = self._clock()
        return sorted(node for node, (_, expires) in self._nodes.items() if expires <= now)

    async def reap_node(self, node_id: str) -> Reaped:
        registered = self._nodes.pop(node_id, None) is not None
        participants: list[Participant] = []
        for forum in self._participants.values():
            gone = [p for p in forum.values() if p.node_id == node_id]
            for p in gone:
                del forum[p.id]
                self._unseat(p)
            participants.extend(gone)
        sources: list[MediaSource] = []
        for forum_sources in self._sources.values():
            lost = [s for s in forum_sources.values() if s.node_id == node_id]
            for s in lost:
                del forum_sources[s.id]
            sources.extend(lost)
        if participants or sources:
            logger.info(
                "MemoryStore(%s) reaped node %s: %d participants, %d sources",
                self.node_id, node_id, len(participants), len(sources),
            )
        return Reaped(node_id, participants, sources, registered)
