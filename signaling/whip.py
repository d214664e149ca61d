"""WHIP (RFC 9725): encoders (OBS, ffmpeg's whip muxer, browser tools)
publish into a forum with one HTTP POST.

    POST   /whip/{forum_id}              offer in, 201 + answer + Location
    DELETE /whip/{forum_id}/{session_id} ends the publish
    OPTIONS on both                      CORS preflight
    PATCH  on the session                405: no trickle ICE, the answer
                                         carries every candidate
    GET    on the session                200 while it lasts
    (a session that ended by itself answers GET/PATCH/DELETE with 410
    and why: "ice_failed", "connection_lost")

A WHIP session is a participant of the forum (a speaker) that holds one
live source; the MediaBridge registers the source and follows its state.
Every refusal is JSON {"error": {"code", "message"}}. The helpers at the
top are shared with WHEP (signaling/whep.py), which has the same shape;
whep imports them and also holds `setup_whip_whep`, so this module never
imports whep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from rooms.errors import RoomError
from rooms.models import Role
from rooms.tokens import Grant
from signaling import protocol
from signaling.app_keys import EVENT, ICE_SERVERS, ROOMS, TOKENS
from signaling.ice_servers import IceServer
from signaling.http_api import bearer_token, error_json_response, malformed_request
from signaling.media_bridge import BRIDGE, setup_media_bridge
from signaling.ownership import forum_owner, live_redirect_url
from streaming.media_bridge import MediaBridge

if TYPE_CHECKING:
    from rooms.service import RoomService

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
CORS_HEADERS = {
    # tokens travel as Bearer headers, never cookies: any origin may call
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch",
    "Access-Control-Max-Age": "86400",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- shared HTTP edge helpers (WHIP and WHEP) ----------------------------------


def json_error(error: RoomError) -> web.Response:
    return error_json_response(error, dict(CORS_HEADERS))


def edge(handler: Handler) -> Handler:
    """Turn every refusal into JSON with CORS headers; an unexpected
    failure is a 500 with a generic message (the traceback goes to the log)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RoomError as exc:
            return json_error(exc)
        except HttpProcessingError as exc:
            return json_error(malformed_request(exc))
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return json_error(RoomError("internal", "internal server error; the details are in the server log"))

    return wrapped


def known_forum(request: web.Request) -> str:
    forum_id = protocol.check_forum_id(request.match_info["forum_id"])
    if request.app[EVENT].forum(forum_id) is None:
        raise RoomError("not_found", f"there is no forum {forum_id!r} in this event")
    return forum_id


async def read_offer(request: web.Request) -> str:
    """The SDP offer of a WHIP/WHEP POST: application/sdp (415), at most
    64 KiB (413), SDP-shaped (400)."""
    if request.content_type != SDP_TYPE:
        shown = request.content_type or "none"
        raise RoomError("unsupported_media_type",
                        f"the body must be {SDP_TYPE} (an SDP offer), not {shown}")
    if request.content_length is not None and request.content_length > protocol.MAX_SDP_BYTES:
        raise RoomError("too_large", f"the offer is {request.content_length} bytes; "
                        f"the limit is {protocol.MAX_SDP_BYTES}")
    # read to the end, but never more than the limit (a chunked body has no Content-Length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(16 * 1024):
        size += len(chunk)
        if size > protocol.MAX_SDP_BYTES:
            raise RoomError("too_large", f"the offer is over {protocol.MAX_SDP_BYTES} bytes")
        chunks.append(chunk)
    return protocol.check_sdp(b"".join(chunks), "the offer")


def sdp_created(answer: str, location: str, ice_servers: list[IceServer] | None = None) -> web.Response:
    """201 with the answer; one `Link: rel="ice-server"` per STUN/TURN
    server the client may use (RFC 9725 section 4.6)."""
    headers: CIMultiDict[str] = CIMultiDict(CORS_HEADERS)
    headers["Location"] = location
    headers["Content-Type"] = SDP_TYPE
    for server in ice_servers or ():
        headers.add("Link", server.link_header())
    return web.Response(status=201, text=answer, headers=headers)


