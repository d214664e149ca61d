"""socket.io: how browsers (speak and watch pages, operators' tools) talk to
this node. The protocol is written down in docs/protocol.md.

Each connection is a Session actor: socket.io handlers only validate the
payload (signaling/protocol.py) and post the typed request into the
session's inbox; one task per session applies requests in order and owns
every piece of per-connection state (grant, participant, published
sources, viewers). Disconnect posts a close, which leaves the forum,
unpublishes and stops the viewers after whatever was already queued.

Room events reach clients through socket.io rooms named `forum:<id>`.
With Redis, every node sees every room event (the store fans them out),
and the AsyncRedisManager delivers an emit to every node's clients; so a
node emits only the events that originated on it (event.node_id), and each
client gets each push exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web

from rooms import events as room_events
from rooms.chat import ChatKind
from rooms.errors import RoomError
from rooms.forum_ownership import Owner
from rooms.placement import Placement
from rooms.models import Event, Participant, Role, SourceKind
from rooms.tokens import Grant, TokenService
from signaling import protocol
from signaling.app_keys import EVENT, ICE_SERVERS, ROOMS, SETTINGS, SIO, TOKENS
from signaling.media_bridge import BRIDGE
from signaling.edges import edge_for
from signaling.placement import elsewhere
from signaling.ownership import forum_owner, live_redirect_url
from signaling.push_coalescer import PushCoalescer
from streaming.media_bridge import MediaBridge

if TYPE_CHECKING:
    from rooms.service import RoomService
    from rooms.store import Subscription

logger = logging.getLogger(__name__)

INBOX_LIMIT = 32  # requests queued per connection; more is a misbehaving client
REQUEST_TIMEOUT = 30.0  # an SDP exchange gathers ICE; nothing legitimate takes longer
CLOSE_TIMEOUT = 10.0
MAX_MESSAGE_BYTES = 256 * 1024  # engine.io drops bigger packets; SDP is capped at 64 KiB
PING_INTERVAL = 20  # engine.io keepalive: a silent peer is dropped after ~40 s
PING_TIMEOUT = 20
VIEWER_PUSH_INTERVAL_S = 1.0  # a forum's room hears its viewer count at most once a second (push_coalescer.py)
CLIENT_EVENTS = ("join", "publish", "unpublish", "watch", "unwatch", "leave", "chat", "chat_history", "moderate")
CHAT_HISTORY = 100  # messages a page gets when it (re)joins


def forum_room(forum_id: str) -> str:
    return f"forum:{forum_id}"


def operators_room(forum_id: str) -> str:
    """The forum's operators (and admins): the Q&A queue and every chat
    message with its moderation state go here, not to the guests."""
    return f"operators:{forum_id}"


def backstage_room(forum_id: str) -> str:
    """The forum's speakers and operators: the backstage channel
    (`chat` kind "backstage") is pushed here, never to the guests."""
    return f"backstage:{forum_id}"


def new_viewer_id(seq: int) -> str:
    """An id a client can hand back (`unwatch`) that passes the protocol's
    id check: socket.io sids may start with '-' or hold '_', so not built
    from them. Unique on the node (the media plane keys viewers by it)."""
    return f"w{seq}-{uuid.uuid4().hex[:16]}"

class _Close:
    """Inbox marker: clean up and stop."""


@dataclass(frozen=True)
class _MediaEnded:
    """Inbox message: a viewer or publish of this connection ended by
    itself (ICE never completed, the connection was lost)."""

    kind: str  # "viewer" or "source"
    peer_id: str


Ack = dict[str, Any]
Emit = Callable[[str, Any], Awaitable[None]]


class Session:
    """One socket.io connection. Only its own task touches its state."""

    def __init__(self, sid: str, grant: Grant, deps: "_Deps", emit: Emit) -> None:
        self.sid = sid
        self.grant = grant
        self.participant: Participant | None = None
        self._deps = deps
        self._emit = emit
        self._sources: set[str] = set()
        self._viewers: dict[str | None, str] = {}  # source_id (None: program) -> viewer id
        self._viewer_seq = 0
        self._inbox: asyncio.Queue[tuple[Any, asyncio.Future[Ack]]] = asyncio.Queue(INBOX_LIMIT)
        self._task = asyncio.create_task(self._run(), name=f"session-{sid}")

    @property
    def forum_id(self) -> str | None:
        return self.participant.forum_id if self.participant else None

    async def call(self, request: protocol.Request) -> Ack:
        """Queue a request and wait for its ack (or an error ack)."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        try:
            self._inbox.put_nowait((request, future))
        except asyncio.QueueFull:
            return RoomError("rate_limited", "too many requests at once; wait for the answers").to_json()
        try:
            return await asyncio.wait_for(asyncio.shield(future), REQUEST_TIMEOUT)
        except TimeoutError:
            return RoomError("unavailable", "the server took too long to answer; try again").to_json()

    async def close(self) -> None:
        """Clean up after the queued requests; bounded, idempotent."""
        if self._task.done() or asyncio.current_task() is self._task:
            return
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        try:
            self._inbox.put_nowait((_Close(), future))
        except asyncio.QueueFull:
            self._task.cancel()  # a flooded inbox: cleanup runs in the task's finally
        try:
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # --- the actor loop -------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                timeout = max(self.grant.expires_at - self._deps.now(), 0.0)
                try:
                    request, future = await asyncio.wait_for(self._inbox.get(), timeout)
                except TimeoutError:
                    await self._expired()
                    return
                if isinstance(request, _Close):
                    future.set_result({})
                    return
                if isinstance(request, _MediaEnded):
                    await self._media_ended(request)
                    future.set_result({})
                    continue
                ack = await self._answer(request)
                if not future.done():
                    future.set_result(ack)
        finally:
            await self._cleanup()
            self._fail_pending()

    async def _answer(self, request: protocol.Request) -> Ack:
        try:
            return await self._dispatch(request)
        except RoomError as exc:
            return exc.to_json()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Session(%s): %r failed", self.sid, request)
            return RoomError("internal", "the server failed on this request; it has been logged").to_json()

    async def _dispatch(self, request: protocol.Request) -> Ack:
        match request:
            case protocol.JoinRequest():
                return await self._join(request)
            case protocol.PublishRequest():
                return await self._publish(request)
            case protocol.UnpublishRequest():
                return await self._unpublish(request)
            case protocol.WatchRequest():
                return await self._watch(request)
            case protocol.UnwatchRequest():
                return await self._unwatch(request)
            case protocol.LeaveRequest():
                await self._leave()
                return {"ok": True}
            case protocol.ChatRequest():
                return await self._chat(request)
            case protocol.ChatHistoryRequest():
                return await self._chat_history(request)
            case protocol.ModerateRequest():
                return await self._moderate(request)
        raise RoomError("invalid", f"unknown request {type(request).__name__}")

    # --- handlers -------------------------------------------------------------

    def _known_forum(self, forum_id: str) -> None:
        if self._deps.event.forum(forum_id) is None:
            raise RoomError("not_found", f"there is no forum {forum_id!r} in this event")

    def _joined(self, forum_id: str) -> Participant:
        if self.participant is None:
            raise RoomError("not_joined", "join the forum first")
        if self.participant.forum_id != forum_id:
            raise RoomError(
                "not_joined", f"this connection is in forum {self.participant.forum_id!r}, "
                f"not {forum_id!r}: leave it first")
        return self.participant

    async def _join(self, request: protocol.JoinRequest) -> Ack:
        forum_id = request.forum_id
        self._known_forum(forum_id)
        self.grant.require(forum_id, Role.VIEWER)
        if self.participant is not None and self.participant.forum_id != forum_id:
            raise RoomError("conflict", f"already in forum {self.participant.forum_id!r}: leave it first")
        rooms = self._deps.rooms
        if self.participant is None:
            participant_id = "p-" + uuid.uuid4().hex[:12]
            self.participant = await rooms.join(forum_id, self.grant, participant_id, self.grant.name)
            await self._deps.enter_room(self.sid, forum_room(forum_id))
            if self.grant.allows(forum_id, Role.OPERATOR):
                await self._deps.enter_room(self.sid, operators_room(forum_id))
            if self.grant.allows(forum_id, Role.SPEAKER):
                await self._deps.enter_room(self.sid, backstage_room(forum_id))
        forum = self._deps.event.forum(forum_id)
        assert forum is not None
        sources = await rooms.sources(forum_id)
        program = await rooms.program(forum_id)
        return {
            "forum": protocol.forum_json(forum),
            "participant": protocol.participant_json(self.participant),
            "program": protocol.program_json(program, sources),
            "sources": [protocol.source_json(s) for s in sources],
            "viewers": protocol.counts_json(forum_id, await rooms.viewer_count(forum_id)),
            "expires_at": self.grant.expires_at,
            # RTCConfiguration.iceServers for this client's peers (TURN credentials expire)
            "ice_servers": [s.to_json() for s in self._deps.ice_servers.for_holder(self.grant.subject)],
        }

    async def _publish(self, request: protocol.PublishRequest) -> Ack:
        self._known_forum(request.forum_id)
        self.grant.require(request.forum_id, Role.SPEAKER)
        participant = self._joined(request.forum_id)
        owner = await self._deps.forum_owner(request.forum_id)
        if owner is not None:
            # another node hosts the forum: sources connect to its origin, the client publishes there
            return _moved(request.forum_id, await self._deps.owner_url(owner, "/"), "publish")
        published = await self._deps.bridge().publish(
            request.forum_id, self.grant, participant.name, participant.id, request.sdp)
        self._sources.add(published.source_id)
        return {"source_id": published.source_id, "sdp": published.answer_sdp}

    async def _unpublish(self, request: protocol.UnpublishRequest) -> Ack:
        """End a publish: this connection's own, or (operators of the forum)
        another speaker's live source held by this node, the rule WHIP's
        DELETE applies too."""
        if request.source_id in self._sources:
            self._sources.discard(request.source_id)
            await self._deps.bridge().unpublish(request.source_id)
            return {"ok": True}
        forum_id = self.forum_id
        found = None
        if forum_id is not None:
            found = next((s for s in await self._deps.rooms.sources(forum_id) if s.id == request.source_id), None)
        if forum_id is None or found is None or found.kind is not SourceKind.LIVE:
            raise RoomError("not_found", f"this forum has no live source {request.source_id!r}")
        self.grant.require(forum_id, Role.OPERATOR)  # someone else's publish: operators only
        bridge = self._deps.bridge()
        if not bridge.owns(found.id):
            raise RoomError("unavailable", "that source is published through another node; "
                            "end it from a connection to that node")
        await bridge.end_source(found.id, RoomError("ended_by_operator",
                                                    f"{self.grant.name} (operator) ended this publish"))
        return {"ok": True}

    async def _watch(self, request: protocol.WatchRequest) -> Ack:
        self._known_forum(request.forum_id)
        # a named source is a preview tile: operators only
        needed = Role.OPERATOR if request.source_id is not None else Role.VIEWER
        self.grant.require(request.forum_id, needed)
        self._joined(request.forum_id)
        owner = await self._deps.forum_owner(request.forum_id)
        if owner is not None and request.source_id is not None:
            # an operator's preview tile of one source: only its host has it
            return _moved(request.forum_id, await self._deps.owner_url(owner, "/"), "watch")
        if request.source_id is None and (better := await self._deps.elsewhere(request.forum_id)) is not None:
            return _moved(request.forum_id, better.url.rstrip("/") + "/", "watch")  # this node is full
        await self._deps.edge_for(request.forum_id, owner)  # the program: through this node's pull
        bridge = self._deps.bridge()
        previous = self._viewers.pop(request.source_id, None)
        if previous is not None:  # a re-watch (ICE failed, page retried) replaces the old one
            await bridge.stop_watching(previous)
        self._viewer_seq += 1
        viewer_id = new_viewer_id(self._viewer_seq)
        answer = await bridge.watch(request.forum_id, viewer_id, request.sdp, request.source_id)
        self._viewers[request.source_id] = viewer_id
        return {"viewer_id": viewer_id, "sdp": answer}

    async def _unwatch(self, request: protocol.UnwatchRequest) -> Ack:
        keys = [key for key, viewer in self._viewers.items() if viewer == request.viewer_id]
        if not keys:
            raise RoomError("not_found", f"this connection has no viewer {request.viewer_id!r}")
        del self._viewers[keys[0]]
        await self._deps.bridge().stop_watching(request.viewer_id)
        return {"ok": True}

    async def _leave(self) -> None:
        """Stop viewers, unpublish, leave the forum. Safe to repeat."""
        bridge = self._deps.bridge_or_none()
        viewers, self._viewers = list(self._viewers.values()), {}
        sources, self._sources = list(self._sources), set()
        if bridge is not None:
            for viewer_id in viewers:
                await bridge.stop_watching(viewer_id)
            for source_id in sources:
                await bridge.unpublish(source_id)
        participant, self.participant = self.participant, None
        if participant is not None:
            with contextlib.suppress(RoomError):
                await self._deps.rooms.leave(participant.forum_id, participant.id)
            with contextlib.suppress(Exception):
                await self._deps.leave_room(self.sid, forum_room(participant.forum_id))
            with contextlib.suppress(Exception):
                await self._deps.leave_room(self.sid, operators_room(participant.forum_id))
            with contextlib.suppress(Exception):
                await self._deps.leave_room(self.sid, backstage_room(participant.forum_id))

    async def _chat(self, request: protocol.ChatRequest) -> Ack:
        """A chat message (to everyone) or a question (to the operators'
        queue). rooms refuse too long (too_large), empty or control
        characters (invalid), too many a minute (rate_limited, saying when)."""
        participant = self._joined(request.forum_id)
        message = await self._deps.rooms.post_message(
            request.forum_id, self.grant, participant.id, request.text, request.kind)
        return {"message": protocol.message_json(message)}

    async def _chat_history(self, request: protocol.ChatHistoryRequest) -> Ack:
        self._joined(request.forum_id)
        messages = await self._deps.rooms.messages(request.forum_id, self.grant, CHAT_HISTORY)
        return {"messages": [protocol.message_json(m) for m in messages]}

    async def _moderate(self, request: protocol.ModerateRequest) -> Ack:
        self._known_forum(request.forum_id)
        message = await self._deps.rooms.moderate(
            request.forum_id, self.grant, request.message_id, request.action)
        return {"message": protocol.message_json(message)}

    def holds(self, kind: str, peer_id: str) -> bool:
        return peer_id in (self._viewers.values() if kind == "viewer" else self._sources)

    def post_media_ended(self, kind: str, peer_id: str) -> None:
        """Tell this connection (through its inbox) that one of its peers
        ended by itself."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait((_MediaEnded(kind, peer_id), future))

    async def _media_ended(self, ended: _MediaEnded) -> None:
        if ended.kind == "viewer":
            keys = [key for key, viewer in self._viewers.items() if viewer == ended.peer_id]
            if not keys:
                return
            del self._viewers[keys[0]]
        elif ended.peer_id in self._sources:
            self._sources.discard(ended.peer_id)
        else:
            return
        bridge = self._deps.bridge_or_none()
        why = bridge.end_reason(ended.peer_id) if bridge is not None else None
        why = why or RoomError("connection_lost", "the connection was lost")
        payload = {"viewer_id" if ended.kind == "viewer" else "source_id": ended.peer_id, **why.to_json()}
        with contextlib.suppress(Exception):
            await self._emit("media_ended", payload)

    async def _expired(self) -> None:
        error = RoomError("token_expired", "your invite has expired: ask the organizers for a new link")
        with contextlib.suppress(Exception):
            await self._emit("error", error.to_json())
        # from another task: disconnecting calls back into close(), which waits for this task
        self._deps.spawn(self._deps.disconnect(self.sid))

    async def _cleanup(self) -> None:
        try:
            await asyncio.wait_for(self._leave(), CLOSE_TIMEOUT)
        except Exception:
            logger.exception("Session(%s): cleanup failed", self.sid)

    def _fail_pending(self) -> None:
        while not self._inbox.empty():
            _, future = self._inbox.get_nowait()
            if not future.done():
                future.set_result(RoomError("gone", "the connection is closing").to_json())


class _Deps:
    """What sessions need from the node, resolved at startup."""

    def __init__(self, app: web.Application, sio: socketio.AsyncServer,
                 on_media_ended: Callable[[str, str], None]) -> None:
        self._app = app
        self._sio = sio
        self._on_media_ended = on_media_ended
        self._hooked: MediaBridge | None = None
        self.event: Event = app[EVENT]
        self.tokens: TokenService = app[TOKENS]
        self.rooms: RoomService = app[ROOMS]
        self.ice_servers = app[ICE_SERVERS]
        self._tasks: set[asyncio.Future[None]] = set()

    def now(self) -> float:
        return time.time()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forum_owner(self, forum_id: str) -> Owner | None:
        """None when this node hosts the forum, else its owner (signaling/ownership.py)."""
        return await forum_owner(self._app, forum_id)

    async def owner_url(self, owner: Owner, path: str) -> str:
        """The owner's URL for `path` once it answers (signaling/ownership.py live_redirect_url)."""
        return await live_redirect_url(self._app, owner, path)

    async def elsewhere(self, forum_id: str) -> Placement | None:
        """Where a new program viewer goes when this node is full (signaling/placement.py)."""
        return await elsewhere(self._app, forum_id)

    async def edge_for(self, forum_id: str, owner: Owner | None) -> None:
        """Serve the forum's program here (a pull of the owner's) when
        another node hosts it (signaling/edges.py)."""
        await edge_for(self._app, forum_id, owner)

    def bridge(self) -> MediaBridge:
        bridge = self.bridge_or_none()
        if bridge is None:
            raise RoomError("unavailable", "the media server is not running on this node")
        return bridge

    def bridge_or_none(self) -> MediaBridge | None:
        bridge = self._app.get(BRIDGE)
        if bridge is not None and self._hooked is not bridge:
            # first use: hear peers that end by themselves (the bridge is set up after us)
            self._hooked = bridge
            bridge.on_viewer_closed(lambda viewer_id: self._on_media_ended("viewer", viewer_id))
            bridge.on_source_ended(self._source_ended)
        return bridge

    async def _source_ended(self, source_id: str) -> None:
        self._on_media_ended("source", source_id)

    async def enter_room(self, sid: str, room: str) -> None:
        await self._sio.enter_room(sid, room)

    async def leave_room(self, sid: str, room: str) -> None:
        await self._sio.leave_room(sid, room)

    async def disconnect(self, sid: str) -> None:
        await self._sio.disconnect(sid)


