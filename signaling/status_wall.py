"""The status wall: every forum the token operates at a glance.

    GET /status?token=   the page (signaling/web/templates/status.html)
    GET /api/status      {"now", "forums": [{"id", "name": {"en","zh"}, "room",
                          "program": <program>, "viewers": {"forum_id","viewers","total"},
                          "sources": [<source> + "tracks"], "live": <session>|null,
                          "next": <session>|null}]}

Each source's `tracks` are what this node receives of it over the last
2 s: [{"kind": "video"|"audio", "bitrate_kbps", "loss_ratio" (0..1 or
null), "jitter_ms" (RFC 3550 6.4.1, or null)}]; empty when another node
holds the source (that node's /metrics has it).

`Authorization: Bearer <token>` of an operator or admin; the forums are
those the token opens with that role (all for `forums = *`). 401
token_missing/token_invalid/token_expired, 403 forbidden when it opens
none. Read from the Store, so a wall on one node shows forums served by
every node. The page polls every STATUS_POLL_S (3 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from rooms.agenda import session_json
from rooms.errors import RoomError
from rooms.models import Forum, Role
from signaling import protocol
from signaling.app_keys import AGENDA, EVENT, MEDIA, ROOMS, TOKENS
from signaling.http_api import bearer_token, json_response
from streaming.plane_snapshot import PlaneSnapshot


def _tracks(app: web.Application) -> dict[str, list[dict[str, Any]]]:
    """source id -> its tracks' receive windows on this node's media plane."""
    plane = app.get(MEDIA)
    if plane is None or plane.state != "running":
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    snapshot: PlaneSnapshot = plane.snapshot()
    for source in snapshot.sources:
        found.setdefault(source.source_id, []).append({
            "kind": source.kind, "bitrate_kbps": round(source.window.bitrate_kbps, 1),
            "loss_ratio": source.window.loss_ratio, "jitter_ms": source.window.jitter_ms})
    return found


async def _forum_status(request: web.Request, forum: Forum, tracks: dict[str, list[dict[str, Any]]]
                        ) -> dict[str, Any]:
    rooms = request.app[ROOMS]
    sources, program, counts = await asyncio.gather(
        rooms.sources(forum.id), rooms.program(forum.id), rooms.viewer_count(forum.id))
    status = request.app[AGENDA].status(forum.id)
    return {
        "id": forum.id, "name": forum.name.to_json(), "room": forum.room.to_json(),
        "program": protocol.program_json(program, sources),
        "viewers": protocol.counts_json(forum.id, counts),
        "sources": [{**protocol.source_json(s), "tracks": tracks.get(s.id, [])} for s in sources],
        "live": session_json(status.live) if status.live else None,
        "next": session_json(status.next) if status.next else None,
    }


async def status(request: web.Request) -> web.Response:
    grant = request.app[TOKENS].verify(bearer_token(request))
    event = request.app[EVENT]
    forums = [f for f in event.forums if grant.allows(f.id, Role.OPERATOR)]
    if not forums:
        raise RoomError("forbidden", "the status wall needs an operator's or an admin's token")
    tracks = _tracks(request.app)
    return json_response({
        "now": request.app[AGENDA].now().isoformat(),
        "forums": list(await asyncio.gather(*(_forum_status(request, f, tracks) for f in forums))),
    })


def setup_status_wall(app: web.Application, page: Any) -> None:
    """`page` is the handler that renders the HTML (signaling/pages.py)."""
    app.router.add_get("/api/status", status)
    app.router.add_get("/status", page)
