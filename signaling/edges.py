"""The node as an edge: program viewers of a forum another node hosts are
served here through one pull of the owner's WHEP (streaming/edge_links.py),
and this node, as an origin, counts the edge links it serves.

`edge_for(app, forum_id, owner)` is the one call signaling makes when a
program viewer (WHEP, socket.io `watch` without a source) arrives: owner
None (this node hosts the forum) drops a pull left from before a takeover;
another owner starts or re-points the forum's pull to its `/whep/{forum}`.

`GET /api/edges` (admin): {"node_id", "pulls": [{"forum_id", "whep_url",
"state", "reason"}] (this node as an edge), "served": {forum_id: n} (edge
links this node serves as an origin: WHEP sessions of edge-link grants,
which take no seat)}.
"""

from __future__ import annotations

import collections
import logging
import urllib.parse
from collections.abc import AsyncIterator

from aiohttp import web

from rooms.errors import RoomError
from rooms.forum_ownership import Owner
from rooms.models import Role
from signaling.app_keys import MEDIA, STORE, TOKENS
from signaling.http_api import bearer_token, json_response
from signaling.ownership import forum_owner, redirect_url
from streaming.edge_links import EdgeLinks

logger = logging.getLogger(__name__)

LINGER_S = 5.0  # a forum's pull outlives its last local viewer this long (a page reload keeps it)

EDGE_LINKS = web.AppKey("edge_links", EdgeLinks)


class ServedLinks:
    """The edge links this node serves as an origin, counted by forum."""

    def __init__(self) -> None:
        self._by_forum: collections.Counter[str] = collections.Counter()

    def add(self, forum_id: str) -> None:
        self._by_forum[forum_id] += 1

    def remove(self, forum_id: str) -> None:
        self._by_forum[forum_id] -= 1
        if self._by_forum[forum_id] <= 0:
            del self._by_forum[forum_id]

    def counts(self) -> dict[str, int]:
        return dict(self._by_forum)


SERVED = web.AppKey("served_edge_links", ServedLinks)


def whep_url(owner: Owner, forum_id: str) -> str:
    """The owner's WHEP endpoint for the forum; RoomError("unavailable")
    while its address is unknown."""
    return redirect_url(owner, "/whep/" + urllib.parse.quote(forum_id, safe=""))


async def edge_for(app: web.Application, forum_id: str, owner: Owner | None) -> None:
    """Make this node ready to serve `forum_id`'s program to a local viewer
    (see the module docstring). RoomError("unavailable") on a node without
    a media plane, or while the owner's address is unknown."""
    links = app.get(EDGE_LINKS)
    if owner is None:
        if links is not None and links.pulling(forum_id):
            await links.drop(forum_id)  # hosted here now: the host's switcher has the program
        return
    if links is None:
        raise RoomError("unavailable", "the media server is not running on this node")
    await links.serve(forum_id, whep_url(owner, forum_id))


async def _edges_ctx(app: web.Application) -> AsyncIterator[None]:
    plane = app.get(MEDIA)
    if plane is None:
        yield
        return
    tokens = app[TOKENS]
    node_id = app[STORE].node_id

    async def locate(forum_id: str) -> str | None:
        owner = await forum_owner(app, forum_id)
        return None if owner is None else whep_url(owner, forum_id)

    links = EdgeLinks(plane, locate, lambda forum_id: tokens.issue_edge_link(forum_id, node_id),
                      linger_s=LINGER_S)
    await links.start()
    app[EDGE_LINKS] = links
    try:
        yield
    finally:
        await links.stop()  # before the media plane stops: each pull DELETEs its session


async def get_edges(request: web.Request) -> web.Response:
    """See the module docstring (admin token; else 403 forbidden)."""
    grant = request.app[TOKENS].verify(bearer_token(request))
    if not grant.role.at_least(Role.ADMIN):
        raise RoomError("forbidden", f"/api/edges needs the admin role; your token grants {grant.role.value}")
    links = request.app.get(EDGE_LINKS)
    return json_response({
        "node_id": request.app[STORE].node_id,
        "pulls": [{"forum_id": i.forum_id, "whep_url": i.whep_url, "state": i.state, "reason": i.reason}
                  for i in (links.links() if links is not None else [])],
        "served": request.app[SERVED].counts(),
    })


def setup_edges(app: web.Application) -> None:
    """After the media plane's context (the links stop before it)."""
    app[SERVED] = ServedLinks()
    app.cleanup_ctx.append(_edges_ctx)
    app.router.add_get("/api/edges", get_edges)


__all__ = ["EDGE_LINKS", "SERVED", "ServedLinks", "edge_for", "setup_edges", "whep_url"]