def _moved(forum_id: str, url: str, what: str) -> Ack:
    """The `moved` error ack: the forum is hosted at `url` (the pages go there)."""
    return {"error": {"code": "moved", "url": url,
                      "message": f"forum {forum_id!r} is hosted by another node: {what} at {url}"}}


class SocketServer:
    """The socket.io handlers plus the room-event pump of this node."""

    def __init__(self, app: web.Application, sio: socketio.AsyncServer) -> None:
        self._app = app
        self._sio = sio
        self._sessions: dict[str, Session] = {}
        self._deps: _Deps | None = None
        self._pump: asyncio.Task[None] | None = None
        self._events: Subscription | None = None
        self._counts = PushCoalescer[tuple[int, int]](self._push_count, VIEWER_PUSH_INTERVAL_S, self._read_count)

    def register(self) -> None:
        self._sio.on("connect", self._on_connect)
        self._sio.on("disconnect", self._on_disconnect)
        parsers: dict[str, Callable[[Any], protocol.Request]] = {
            "join": protocol.parse_join,
            "publish": protocol.parse_publish,
            "unpublish": protocol.parse_unpublish,
            "watch": protocol.parse_watch,
            "unwatch": protocol.parse_unwatch,
            "leave": protocol.parse_leave,
            "chat": protocol.parse_chat,
            "chat_history": protocol.parse_chat_history,
            "moderate": protocol.parse_moderate,
        }
        for name, parser in parsers.items():
            self._sio.on(name, self._handler(name, parser))
        self._sio.on("*", self._on_unknown)

    async def start(self) -> None:
        self._deps = _Deps(self._app, self._sio, self._media_ended)
        # subscribe now, not in the task: no event between start and the first await is lost
        self._events = self._deps.rooms.events()
        self._pump = asyncio.create_task(self._pump_room_events(self._events), name="sio-room-events")

    async def stop(self) -> None:
        # disconnecting runs _on_disconnect, which closes each session
        await asyncio.gather(*(self._sio.disconnect(sid) for sid in list(self._sessions)),
                             return_exceptions=True)
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self._events is not None:
            self._events.close()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await self._counts.stop()

    def _media_ended(self, kind: str, peer_id: str) -> None:
        for session in list(self._sessions.values()):
            if session.holds(kind, peer_id):
                session.post_media_ended(kind, peer_id)

    def grant_of(self, sid: str) -> Grant | None:
        """The grant a live connection's token carries (for other event
        handlers on this server, e.g. the operators')."""
        session = self._sessions.get(sid)
        return session.grant if session is not None else None

    # --- connection -----------------------------------------------------------

    async def _on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        if self._deps is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "the server is starting", {"code": "unavailable", "message": "the server is starting"})
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            if token is not None and not isinstance(token, str):
                raise RoomError("token_invalid", "the token must be a string")
            if token is None and self._deps.event.public:
                grant = _guest_grant()  # a public event: watching needs no invite
            else:
                grant = self._deps.tokens.verify(token)
        except RoomError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_json()["error"]) from None

        async def emit(event: str, data: Any) -> None:
            await self._sio.emit(event, data, to=sid)

        self._sessions[sid] = Session(sid, grant, self._deps, emit)
        logger.info("socket %s connected as %s (%s)", sid, grant.name, grant.role.value)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            await session.close()
            logger.info("socket %s disconnected (%s)", sid, reason)

    def _handler(self, name: str, parser: Callable[[Any], protocol.Request]
                 ) -> Callable[..., Awaitable[Ack]]:
        async def handle(sid: str, *args: Any) -> Ack:
            session = self._sessions.get(sid)
            if session is None:
                return RoomError("gone", "this connection is closing").to_json()
            if len(args) > 1:
                return RoomError("invalid", f"{name}: send one payload object").to_json()
            try:
                request = parser(args[0] if args else None)
            except RoomError as exc:
                return exc.to_json()
            return await session.call(request)

        return handle

    async def _read_count(self, forum_id: str, counts: tuple[int, int]) -> tuple[int, int]:
        # read at send time: a push that waited out its interval (or came
        # from another node's slower coalescer) still carries the count now
        if self._deps is not None:
            with contextlib.suppress(Exception):
                return await self._deps.rooms.viewer_count(forum_id)
        return counts

    async def _push_count(self, forum_id: str, counts: tuple[int, int]) -> None:
        await self._sio.emit("viewers", protocol.counts_json(forum_id, counts), room=forum_room(forum_id))

    async def _on_unknown(self, event: str, sid: str, *args: Any) -> Ack:
        return RoomError("unknown_event", f"unknown event {event[:64]!r}: the events are listed in "
                         "docs/protocol.md").to_json()

    # --- room events -> socket.io rooms ----------------------------------------

    async def _pump_room_events(self, events: "Subscription") -> None:
        assert self._deps is not None
        rooms = self._deps.rooms
        node_id = rooms.node_id  # this run's instance id, which the store stamps events with
        async for event in events:
            if event.node_id and event.node_id != node_id:
                continue  # its origin node emits it, through the Redis manager to every node
            try:
                await self._push(rooms, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("pushing %s failed", type(event).__name__)

    async def _push(self, rooms: "RoomService", event: room_events.RoomEvent) -> None:
        forum_id = room_events.forum_of(event)
        if forum_id is None:
            return
        room = forum_room(forum_id)
        match event:
            case room_events.ProgramChanged():
                sources = await rooms.sources(forum_id)
                await self._sio.emit("program", protocol.program_json(event.state, sources), room=room)
            case room_events.PreviewChanged():
                sources = await rooms.sources(forum_id)
                await self._sio.emit("preview", protocol.program_json(event.state, sources), room=room)
            case room_events.ViewerCountChanged():
                self._counts.offer(forum_id, (event.viewers, event.total))
            case room_events.SourceAdded() | room_events.SourceUpdated() | room_events.SourceRemoved():
                sources = await rooms.sources(forum_id)
                await self._sio.emit("sources", {"forum_id": forum_id,
                                                 "sources": [protocol.source_json(s) for s in sources]},
                                     room=room)
            case room_events.ChatPosted() | room_events.ChatUpdated():
                message = event.message
                shown = protocol.message_json(message)
                await self._sio.emit("moderation", shown, room=operators_room(forum_id))
                if message.kind is ChatKind.BACKSTAGE:
                    # posted or changed (hidden): the speakers' and operators' pages update it
                    await self._sio.emit("backstage", shown, room=backstage_room(forum_id))
                elif message.public:
                    await self._sio.emit("chat_message", shown, room=room)
                elif isinstance(event, room_events.ChatUpdated):
                    # hidden, dismissed or unapproved: gone from every guest's page
                    await self._sio.emit("chat_removed", {"forum_id": forum_id, "id": message.id}, room=room)
            case _:
                pass  # participants are not part of this protocol yet


SOCKETS = web.AppKey("socket_server", SocketServer)
GUEST_TTL_S = 24 * 3600.0


def _guest_grant() -> Grant:
    return Grant(role=Role.VIEWER, forums=None, name="Guest",
                 subject="guest-" + uuid.uuid4().hex[:12], expires_at=time.time() + GUEST_TTL_S)


def _client_manager(app: web.Application) -> socketio.AsyncManager | None:
    redis_url = app[SETTINGS].redis_url
    if redis_url:
        return socketio.AsyncRedisManager(redis_url, channel="forumcast-sio")
    return None


async def _socketio_ctx(app: web.Application) -> AsyncIterator[None]:
    server = app[SOCKETS]
    await server.start()
    try:
        yield
    finally:
        await server.stop()  # already done by on_shutdown, unless startup failed


async def _socketio_shutdown(app: web.Application) -> None:
    # sessions unpublish and stop their viewers while the media plane still runs
    await app[SOCKETS].stop()
    # then close the transports, or aiohttp waits its shutdown timeout for open websockets
    sio = app[SIO]
    try:
        if sio.eio.sockets:
            await asyncio.wait_for(sio.eio.disconnect(), CLOSE_TIMEOUT)
        await sio.shutdown()
    except Exception:
        logger.exception("closing the socket.io transports failed")


def setup_socketio(app: web.Application) -> socketio.AsyncServer:
    """Attach the socket.io server to the app (before it starts) and
    register its cleanup context and shutdown hook. Needs EVENT, TOKENS and
    ROOMS from the contexts registered before it; the media bridge comes
    from setup_whip_whep and is looked up per request."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=_client_manager(app),
        cors_allowed_origins=None,  # None: same-origin pages only
        max_http_buffer_size=MAX_MESSAGE_BYTES,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)
    app[SIO] = sio
    server = SocketServer(app, sio)
    server.register()
    app[SOCKETS] = server
    app.cleanup_ctx.append(_socketio_ctx)
    app.on_shutdown.append(_socketio_shutdown)
    return sio
