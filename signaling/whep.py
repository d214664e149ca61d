"""WHEP: players pull a forum's program with one HTTP POST (the same shape
as WHIP, see signaling/whip.py).

    POST   /whep/{forum_id}              recvonly offer in, 201 + answer + Location
    DELETE /whep/{forum_id}/{session_id} stops watching
    OPTIONS on both                      CORS preflight
    PATCH  on the session                405: no trickle ICE
    GET    on the session                200 while it lasts; after it ended by
                                         itself, GET/PATCH/DELETE answer 410 and
                                         why ("ice_failed", "connection_lost")

A viewer token for the forum is needed, unless the event is public (then
no Authorization header is fine; a token, when sent, must still be valid).
A WHEP viewer is a participant: it takes one of the forum's seats, so a
full forum answers 429 "full". A player that vanishes without a DELETE
(its ICE consent or DTLS fails) gives its seat back when the media plane
closes its peer.

On a node that does not host the forum, the viewer is served here through
the node's one pull of the owner's program (signaling/edges.py). An edge
link (a node's pull, `Grant.edge_link`) takes no seat, is not ended at
its token's expiry (the edge mints one per request), and goes where the
tree of edges says (signaling/edges.py `edge_link_target`: served by the
origin while it has edge-link room, else 307, RFC 9725 s4.5, to an edge
with room; an edge serves it from its own pull or sends it to the
origin); its 201 names the answering node and its depth in the tree.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from rooms.errors import RoomError
from rooms.models import Role
from rooms.tokens import Grant
from signaling.app_keys import EVENT, ICE_SERVERS, TOKENS
from signaling.http_api import bearer_token
from signaling.edges import SERVED, edge_for, edge_link_target, setup_edges, tree_headers
from signaling.media_bridge import BRIDGE, setup_media_bridge
from signaling.ownership import forum_owner
from signaling.placement import elsewhere
from signaling.whip import (
    CORS_HEADERS,
    EndedSessions,
    HttpMediaEndpoint,
    edge,
    known_forum,
    preflight,
    read_offer,
    redirected,
    sdp_created,
    setup_whip,
    trickle_refusal,
)

logger = logging.getLogger(__name__)

GUEST_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class WhepSession:
    id: str
    forum_id: str
    viewer_id: str
    participant_id: str  # "" for an edge link (no seat)
    subject: str  # who may end it besides operators


class WhepEndpoint(HttpMediaEndpoint):
    """Owns this node's WHEP viewers."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self._sessions: dict[str, WhepSession] = {}
        self._by_viewer: dict[str, WhepSession] = {}
        self.ended = EndedSessions()

    def _grant(self, request: web.Request, forum_id: str) -> Grant:
        token = bearer_token(request)
        if token is None and self._app[EVENT].public:
            # a public event: an anonymous guest of this one forum
            return Grant(role=Role.VIEWER, forums=frozenset({forum_id}), name="Guest",
                         subject="guest-" + uuid.uuid4().hex[:12], expires_at=time.time() + GUEST_TTL_S)
        return self._app[TOKENS].verify(token)

    async def create(self, request: web.Request) -> web.StreamResponse:
        forum_id = known_forum(request)
        grant = self._grant(request, forum_id)
        grant.require(forum_id, Role.VIEWER)
        owner = await forum_owner(self._app, forum_id)
        if grant.edge_link and (parent := await edge_link_target(self._app, forum_id, grant, owner,
                                                                   request.path_qs)) is not None:
            # the tree of edges (rooms/edge_tree.py): the origin when it has room, else an edge
            # with room, never the asker's own subtree; RFC 9725 s4.5 lets a WHEP server
            # redirect, and 307 keeps the POST and its offer
            return redirected(parent)
        if not grant.edge_link and (better := await elsewhere(self._app, forum_id)) is not None:
            # this node is full: the placement's node serves the viewer (RFC 9725 s4.5)
            return redirected(better.url.rstrip("/") + request.path_qs)
        await edge_for(self._app, forum_id, owner)  # another node hosts it: serve it here through a pull
        offer = await read_offer(request)
        session_id = uuid.uuid4().hex
        viewer_id = "whep-" + session_id[:16]
        # an edge link takes no seat: the edge's own viewers took theirs on the edge
        participant_id = "" if grant.edge_link else (
            await self._rooms.join(forum_id, grant, viewer_id, grant.name)).id
        try:
            answer = await self._bridge().watch(forum_id, viewer_id, offer)
        except BaseException:
            if participant_id:
                with contextlib.suppress(Exception):
                    await self._rooms.leave(forum_id, participant_id)
            raise
        session = WhepSession(session_id, forum_id, viewer_id, participant_id, grant.subject)
        self._sessions[session_id] = session
        self._by_viewer[viewer_id] = session
        if grant.edge_link:
            self._app[SERVED].add(forum_id)  # lasts until DELETE or ICE fails: minted per request
        else:
            self._end_at_expiry(session_id, grant.expires_at, lambda: self._end(session))
        logger.info("WHEP %s: %s watches %s", session_id, grant.name, forum_id)
        created = sdp_created(answer, f"/whep/{forum_id}/{session_id}",
                              self._app[ICE_SERVERS].for_holder(grant.subject))
        if grant.edge_link:
            created.headers.update(tree_headers(self._app, forum_id))  # the pull learns its parent and depth
        return created

    def _session(self, request: web.Request) -> WhepSession:
        forum_id = known_forum(request)
        session_id = request.match_info["session_id"]
        session = self._sessions.get(session_id)
        if session is None or session.forum_id != forum_id:
            self.ended.check(session_id)
            raise RoomError("not_found", "no such WHEP session (it ended, or never existed)")
        return session

    async def show(self, request: web.Request) -> web.StreamResponse:
        """GET on the session: 200 while it lasts; 410 with the reason
        ("ice_failed", "connection_lost") once it ended by itself."""
        session = self._session(request)
        return web.json_response({"session_id": session.id, "forum_id": session.forum_id},
                                 headers=CORS_HEADERS)

    async def patch(self, request: web.Request) -> web.StreamResponse:
        self._session(request)
        return trickle_refusal()

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """The session URL alone, the holder's token or an operator's ends
        it; another token: 403 (docs/DESIGN.md "Who may do what")."""
        grant = self._optional_grant(request)
        session = self._session(request)
        self._require_may_end(grant, session.forum_id, session.subject)
        await self._end(session)
        return web.json_response({"ok": True}, headers=CORS_HEADERS)

    async def viewer_closed(self, viewer_id: str) -> None:
        """The media plane closed this viewer's peer by itself."""
        session = self._by_viewer.get(viewer_id)
        if session is not None:
            bridge = self._app.get(BRIDGE)
            why = bridge.end_reason(viewer_id) if bridge is not None else None
            why = why or RoomError("connection_lost", "the player's connection closed")
            logger.info("WHEP %s ended by itself: %s", session.id, why.code)
            self.ended.add(session.id, why)
            await self._end(session)

    async def _end(self, session: WhepSession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        self._forget_expiry(session.id)
        self._by_viewer.pop(session.viewer_id, None)
        bridge = self._app.get(BRIDGE)
        if bridge is not None:
            await bridge.stop_watching(session.viewer_id)
        if session.participant_id:
            with contextlib.suppress(RoomError):
                await self._rooms.leave(session.forum_id, session.participant_id)
        else:
            self._app[SERVED].remove(session.forum_id)
        logger.info("WHEP %s ended", session.id)

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            with contextlib.suppress(Exception):
                await self._end(session)


WHEP = web.AppKey("whep_endpoint", WhepEndpoint)


async def _whep_ctx(app: web.Application) -> AsyncIterator[None]:
    bridge = app.get(BRIDGE)
    remove = bridge.on_viewer_closed(app[WHEP].viewer_closed) if bridge is not None else None
    try:
        yield  # sessions end in on_shutdown, before the media plane unwinds
    finally:
        if remove is not None:
            remove()


async def _whep_shutdown(app: web.Application) -> None:
    await app[WHEP].close()  # before the media plane unwinds


def setup_whep(app: web.Application) -> None:
    endpoint = WhepEndpoint(app)
    app[WHEP] = endpoint
    setup_media_bridge(app)
    app.cleanup_ctx.append(_whep_ctx)
    app.router.add_route("POST", "/whep/{forum_id}", edge(endpoint.create))
    app.router.add_route("OPTIONS", "/whep/{forum_id}", preflight)
    app.router.add_route("DELETE", "/whep/{forum_id}/{session_id}", edge(endpoint.delete))
    app.router.add_route("OPTIONS", "/whep/{forum_id}/{session_id}", preflight)
    app.router.add_route("PATCH", "/whep/{forum_id}/{session_id}", edge(endpoint.patch))
    app.router.add_route("GET", "/whep/{forum_id}/{session_id}", edge(endpoint.show))
    app.on_shutdown.append(_whep_shutdown)


def setup_whip_whep(app: web.Application) -> None:
    """WHIP and WHEP routes, the media bridge and their cleanup contexts.
    Call it after the room service and media plane contexts are registered."""
    setup_whip(app)
    setup_whep(app)
    setup_edges(app)  # after the media plane and the bridge: the pulls stop before them
