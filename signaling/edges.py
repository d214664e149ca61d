"""The node as an edge: program viewers of a forum another node hosts are
served here through one pull of the owner's WHEP (streaming/edge_links.py),
and this node, as an origin, counts the edge links it serves.

`edge_for(app, forum_id, owner)` is the one call signaling makes when a
program viewer (WHEP, socket.io `watch` without a source) arrives: owner
None (this node hosts the forum) drops a pull left from before a takeover;
another owner starts or re-points the forum's pull to its `/whep/{forum}`.

Edges pull from edges (a tree, rooms/edge_tree.py): an edge link (a
node grant at WHEP) reaching the origin is served there while the origin
serves fewer than `edge_fanout` links for the forum, else answered 307 to
the WHEP of an edge the policy picks (`edge_link_target`); an edge serves
an edge link from its own pull when its pull is live, its depth is below
`edge_max_depth` and the asker is not one of its ancestors, else it sends
it to the origin. The policy reads every node's heartbeat (`tree_load`:
{forum_id: {"parent", "depth", "links", "live"}}); a node picked must
answer on the bus first (signaling/node_liveness.py: one killed a moment
ago is skipped). A WHEP answer to an edge link names the answering node
and its depth (streaming/edge_pull.py NODE_HEADER, DEPTH_HEADER), so the
pull knows its parent and depth.

`GET /api/edges` (admin): {"node_id", "pulls": [{"forum_id", "whep_url",
"state", "reason", "parent", "depth"}] (this node as an edge), "served":
{forum_id: n} (edge links this node serves, as an origin or a parent
edge: WHEP sessions of edge-link grants, which take no seat)}.
"""

from __future__ import annotations

import collections
import logging
import urllib.parse
from collections.abc import AsyncIterator

from aiohttp import web

from rooms.edge_tree import TreeNode, ancestors, choose_parent
from rooms.errors import RoomError
from rooms.forum_ownership import Owner
from rooms.models import Role
from rooms.tokens import Grant
from signaling.app_keys import MEDIA, SETTINGS, STORE, TOKENS
from signaling.http_api import bearer_token, json_response
from signaling.node_liveness import answering
from signaling.ownership import forum_owner, redirect_url
from streaming.edge_links import EdgeLinks
from streaming.edge_pull import DEPTH_HEADER, NODE_HEADER

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


EDGE_LINK_SUBJECT = "edge-link:"  # rooms/tokens.py issue_edge_link: the pulling node's instance id follows


def tree_load(app: web.Application) -> dict[str, dict[str, object]]:
    """This node's place in each forum's tree, for its heartbeat: a forum
    it pulls (parent, depth, live) or serves edge links of (links); an
    origin serving links has parent None and depth 0."""
    links = app.get(EDGE_LINKS)
    served = app[SERVED].counts() if SERVED in app else {}
    tree: dict[str, dict[str, object]] = {
        forum_id: {"parent": None, "depth": 0, "links": n, "live": True} for forum_id, n in served.items()}
    for info in links.links() if links is not None else []:
        tree[info.forum_id] = {"parent": info.parent, "depth": info.depth, "links": served.get(info.forum_id, 0),
                               "live": info.state == "live" and info.depth is not None}
    return tree


def _tree_node(node_id: str, place: object) -> TreeNode | None:
    """One heartbeat's entry (another node's JSON: checked, None if malformed)."""
    if not isinstance(place, dict):
        return None
    parent, depth, links = place.get("parent"), place.get("depth"), place.get("links")
    if not (parent is None or isinstance(parent, str)) or not isinstance(depth, int) or not isinstance(links, int):
        return None
    return TreeNode(node_id, parent, depth, links, place.get("live") is True)


async def _forum_tree(app: web.Application, forum_id: str) -> tuple[dict[str, TreeNode], dict[str, str]]:
    """The forum's tree from the heartbeats, this node's own entry fresh;
    and each node's public URL."""
    store = app[STORE]
    tree: dict[str, TreeNode] = {}
    urls: dict[str, str] = {}
    for node in await store.nodes():
        urls[node.node_id] = node.public_url
        entry = _tree_node(node.node_id, node.load.get("tree", {}).get(forum_id)) \
            if isinstance(node.load.get("tree"), dict) else None
        if entry is not None:
            tree[node.node_id] = entry
    mine = _tree_node(store.node_id, tree_load(app).get(forum_id))
    if mine is not None:
        tree[store.node_id] = mine
    else:
        tree.pop(store.node_id, None)
    return tree, urls


async def edge_link_target(app: web.Application, forum_id: str, grant: Grant, owner: Owner | None,
                           path_qs: str) -> str | None:
    """Where an edge link (`grant.edge_link`) for `forum_id` should go
    instead of this node (a URL for a 307), or None to serve it here (see
    the module docstring). RoomError("unavailable") while the owner's
    address is unknown."""
    store, settings = app[STORE], app[SETTINGS]
    me = store.node_id
    requester = grant.subject.removeprefix(EDGE_LINK_SUBJECT)
    tree, urls = await _forum_tree(app, forum_id)
    if owner is not None:  # an edge: serve from our pull, if that makes no loop and no deeper tree than allowed
        mine = tree.get(me)
        if mine is not None and mine.live and mine.depth < settings.edge_max_depth \
                and requester != me and requester not in ancestors(me, tree):
            return None
        return redirect_url(owner, path_qs)
    tree.setdefault(me, TreeNode(me, None, 0, 0))
    avoid: set[str] = set()
    while True:
        parent = choose_parent(me, requester, tree, settings.edge_fanout, settings.edge_max_depth, avoid)
        if parent == me:
            return None
        if urls.get(parent) and await answering(store, parent):
            logger.info("edge link of %s for forum %s: sent to edge %s (this origin serves %d)",
                        requester, forum_id, parent, tree[me].links)
            return urls[parent].rstrip("/") + path_qs
        avoid.add(parent)  # heart-beat recently, listens no more: dead


def tree_headers(app: web.Application, forum_id: str) -> dict[str, str]:
    """The headers of a WHEP answer to an edge link: this node and its depth."""
    links = app.get(EDGE_LINKS)
    depth = 0
    for info in links.links() if links is not None else []:
        if info.forum_id == forum_id and info.depth is not None:
            depth = info.depth
    return {NODE_HEADER: app[STORE].node_id, DEPTH_HEADER: str(depth)}


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

    store = app[STORE]

    async def alive(upstream: str) -> bool:
        return await answering(store, upstream)

    links = EdgeLinks(plane, locate, lambda forum_id: tokens.issue_edge_link(forum_id, node_id),
                      linger_s=LINGER_S, upstream_alive=alive)
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
        "pulls": [{"forum_id": i.forum_id, "whep_url": i.whep_url, "state": i.state, "reason": i.reason,
                   "parent": i.parent, "depth": i.depth}
                  for i in (links.links() if links is not None else [])],
        "served": request.app[SERVED].counts(),
    })


def setup_edges(app: web.Application) -> None:
    """After the media plane's context (the links stop before it)."""
    app[SERVED] = ServedLinks()
    app.cleanup_ctx.append(_edges_ctx)
    app.router.add_get("/api/edges", get_edges)


__all__ = ["EDGE_LINKS", "SERVED", "ServedLinks", "edge_for", "edge_link_target", "setup_edges", "tree_headers",
           "tree_load", "whep_url"]
