"""The restream REST API and its socket.io pushes.

    GET    /api/forums/{forum_id}/restreams              {"forum_id", "restreams": [status...]}
    POST   /api/forums/{forum_id}/restreams              {"name", "url", "stream_key"} -> 201 status (its "id")
    DELETE /api/forums/{forum_id}/restreams/{id}         204
    POST   /api/forums/{forum_id}/restreams/{id}/start   status
    POST   /api/forums/{forum_id}/restreams/{id}/stop    status

A status is {"id", "name", "url", "state" (idle | connecting | live |
retrying | stopped), "bitrate_kbps", "uptime_s", "attempt", "last_error"};
a stream key is never in an answer, a push or a log. Every call needs an
operator token (`Authorization: Bearer`); errors are http_api's JSON
({"error": {"code", "message"}}). Every change, and each second while a
destination is live, is pushed as the socket.io event "restreams" (the
same body as GET, without the URLs) to the forum's operators' room (by
the forum's host, through the ForumNotifier). The destinations live in
the forum's ForumHost (its ForumOutputs); these routes only translate.
"""

from __future__ import annotations

import logging

from aiohttp import web

from rooms.errors import RoomError
from signaling.http_api import json_response
from signaling.operator_common import control_of, operator_forum, read_body

logger = logging.getLogger(__name__)


def _restream_id(request: web.Request) -> str:
    return request.match_info["restream_id"][:64]


async def get_restreams(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).restreams(forum_id, grant))


async def post_restream(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request)
    name, url, key = body.get("name"), body.get("url"), body.get("stream_key")
    if not (isinstance(name, str) and isinstance(url, str) and isinstance(key, str)):
        raise RoomError("invalid", "name, url and stream_key are required strings")
    return json_response(await control_of(request.app).add_restream(forum_id, grant, name, url, key), status=201)


async def delete_restream(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    await control_of(request.app).remove_restream(forum_id, grant, _restream_id(request))
    return web.Response(status=204)


async def start_restream(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).start_restream(forum_id, grant, _restream_id(request)))


async def stop_restream(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).stop_restream(forum_id, grant, _restream_id(request)))


def setup_restreams(app: web.Application) -> None:
    """The restream routes (the destinations are the forum hosts':
    signaling/hosting.py)."""
    base = "/api/forums/{forum_id}/restreams"
    r = app.router
    r.add_get(base, get_restreams)
    r.add_post(base, post_restream)
    r.add_delete(base + "/{restream_id}", delete_restream)
    r.add_post(base + "/{restream_id}/start", start_restream)
    r.add_post(base + "/{restream_id}/stop", stop_restream)
