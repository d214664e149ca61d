"""Placement over HTTP, and the load each node's heartbeat carries.

`GET /api/forums/{forum_id}/placement` answers `{"node_id", "url",
"nodes"}`: the node a viewer of the forum should use (rooms/placement.py:
the forum's owner while it has room, else the live node with the most
room) and the public URLs of every node with a heartbeat (where a page
whose node died asks again: watch.js). A viewer token for the forum (none
on a public event); 404 for an unknown forum, 503 `unavailable` when no
node can be reached. Any origin may ask (CORS, as WHEP: tokens travel as
Bearer headers, never cookies).

A node that is full (no room by its own heartbeat) sends new program
viewers to the placement (`elsewhere`): WHEP answers 307 (RFC 9725 s4.5),
socket.io `watch` acks `moved`; viewers already watching stay.

Before a node is answered (or a viewer sent there) it must answer on the
bus (signaling/node_liveness.py): a node killed a moment ago still has a
heartbeat for up to `node_ttl_s`, but no listener; it is left out and
the placement asked again without it.

`NodeLoadMeter` is the RoomService's `load`: {"viewers": this node's
WebRTC viewers (edge links served included), "cpu": the CPU time of this
process and its children (the program encoders, restreams, recorders,
venue legs, normalizations: ffmpeg's cost is most of a forum's with
outputs) over wall time since the last heartbeat, a share of one core,
"tree": this node's place in each forum's tree of edges
(signaling/edges.py `tree_load`)}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from rooms.models import Role
from rooms.placement import Placement, place, room
from rooms.store import NodeInfo, Store
from signaling import procstat
from signaling.app_keys import EVENT, MEDIA, SETTINGS, STORE, TOKENS
from signaling.edges import tree_load
from signaling.http_api import bearer_token, json_response
from signaling.node_liveness import answering
from signaling.whip import CORS_HEADERS, edge, known_forum, preflight


MIN_WINDOW_S = 0.5  # a CPU share over less is noise (the first beat runs at start-up)


def _node_cpu_seconds() -> float:
    """This process's CPU seconds with its children's, live and reaped (/proc)."""
    return procstat.tree_cpu_seconds(os.getpid())


class NodeLoadMeter:
    """Called once per heartbeat (see the module docstring). `cpu()` gives
    the CPU seconds to measure (default: this process tree, from /proc)."""

    def __init__(self, app: web.Application, cpu: Callable[[], float] = _node_cpu_seconds) -> None:
        self._app = app
        self._cpu = cpu
        self._last = (time.monotonic(), cpu())
        self._share = 0.0

    def __call__(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), self._cpu()
        then, cpu_then = self._last
        if now - then >= MIN_WINDOW_S:  # the start-up beat's instant is no measure
            self._share = (cpu - cpu_then) / (now - then)
            self._last = (now, cpu)
        share = self._share
        plane = self._app.get(MEDIA)
        viewers = int(plane.stats()["viewers"]) if plane is not None else 0
        return {"viewers": viewers, "cpu": round(share, 3), "tree": tree_load(self._app)}


async def get_placement(request: web.Request) -> web.Response:
    """See the module docstring."""
    forum_id = known_forum(request)
    token = bearer_token(request)
    if token is not None or not request.app[EVENT].public:
        request.app[TOKENS].verify(token).require(forum_id, Role.VIEWER)
    store = request.app[STORE]
    nodes = await store.nodes()
    chosen = await live_placement(request.app, store, await store.lease_owner(forum_id), nodes)
    answer = json_response({"node_id": chosen.node_id, "url": chosen.url,
                            "nodes": sorted(n.public_url for n in nodes if n.public_url)})
    answer.headers.update(CORS_HEADERS)
    return answer


async def live_placement(app: web.Application, store: Store, owner: str | None, nodes: list[NodeInfo]) -> Placement:
    """rooms/placement.py's answer among the nodes that answer on the bus
    now (see the module docstring); RoomError("unavailable") when none."""
    settings = app[SETTINGS]
    avoid: set[str] = set()
    while True:
        chosen = place(owner, nodes, settings.node_max_viewers, settings.node_max_cpu, avoid)
        if await answering(store, chosen.node_id):
            return chosen
        avoid.add(chosen.node_id)  # heart-beat recently, listens no more: dead


async def elsewhere(app: web.Application, forum_id: str) -> Placement | None:
    """Where a new viewer of the forum should go instead of this node: None
    while this node has room (or its own heartbeat is not in yet), else the
    placement when it names another node (WHEP answers it 307, socket.io
    `watch` acks `moved`)."""
    store = app.get(STORE)
    if store is None:
        return None
    settings = app[SETTINGS]
    nodes = await store.nodes()
    me = next((n for n in nodes if n.node_id == store.node_id), None)
    if me is None or room(me, settings.node_max_viewers, settings.node_max_cpu) > 0:
        return None
    chosen = await live_placement(app, store, await store.lease_owner(forum_id), nodes)
    return None if chosen.node_id == store.node_id else chosen


def setup_placement(app: web.Application) -> None:
    app.router.add_get("/api/forums/{forum_id}/placement", edge(get_placement))
    app.router.add_route("OPTIONS", "/api/forums/{forum_id}/placement", preflight)
