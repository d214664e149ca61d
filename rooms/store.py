"""The store seam: what every store backend must do, as its three jobs.

- `StateStore`: the forums' shared runtime state (participants, sources,
  program state, chat), every change atomic across nodes.
- `EventBus`: room events to every node (publish / subscribe), and
  request/reply to one node (`request` / `serve`), which carries an
  operator's command to the node that owns the forum.
- `NodeLiveness`: which nodes are alive (heartbeats with a TTL, and each
  node's public URL), reaping what dead ones held; and `ForumLeases`, one
  owner per forum (a lease with a TTL that only its owner renews or
  releases; rooms/forum_ownership.py decides when to take and give up).

Callers ask for the job they use (rooms/forum_ownership.py takes
`ForumLeases`, rooms/forum_forwarding.py an `EventBus`). One node alone uses
`MemoryStore` (rooms/memory_store.py); several nodes share a `RedisStore`
(signaling/redis_store.py); both do all three. Like python-socketio's
managers, the `Store` base class holds the protocol (validation, the
compare-and-set loop, the local fan-out of events to subscribers, the
request/reply bookkeeping) and the backends add only storage and transport.

Capacity rule (`admit`): a forum's capacity counts its *viewers* only.
Speakers, operators and admins are always admitted to a forum they hold a
grant for, so a full forum never locks out the people who run it; they
do not take a viewer's seat either.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import enum
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, Union

from rooms.chat import MODERATION_FIELDS, ChatMessage
from rooms.errors import RoomError
from rooms.events import RoomEvent
from rooms.models import MediaSource, Participant, ProgramState, Role, SourceKind

logger = logging.getLogger(__name__)

T = TypeVar("T")

# fields update_program accepts, with the types they must have
PROGRAM_FIELDS: dict[str, tuple[type, ...]] = {
    "program": (str, type(None)),
    "preview": (str, type(None)),
    "slate": (bool,),
    "manual": (bool,),
}

# a compare-and-set that keeps losing means something is wrong; give up
CAS_ATTEMPTS = 500


def counts_against_capacity(role: Role) -> bool:
    """Only viewers take seats (see the module docstring)."""
    return role is Role.VIEWER


# the forum's own inputs (one slate, one venue feed) are not bounded: they
# are made by the node, one per forum, never by a request
UNBOUNDED_SOURCE_KINDS = frozenset({SourceKind.SLATE, SourceKind.VENUE})


def counts_against_source_bounds(source: MediaSource) -> bool:
    return source.kind not in UNBOUNDED_SOURCE_KINDS


class Admission(enum.Enum):
    """What `admit` decided. Truthy only when admitted."""

    ADMITTED = "admitted"
    FULL = "full"  # the forum has `capacity` viewers
    HOLDER_FULL = "holder_full"  # the holder already has `seats_per_holder` seats

    def __bool__(self) -> bool:
        return self is Admission.ADMITTED


INSTANCE_SEPARATOR = "@"


def new_instance_id(name: str) -> str:
    """This process run's id under the node name `name` ("hall-1" ->
    "hall-1@3f9a0c2e"). Liveness and ownership are keyed by it, not by the
    name: a node restarted after a crash under the same name is a new
    instance, and what the crashed one held can be told apart and reaped."""
    return f"{name}{INSTANCE_SEPARATOR}{secrets.token_hex(4)}"


def instance_name(node_id: str) -> str:
    """The node name of an instance id (an id without an instance part is its own name)."""
    return node_id.rsplit(INSTANCE_SEPARATOR, 1)[0]


class Counts(NamedTuple):
    viewers: int  # the participants that count against capacity
    total: int  # everyone connected to the forum


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    load: dict[str, Any]  # whatever the node reports (viewers, cpu, ...)
    last_seen: float  # unix seconds, the node's own clock
    public_url: str = ""  # where clients reach it (publishers are redirected there); "" unknown


# a value that crosses the bus as JSON
Json = Union[str, int, float, bool, None, list["Json"], dict[str, "Json"]]
JsonObject = dict[str, Json]


@dataclass(frozen=True)
class BusRequest:
    """One request over the bus to one node: `kind` names the command,
    `body` its plain-data arguments; `sender` is the asking node's id."""

    kind: str
    body: JsonObject
    sender: str


# a node's answer to requests: a JSON object, or RoomError (its code and
# message travel back to the asker); anything else comes back as "internal"
RequestHandler = Callable[[BusRequest], Awaitable[JsonObject]]