async def preflight(request: web.Request) -> web.Response:
    """204. With a valid Bearer token (not a browser's CORS preflight, which
    sends none) also the Link rel="ice-server" headers, so a client that
    gathers before it POSTs can use TURN (RFC 9725 section 4.6); a missing
    or bad token just gets none."""
    headers: CIMultiDict[str] = CIMultiDict(CORS_HEADERS)
    headers["Accept-Post"] = SDP_TYPE
    try:
        grant = request.app[TOKENS].verify(bearer_token(request))
    except RoomError:
        grant = None
    if grant is not None:
        for server in request.app[ICE_SERVERS].for_holder(grant.subject):
            headers.add("Link", server.link_header())
    return web.Response(status=204, headers=headers)


class EndedSessions:
    """Sessions that ended by themselves, and why, so their resource
    answers GET/PATCH/DELETE with 410 and the reason ("ice_failed",
    "connection_lost") instead of a bare 404. Bounded: the oldest go."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._why: OrderedDict[str, RoomError] = OrderedDict()

    def add(self, session_id: str, why: RoomError) -> None:
        self._why[session_id] = why
        while len(self._why) > self.LIMIT:
            self._why.popitem(last=False)

    def check(self, session_id: str) -> None:
        """Raise the reason if this session ended by itself."""
        why = self._why.get(session_id)
        if why is not None:
            raise RoomError(why.code, why.message)


def redirected(location: str) -> web.Response:
    """307 to `location`: the method and the offer are kept (RFC 9110
    s15.4.8), as RFC 9725 s4.5 lets a WHIP/WHEP endpoint redirect."""
    return web.Response(status=307, headers={**CORS_HEADERS, "Location": location})


def trickle_refusal() -> web.Response:
    # RFC 9725 section 4.3.1: a server without trickle ICE answers PATCH with 405
    error = RoomError("trickle_unsupported",
                      "trickle ICE and ICE restarts are not supported: the answer already carries "
                      "every candidate; to reconnect, DELETE this session and POST a new offer")
    headers = dict(CORS_HEADERS)
    headers["Allow"] = "GET, DELETE, OPTIONS"
    return web.json_response(error.to_json(), status=405, headers=headers)


# --- WHIP sessions ---------------------------------------------------------------


@dataclass(frozen=True)
class WhipSession:
    id: str
    forum_id: str
    source_id: str
    participant_id: str
    subject: str  # who may end it besides operators


class HttpMediaEndpoint:
    """What the WHIP and WHEP endpoints share: the node's rooms and its
    media bridge (absent when the node runs no media plane)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def _rooms(self) -> "RoomService":
        return self._app[ROOMS]

    def _optional_grant(self, request: web.Request) -> Grant | None:
        """The grant of a DELETE's token; None without one (the session URL
        holds 128 random bits, a capability on its own)."""
        token = bearer_token(request)
        return self._app[TOKENS].verify(token) if token is not None else None

    @staticmethod
    def _require_may_end(grant: Grant | None, forum_id: str, subject: str) -> None:
        """Who may end a session: its holder, or an operator of the forum
        (the same rule as socket.io's unpublish); RoomError("forbidden")."""
        if grant is not None and grant.subject != subject:
            grant.require(forum_id, Role.OPERATOR)

    def _end_at_expiry(self, session_id: str, expires_at: float, end: Callable[[], Awaitable[None]]) -> None:
        """End the session when its token expires, as socket.io disconnects
        a connection whose token expires."""
        def fire() -> None:
            self._expiries.pop(session_id, None)
            logger.info("%s session %s: the token expired; ending it", type(self).__name__, session_id)
            task = asyncio.ensure_future(end())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        delay = max(0.0, expires_at - time.time())
        self._expiries[session_id] = asyncio.get_running_loop().call_later(delay, fire)

    def _forget_expiry(self, session_id: str) -> None:
        handle = self._expiries.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _bridge(self) -> MediaBridge:
        bridge = self._app.get(BRIDGE)
        if bridge is None:
            raise RoomError("unavailable", "the media server is not running on this node")
        return bridge


