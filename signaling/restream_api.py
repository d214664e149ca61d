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
same body as GET, without the URLs) to the forum's room.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from config.settings import ffmpeg_path
from rooms.errors import RoomError
from signaling.app_keys import EVENT, MEDIA, SETTINGS, SIO
from signaling.http_api import json_response
from signaling.operator_api import _body, _forum
from signaling.sio_server import operators_room
from streaming.child_processes import run_id
from streaming.forum_outputs import ProgramOutputs, RestreamNotFound
from streaming.program_encoder import OutputProfile
from streaming.restream import RestreamError, RestreamStatus

logger = logging.getLogger(__name__)

OUTPUTS = web.AppKey("program_outputs", ProgramOutputs)


def restreams_json(app: web.Application, forum_id: str, *, urls: bool = True) -> dict[str, Any]:
    outputs = app[OUTPUTS].forums.get(forum_id)
    items = [s.to_json() for s in outputs.statuses()] if outputs is not None else []
    if not urls:
        for item in items:
            item.pop("url", None)
    return {"forum_id": forum_id, "restreams": items}


def _restream_id(request: web.Request) -> str:
    return request.match_info["restream_id"][:64]


async def get_restreams(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    return json_response(restreams_json(request.app, forum_id))


async def post_restream(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    body = await _body(request)
    name, url, key = body.get("name"), body.get("url"), body.get("stream_key")
    if not all(isinstance(v, str) for v in (name, url, key)):
        raise RoomError("invalid", "name, url and stream_key are required strings")
    assert isinstance(name, str) and isinstance(url, str) and isinstance(key, str)
    try:
        restream = request.app[OUTPUTS].forum(forum_id).add(name, url, key)
    except RestreamError as error:
        raise RoomError("invalid", str(error)) from None
    return json_response(restream.status().to_json(), status=201)


async def _act(request: web.Request, action: str) -> web.Response:
    forum_id, _ = _forum(request)
    outputs = request.app[OUTPUTS].forum(forum_id)
    restream_id = _restream_id(request)
    try:
        if action == "delete":
            await outputs.remove(restream_id)
            return web.Response(status=204)
        restream = await (outputs.start(restream_id) if action == "start" else outputs.stop(restream_id))
    except RestreamNotFound:
        raise RoomError("not_found", f"there is no restream {restream_id!r} in this forum") from None
    return json_response(restream.status().to_json())


async def delete_restream(request: web.Request) -> web.Response:
    return await _act(request, "delete")


async def start_restream(request: web.Request) -> web.Response:
    return await _act(request, "start")


async def stop_restream(request: web.Request) -> web.Response:
    return await _act(request, "stop")


async def _outputs_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    profile = OutputProfile(
        width=settings.output_width, height=settings.output_height, fps=settings.output_fps,
        video_kbps=settings.output_video_kbps, audio_kbps=settings.output_audio_kbps,
        preset=settings.output_preset,
    )
    def need(forum_id: str) -> None:
        from signaling.forum_inputs import INPUTS  # set up after this context (setup_operator)

        inputs = app.get(INPUTS)
        if inputs is not None:
            inputs.ensure_slate(forum_id)

    outputs = ProgramOutputs(lambda forum_id: app[MEDIA].program_bus(forum_id), profile,
                             ffmpeg_path=ffmpeg_path(settings), on_need=need,
                             private_root=settings.data_dir / "run" / "secrets" / run_id())
    for forum in app[EVENT].forums:
        if forum.restreams:
            outputs.load_event_destinations(forum.id, forum.restreams, os.environ)
    pending: set[asyncio.Task[None]] = set()

    def on_status(forum_id: str, status: RestreamStatus | None, restream_id: str) -> None:
        sio = app.get(SIO)
        if sio is None:
            return
        task = asyncio.ensure_future(
            sio.emit("restreams", restreams_json(app, forum_id, urls=False), room=operators_room(forum_id)))
        pending.add(task)
        task.add_done_callback(pending.discard)

    outputs.add_listener(on_status)
    app[OUTPUTS] = outputs
    try:
        yield
    finally:
        await outputs.close()
        await asyncio.gather(*pending, return_exceptions=True)


def setup_restreams(app: web.Application) -> None:
    """Routes and the ProgramOutputs cleanup context (after the media plane's)."""
    app.cleanup_ctx.append(_outputs_ctx)
    base = "/api/forums/{forum_id}/restreams"
    r = app.router
    r.add_get(base, get_restreams)
    r.add_post(base, post_restream)
    r.add_delete(base + "/{restream_id}", delete_restream)
    r.add_post(base + "/{restream_id}/start", start_restream)
    r.add_post(base + "/{restream_id}/stop", stop_restream)