@dataclass(frozen=True)
class Reaped:
    """What `reap_node` removed."""

    node_id: str
    participants: list[Participant]
    sources: list[MediaSource]
    registered: bool = True  # False: the node was not in the registry (already reaped)


@dataclass(frozen=True)
class Swap(Generic[T]):
    """A value read for a compare-and-set, with the backend's opaque token
    that proves nothing changed since the read."""

    value: T
    token: Any


class Subscription:
    """One subscriber's bounded queue of events; async-iterate it.

    The iteration ends when the subscription or its store is closed. A
    slow subscriber loses its oldest events (with a warning), it never
    blocks a publisher.
    """

    _CLOSED = object()

    def __init__(self, fanout: EventFanout, maxsize: int) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self._closed = False
        self.dropped = 0

    def _put(self, item: object) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()  # drop the oldest
                if item is not self._CLOSED:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        logger.warning(
                            "Subscription(%x) is slow: dropped %d events so far",
                            id(self), self.dropped,
                        )

    def close(self) -> None:
        """Stop receiving; a pending or later `__anext__` ends the loop."""
        if not self._closed:
            self._closed = True
            self._fanout._remove(self)
            self._put(self._CLOSED)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RoomEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is self._CLOSED:
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    async def get(self, timeout: float) -> RoomEvent:
        """The next event, or TimeoutError; StopAsyncIteration if closed."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def drain(self) -> list[RoomEvent]:
        """The events queued right now, without waiting."""
        events: list[RoomEvent] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is self._CLOSED:
                self._put(item)  # keep the end marker for the iterator
                break
            events.append(item)  # type: ignore[arg-type]
        return events

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventFanout:
    """Hands each event to every local subscription, without awaiting."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.queue_size)
        self._subscriptions.add(sub)
        return sub

    def deliver(self, event: RoomEvent) -> None:
        for sub in list(self._subscriptions):
            sub._put(event)

    def close_all(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def __len__(self) -> int:
        return len(self._subscriptions)


class StateStore(Protocol):
    """The forums' shared runtime state (the Store's first job)."""

    async def admit(self, participant: Participant, capacity: int, seats_per_holder: int = 0) -> Admission: ...
    async def remove_participant(self, forum_id: str, participant_id: str) -> Participant | None: ...
    async def participants(self, forum_id: str) -> list[Participant]: ...
    async def get_participant(self, forum_id: str, participant_id: str) -> Participant | None: ...
    async def counts(self, forum_id: str) -> Counts: ...
    async def put_source(self, source: MediaSource) -> MediaSource | None: ...
    async def add_source(self, source: MediaSource, per_forum: int = 0, per_holder: int = 0) -> Admission: ...
    async def remove_source(self, forum_id: str, source_id: str) -> MediaSource | None: ...
    async def sources(self, forum_id: str) -> list[MediaSource]: ...
    async def get_source(self, forum_id: str, source_id: str) -> MediaSource | None: ...
    async def get_program(self, forum_id: str) -> ProgramState: ...
    async def update_program(
        self, forum_id: str, expected_version: int | None = None, **changes: Any
    ) -> ProgramState: ...
    async def append_message(self, message: ChatMessage) -> None: ...
    async def messages(self, forum_id: str, limit: int = 50) -> list[ChatMessage]: ...
    async def update_message(self, forum_id: str, message_id: str, **changes: bool) -> ChatMessage: ...


class EventBus(Protocol):
    """Events to every node, requests to one (the Store's second job)."""

    @property
    def node_id(self) -> str: ...
    async def publish(self, event: RoomEvent) -> None: ...
    def subscribe(self) -> Subscription: ...
    def serve(self, handler: RequestHandler | None) -> None: ...
    async def request(self, node_id: str, kind: str, body: JsonObject, timeout_s: float) -> JsonObject: ...


class NodeLiveness(Protocol):
    """Which nodes are alive and where (the Store's third job)."""

    async def heartbeat(self, node_id: str, load: dict[str, Any], ttl_s: float, public_url: str = "") -> None: ...
    async def nodes(self) -> list[NodeInfo]: ...
    async def dead_nodes(self) -> list[str]: ...
    async def previous_instances(self, node_id: str) -> list[str]: ...
    async def reap_node(self, node_id: str) -> Reaped: ...


class ForumLeases(Protocol):
    """One owner per forum: a lease that expires unless its owner renews
    it. `owner` is a node's instance id; TTLs in ms. Every call is atomic
    across nodes (Redis: SET NX PX and compare-and-pexpire /
    compare-and-del scripts; the memory store on its injected clock)."""

    async def acquire_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool: ...
    async def renew_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool: ...
    async def release_lease(self, forum_id: str, owner: str) -> bool: ...
    async def lease_owner(self, forum_id: str) -> str | None: ...


class Store(abc.ABC):
    """Shared runtime state of the forums, and the event bus between nodes:
    one class per backend doing the three jobs above (`StateStore`,
    `EventBus`, `NodeLiveness` with `ForumLeases`).

    All methods are coroutines, safe to call concurrently; the ones marked
    atomic stay correct when many nodes call them at once.
    """

    def __init__(self, node_id: str, queue_size: int = 1000) -> None:
        self.node_id = node_id
        self._fanout = EventFanout(queue_size)
        self._handler: RequestHandler | None = None
        self._pending: dict[str, asyncio.Future[JsonObject]] = {}  # request id -> its reply
        self._serving: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; after it returns, published events reach this node."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect and end every subscription. Idempotent."""

    # --- participants --------------------------------------------------------

    @abc.abstractmethod
    async def admit(self, participant: Participant, capacity: int, seats_per_holder: int = 0) -> Admission:
        """Atomic: add the participant unless it would take a seat (a viewer)
        and the forum already has `capacity` of them (FULL), or its holder
        (`participant.holder`, when not "") already holds `seats_per_holder`
        seats in the forum (HOLDER_FULL; 0: no such bound). Admitting an id
        that is already there replaces its record and keeps its seat."""

    @abc.abstractmethod
    async def remove_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        """Remove and return the participant, None if it was not there."""

    @abc.abstractmethod
    async def participants(self, forum_id: str) -> list[Participant]:
        """Every participant of the forum, on every node, by join time."""

    async def get_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        for participant in await self.participants(forum_id):
            if participant.id == participant_id:
                return participant
        return None

    @abc.abstractmethod
    async def counts(self, forum_id: str) -> Counts: ...

    # --- sources -------------------------------------------------------------

    @abc.abstractmethod
    async def put_source(self, source: MediaSource) -> MediaSource | None:
        """Add or replace a source; return the record it replaced."""

    @abc.abstractmethod
    async def add_source(self, source: MediaSource, per_forum: int = 0, per_holder: int = 0) -> Admission:
        """Atomic: put the source unless it is new, counts against the
        bounds (`counts_against_source_bounds`) and the forum already has
        `per_forum` such sources (FULL) or its holder `per_holder` of them
        (HOLDER_FULL). 0 lifts a bound; replacing an existing id always
        succeeds."""

    @abc.abstractmethod
    async def remove_source(self, forum_id: str, source_id: str) -> MediaSource | None: ...

    @abc.abstractmethod
    async def sources(self, forum_id: str) -> list[MediaSource]:
        """The forum's sources, by id."""

    async def get_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        for source in await self.sources(forum_id):
            if source.id == source_id:
                return source
        return None

    # --- program state -------------------------------------------------------

    async def get_program(self, forum_id: str) -> ProgramState:
        return (await self._read_program(forum_id)).value

    async def update_program(
        self, forum_id: str, expected_version: int | None = None, **changes: Any
    ) -> ProgramState:
        """Atomic compare-and-set. With `expected_version`, refuse with
        RoomError("conflict") unless the state is still at that version;
        with None, apply on top of whatever is current. Each change bumps
        the version by one; changes that change nothing bump nothing.
        Setting `program` alone also sets `slate` (on when program is None).
        """
        for name, value in changes.items():
            allowed = PROGRAM_FIELDS.get(name)
            if allowed is None:
                raise RoomError("invalid", f"program state has no field {name!r}")
            if not isinstance(value, allowed):
                raise RoomError("invalid", f"program field {name!r} cannot be {value!r}")
        if "program" in changes and "slate" not in changes:
            changes["slate"] = changes["program"] is None
        for _ in range(CAS_ATTEMPTS):
            current = await self._read_program(forum_id)
            state = current.value
            if expected_version is not None and state.version != expected_version:
                raise RoomError(
                    "conflict",
                    f"forum {forum_id} changed meanwhile (now at version {state.version}, "
                    f"not {expected_version}); reload and try again",
                )
            new = dataclasses.replace(state, **changes)
            if new == state:
                return state
            new = dataclasses.replace(new, version=state.version + 1)
            if await self._swap_program(forum_id, current.token, new):
                return new
        raise RoomError("conflict", f"forum {forum_id} is changing too fast; try again")

    @abc.abstractmethod
    async def _read_program(self, forum_id: str) -> Swap[ProgramState]:
        """The current state (version 0 defaults if none) and a CAS token."""

    @abc.abstractmethod
    async def _swap_program(self, forum_id: str, token: Any, new: ProgramState) -> bool:
        """Atomic: store `new` only if the state is still what `token` read."""

    # --- chat ----------------------------------------------------------------

    @abc.abstractmethod
    async def append_message(self, message: ChatMessage) -> None:
        """Append to the forum's history (the oldest beyond the backend's
        bound are dropped)."""

    @abc.abstractmethod
    async def messages(self, forum_id: str, limit: int = 50) -> list[ChatMessage]:
        """The latest `limit` messages, oldest first, hidden ones included."""

    async def update_message(self, forum_id: str, message_id: str, **changes: bool) -> ChatMessage:
        """Atomic: set moderation flags (hidden, answered, pinned)."""
        for name, value in changes.items():
            if name not in MODERATION_FIELDS or not isinstance(value, bool):
                raise RoomError("invalid", f"cannot set {name!r} on a chat message")
        # moderation flags only, each a bool (checked just above); as Any, since
        # mypy's dataclass plugin would match **dict[str, bool] against every field
        flags: dict[str, Any] = changes
        for _ in range(CAS_ATTEMPTS):
            current = await self._read_message(forum_id, message_id)
            if current is None:
                raise RoomError("not_found", f"no message {message_id!r} in forum {forum_id}")
            new = dataclasses.replace(current.value, **flags)
            if new == current.value or await self._swap_message(current.token, new):
                return new
        raise RoomError("conflict", f"message {message_id!r} is changing too fast; try again")

    @abc.abstractmethod
    async def _read_message(self, forum_id: str, message_id: str) -> Swap[ChatMessage] | None: ...

    @abc.abstractmethod
    async def _swap_message(self, token: Any, new: ChatMessage) -> bool:
        """Atomic: store `new` only if the message is still what `token` read
        (and still kept)."""

    # --- pub/sub -------------------------------------------------------------

    async def publish(self, event: RoomEvent) -> None:
        """Send to every node's subscribers, this node's included. The event
        is stamped with this node's id unless it already carries one."""
        if not event.node_id:
            event = dataclasses.replace(event, node_id=self.node_id)
        await self._publish(event)

    @abc.abstractmethod
    async def _publish(self, event: RoomEvent) -> None:
        """Transport hook: get `event` to every node's `_fanout.deliver`."""

    def subscribe(self) -> Subscription:
        """A new subscription; it receives every event published from now on
        (call `close()` or leave its `async with` to stop)."""
        return self._fanout.subscribe()

    # --- request/reply ---------------------------------------------------------

    def serve(self, handler: RequestHandler | None) -> None:
        """Answer the requests sent to this node with `handler` (one per
        node; None: stop answering, askers then get "unavailable")."""
        self._handler = handler

    async def request(self, node_id: str, kind: str, body: JsonObject, timeout_s: float) -> JsonObject:
        """Ask node `node_id` (an instance id) and return its answer.
        Raises the RoomError the handler raised (same code and message),
        RoomError("unavailable") when no such node listens or it does not
        answer within `timeout_s` seconds. A request to this node itself
        calls the local handler (no transport)."""
        if node_id == self.node_id:
            return await self._answer_locally(BusRequest(kind, body, self.node_id), timeout_s)
        request_id = uuid.uuid4().hex
        reply: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            message: JsonObject = {"id": request_id, "from": self.node_id, "kind": kind, "body": body}
            if not await self._send_request(node_id, message):
                raise RoomError("unavailable", f"node {node_id} is not listening (gone, or never started)")
            try:
                return await asyncio.wait_for(reply, timeout_s)
            except asyncio.TimeoutError:
                raise RoomError(
                    "unavailable", f"node {node_id} did not answer {kind!r} within {timeout_s:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)

    async def _answer_locally(self, request: BusRequest, timeout_s: float) -> JsonObject:
        try:
            return await asyncio.wait_for(self._handle(request), timeout_s)
        except asyncio.TimeoutError:
            raise RoomError(
                "unavailable", f"node {self.node_id} did not answer {request.kind!r} within {timeout_s:g} s"
            ) from None

    async def _handle(self, request: BusRequest) -> JsonObject:
        """The handler's answer; its RoomError as is, any other failure as
        RoomError("internal") (logged here, never sent: it may say too much)."""
        handler = self._handler
        if handler is None:
            raise RoomError("unavailable", f"node {self.node_id} does not answer requests")
        try:
            return await handler(request)
        except RoomError:
            raise
        except Exception:
            logger.exception("Store(%s) failed answering %r from %s", self.node_id, request.kind, request.sender)
            raise RoomError("internal", f"node {self.node_id} failed answering {request.kind!r}") from None

    @abc.abstractmethod
    async def _send_request(self, node_id: str, message: JsonObject) -> bool:
        """Transport hook: get `message` to node `node_id`'s `_on_request`;
        False when no such node listens."""

    @abc.abstractmethod
    async def _send_reply(self, node_id: str, message: JsonObject) -> None:
        """Transport hook: get `message` to node `node_id`'s `_on_reply`."""

    def _on_request(self, message: JsonObject) -> None:
        """A request arrived: answer it in a task of its own (the transport's
        listener never waits for a handler)."""
        task = asyncio.get_running_loop().create_task(self._reply_to(message))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _reply_to(self, message: JsonObject) -> None:
        request_id, sender, kind, body = message.get("id"), message.get("from"), message.get("kind"), message.get("body")
        if not (isinstance(request_id, str) and isinstance(sender, str) and isinstance(kind, str)
                and isinstance(body, dict)):
            # its fields' names only: a body may hold a secret (a restream's stream key)
            logger.warning("Store(%s) ignored a malformed request (fields %s)", self.node_id, sorted(message))
            return
        answer: JsonObject
        try:
            answer = {"id": request_id, "result": await self._handle(BusRequest(kind, body, sender))}
        except RoomError as exc:
            answer = {"id": request_id, "error": {"code": exc.code, "message": exc.message}}
        try:
            await self._send_reply(sender, answer)
        except RoomError as exc:
            logger.warning("Store(%s) could not reply to %s: %s", self.node_id, sender, exc.message)

    def _on_reply(self, message: JsonObject) -> None:
        reply = self._pending.get(str(message.get("id")))
        if reply is None or reply.done():
            return  # the asker gave up (timeout) or a stranger's message
        error = message.get("error")
        result = message.get("result")
        if isinstance(error, dict):
            reply.set_exception(RoomError(str(error.get("code", "internal")), str(error.get("message", ""))))
        elif isinstance(result, dict):
            reply.set_result(result)
        else:
            reply.set_exception(RoomError("internal", "a malformed reply came back over the bus"))

    def _stop_serving(self) -> None:
        for task in list(self._serving):
            task.cancel()
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(RoomError("unavailable", f"store {self.node_id} stopped"))

    # --- forum leases ----------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        """Atomic: take the forum's lease for `ttl_ms` if nobody holds it
        (or its holder's lease expired); true too if `owner` holds it
        already, which renews it. False: another owner holds it."""

    @abc.abstractmethod
    async def renew_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        """Atomic: extend the lease to `ttl_ms` from now only if `owner`
        still holds it; false if it expired or another took it."""

    @abc.abstractmethod
    async def release_lease(self, forum_id: str, owner: str) -> bool:
        """Atomic: drop the lease only if `owner` holds it (true then)."""

    @abc.abstractmethod
    async def lease_owner(self, forum_id: str) -> str | None:
        """Who holds the forum's lease now; None if nobody (or expired)."""

    # --- nodes ---------------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, load: dict[str, Any], ttl_s: float, public_url: str = "") -> None:
        """Register the node as alive for `ttl_s` more seconds, reachable
        by clients at `public_url`."""

    @abc.abstractmethod
    async def nodes(self) -> list[NodeInfo]:
        """Nodes whose last heartbeat has not expired, by id."""

    @abc.abstractmethod
    async def dead_nodes(self) -> list[str]:
        """Nodes that heart-beat once, expired, and were not reaped yet."""

    async def previous_instances(self, node_id: str) -> list[str]:
        """Every other registered instance of `node_id`'s name, live or
        expired: a process starting under a name is that name's only
        instance, so these are crashed runs (sorted)."""
        name = instance_name(node_id)
        known = {info.node_id for info in await self.nodes()} | set(await self.dead_nodes())
        return sorted(other for other in known if other != node_id and instance_name(other) == name)

    @abc.abstractmethod
    async def reap_node(self, node_id: str) -> Reaped:
        """Atomic: forget the node and remove the participants and sources
        it held, whether or not it is still alive (the caller decides).
        Two nodes reaping at once split nothing: one gets it all."""


def _does_every_job(store: Store) -> tuple[StateStore, EventBus, NodeLiveness, ForumLeases]:
    """mypy checks here that a Store is each of its jobs' Protocols."""
    return store, store, store, store