class WhipEndpoint(HttpMediaEndpoint):
    """Owns this node's WHIP sessions."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self._sessions: dict[str, WhipSession] = {}
        self._by_source: dict[str, str] = {}
        self.ended = EndedSessions()

    def _grant(self, request: web.Request) -> Grant:
        return self._app[TOKENS].verify(bearer_token(request))

    async def create(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request)
        forum_id = known_forum(request)
        grant.require(forum_id, Role.SPEAKER)
        owner = await forum_owner(self._app, forum_id)
        if owner is not None:
            # another node hosts the forum: publish there (RFC 9725's load balancing and redirections;
            # a 307 keeps the method and the offer, RFC 9110 section 15.4.8)
            logger.info("WHIP: forum %s is hosted by %s; redirected there", forum_id, owner.node_id)
            return redirected(await live_redirect_url(self._app, owner, request.path_qs))
        offer = await read_offer(request)
        session_id = uuid.uuid4().hex
        participant_id = "whip-" + session_id[:12]
        name = grant.name
        participant = await self._rooms.join(forum_id, grant, participant_id, name)
        try:
            published = await self._bridge().publish(forum_id, grant, name, participant.id, offer)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._rooms.leave(forum_id, participant.id)
            raise
        session = WhipSession(session_id, forum_id, published.source_id, participant.id, grant.subject)
        self._sessions[session_id] = session
        self._by_source[published.source_id] = session_id
        self._end_at_expiry(session_id, grant.expires_at, lambda: self._end(session))
        logger.info("WHIP %s: %s publishes %s in %s", session_id, name, published.source_id, forum_id)
        return sdp_created(published.answer_sdp, f"/whip/{forum_id}/{session_id}",
                           self._app[ICE_SERVERS].for_holder(grant.subject))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        grant = self._optional_grant(request)
        forum_id = known_forum(request)
        session = self._session(request, forum_id)
        self._require_may_end(grant, forum_id, session.subject)
        await self._end(session)
        return web.json_response({"ok": True}, headers=CORS_HEADERS)

    def _session(self, request: web.Request, forum_id: str) -> WhipSession:
        session_id = request.match_info["session_id"]
        session = self._sessions.get(session_id)
        if session is None or session.forum_id != forum_id:
            self.ended.check(session_id)
            raise RoomError("not_found", "no such WHIP session (it ended, or never existed)")
        return session

    async def show(self, request: web.Request) -> web.StreamResponse:
        """GET on the session: 200 while it lasts; 410 with the reason
        once it ended by itself; 404 if unknown."""
        session = self._session(request, known_forum(request))
        return web.json_response({"session_id": session.id, "forum_id": session.forum_id,
                                  "source_id": session.source_id}, headers=CORS_HEADERS)

    async def patch(self, request: web.Request) -> web.StreamResponse:
        self._session(request, known_forum(request))
        return trickle_refusal()

    async def _end(self, session: WhipSession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        self._forget_expiry(session.id)
        self._by_source.pop(session.source_id, None)
        bridge = self._app.get(BRIDGE)
        if bridge is not None:
            await bridge.unpublish(session.source_id)
        with contextlib.suppress(RoomError):
            await self._rooms.leave(session.forum_id, session.participant_id)
        logger.info("WHIP %s ended", session.id)

    async def source_ended(self, source_id: str) -> None:
        """The encoder went away without a DELETE: forget its session."""
        session_id = self._by_source.get(source_id)
        session = self._sessions.get(session_id) if session_id else None
        if session is not None:
            bridge = self._app.get(BRIDGE)
            why = bridge.end_reason(source_id) if bridge is not None else None
            self.ended.add(session.id, why or RoomError(
                "connection_lost", "the encoder stopped sending and its source ended"))
            await self._end(session)

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            with contextlib.suppress(Exception):
                await self._end(session)


WHIP = web.AppKey("whip_endpoint", WhipEndpoint)


async def _whip_ctx(app: web.Application) -> AsyncIterator[None]:
    bridge = app.get(BRIDGE)
    if bridge is not None:
        bridge.on_source_ended(app[WHIP].source_ended)
    yield  # sessions end in on_shutdown, before the media plane unwinds


async def _whip_shutdown(app: web.Application) -> None:
    await app[WHIP].close()


def setup_whip(app: web.Application) -> None:
    endpoint = WhipEndpoint(app)
    app[WHIP] = endpoint
    setup_media_bridge(app)
    app.router.add_route("POST", "/whip/{forum_id}", edge(endpoint.create))
    app.router.add_route("OPTIONS", "/whip/{forum_id}", preflight)
    app.router.add_route("DELETE", "/whip/{forum_id}/{session_id}", edge(endpoint.delete))
    app.router.add_route("OPTIONS", "/whip/{forum_id}/{session_id}", preflight)
    app.router.add_route("PATCH", "/whip/{forum_id}/{session_id}", edge(endpoint.patch))
    app.router.add_route("GET", "/whip/{forum_id}/{session_id}", edge(endpoint.show))
    app.cleanup_ctx.append(_whip_ctx)
    app.on_shutdown.append(_whip_shutdown)
