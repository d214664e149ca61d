"""The operator's REST API and the control page.

    GET    /api/forums/{forum_id}/sources              sources, on air, in preview
    POST   /api/forums/{forum_id}/program              {"source": id} | {"slate": true}
    POST   /api/forums/{forum_id}/preview              {"source": id | null}
    POST   /api/forums/{forum_id}/manual               {"manual": bool}
    GET    /api/forums/{forum_id}/ingest[?reveal=true] venue RTMP/SRT addresses (the key only with reveal; null while down)
    GET    /api/forums/{forum_id}/media                the forum's media library and conversion jobs
    POST   /api/forums/{forum_id}/media                multipart upload (field "file") -> 202 {"job"}
    POST   /api/forums/{forum_id}/media/{media_id}/audio  {"audio_track": n}: the track playout sends
    GET    /api/forums/{forum_id}/jobs                 conversion jobs (state, percent, ETA)
    GET    /api/forums/{forum_id}/jobs/{job_id}        one job (its uploader may ask too)
    (resumable uploads, tus: signaling/tus_uploads.py)
    GET    /api/forums/{forum_id}/playouts             recorded videos playing as sources
    POST   /api/forums/{forum_id}/playouts             {"media": id, "take": bool}
    DELETE /api/forums/{forum_id}/playouts/{source_id}
    POST   /api/forums/{forum_id}/playouts/{source_id}/restart
    GET    /control/{forum_id}?token=...               the vision mixer page

Every call needs an operator (or admin) token as `Authorization: Bearer`;
every command goes through the ForumControl facade (app[CONTROL]: the
forum's ForumHost, streaming/forum_host.py) and the RoomService, whose
events reach every client of the forum over socket.io. Errors are the
JSON of http_api's middleware. `setup_operator` adds these routes and the
socket.io operator events (signaling/hosting.py wires the hosts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, web

from rooms.errors import RoomError
from rooms.models import Role
from signaling import protocol
from signaling.app_keys import EVENT, LIBRARY, ROOMS, SIO
from signaling.hosting import forum_room, media_json
from signaling.http_api import json_response
from signaling.operator_common import (
    control_of,
    manual_arg,
    operator_forum,
    optional_source,
    program_answer,
    read_body,
    sources_json,
    start_playout,
    stop_playout,
    version_arg,
)
from signaling.sio_operator import register_operator_events
from signaling.tus_uploads import setup_tus_routes, uploader_grant
from streaming.media_library import MediaLibrary

logger = logging.getLogger(__name__)


def library_of(app: web.Application) -> MediaLibrary:
    library = app.get(LIBRARY)
    if library is None:
        raise RoomError("unavailable", "the media library is not running on this node")
    return library


async def push_media(app: web.Application, forum_id: str) -> None:
    """Tell the forum's room its library changed ("media")."""
    sio = app.get(SIO)
    if sio is not None:
        await sio.emit("media", media_json(app.get(LIBRARY), forum_id), room=forum_room(forum_id))


# --- REST ------------------------------------------------------------------------


async def get_sources(request: web.Request) -> web.Response:
    forum_id, _ = operator_forum(request)
    rooms = request.app[ROOMS]
    program = await rooms.program(forum_id)
    sources = await rooms.sources(forum_id)
    return json_response({"forum_id": forum_id, "sources": sources_json(sources, program),
                          "program": protocol.program_json(program, sources)})


async def post_program(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request)
    slate = body.get("slate", False)
    if not isinstance(slate, bool):
        raise RoomError("invalid", "slate must be true or false")
    control = control_of(request.app)
    if slate:
        state = await control.cut_to_slate(forum_id, grant)
    else:
        if "source" not in body:
            raise RoomError("invalid", 'send {"source": id} or {"slate": true}')
        source = optional_source(body["source"])
        state = await control.take(forum_id, grant, source, version_arg(body.get("expected_version")))
    return json_response(await program_answer(request.app, state))


async def post_preview(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request)
    if "source" not in body:
        raise RoomError("invalid", 'send {"source": id} (or null to clear the preview)')
    state = await control_of(request.app).set_preview(forum_id, grant, optional_source(body["source"]))
    return json_response(await program_answer(request.app, state))


async def post_manual(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request)
    state = await control_of(request.app).set_manual(forum_id, grant, manual_arg(body.get("manual")))
    return json_response(await program_answer(request.app, state))


async def get_ingest(request: web.Request) -> web.Response:
    """The venue addresses; `?reveal=true` adds the stream key and the URLs
    holding it (hidden otherwise)."""
    forum_id, grant = operator_forum(request)
    reveal = request.query.get("reveal", "false").lower()
    if reveal not in ("true", "false", "1", "0"):
        raise RoomError("invalid", "reveal must be true or false")
    return json_response(await control_of(request.app).ingest(forum_id, grant, reveal=reveal in ("true", "1")))


async def get_media(request: web.Request) -> web.Response:
    forum_id, _ = operator_forum(request)
    return json_response(media_json(request.app.get(LIBRARY), forum_id))


async def post_media(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    library = library_of(request.app)
    # refused from its headers, before a byte is read (the multipart framing is a few hundred bytes)
    library.check_upload(forum_id, grant.subject, None)
    if request.content_length is not None and request.content_length > library.max_upload_bytes + 65536:
        raise RoomError("too_large", f"uploads are limited to {library.max_upload_bytes} bytes; "
                                     f"this one says {request.content_length}")
    if not request.content_type.startswith("multipart/"):
        raise RoomError("unsupported_media_type", 'upload the video as multipart/form-data, field "file"')
    try:
        reader = await request.multipart()
        part = await reader.next()
    except (ValueError, AssertionError) as exc:
        raise RoomError("invalid", f"a malformed multipart body: {exc}") from None
    while part is not None and (not isinstance(part, BodyPartReader) or part.name != "file"):
        part = await reader.next()
    if part is None:
        raise RoomError("invalid", 'the upload has no "file" part')
    filename = part.filename or "video"

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await part.read_chunk(1 << 20):
            yield chunk

    job = await library.start_upload(forum_id, filename, chunks(), grant.subject, grant.name)
    return json_response({"job": job.to_json()}, status=202)


async def post_media_audio(request: web.Request) -> web.Response:
    forum_id, _ = operator_forum(request)
    body = await read_body(request)
    library = library_of(request.app)
    item = library.get(request.match_info["media_id"])
    if item.forum_id != forum_id:
        raise RoomError("not_found", f"forum {forum_id} has no media item {item.id!r}")
    item = await library.select_audio(item.id, body.get("audio_track"))
    await push_media(request.app, forum_id)
    return json_response(item.summary())


async def get_jobs(request: web.Request) -> web.Response:
    forum_id, _ = operator_forum(request)
    return json_response({"forum_id": forum_id, "jobs": [j.to_json() for j in library_of(request.app).jobs(forum_id)]})


async def get_job(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)  # a speaker follows their own upload's job
    job = library_of(request.app).job(request.match_info["job_id"])
    if job.forum_id != forum_id or (job.owner != grant.subject and not grant.allows(forum_id, Role.OPERATOR)):
        raise RoomError("not_found", f"forum {forum_id} has no job {job.id!r} of yours")
    return json_response(job.to_json())


async def get_playouts(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).playouts(forum_id, grant))


async def post_playout(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request)
    result = await start_playout(request.app, forum_id, grant, body.get("media"), body.get("take", False),
                                 body.get("audio_track"))
    return json_response(result, status=201)


async def delete_playout(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    await stop_playout(request.app, forum_id, grant, request.match_info["source_id"])
    return json_response({"ok": True})


async def restart_playout(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).restart_playout(forum_id, grant,
                                                                         request.match_info["source_id"]))


# --- the control page ---------------------------------------------------------------

async def control_page(request: web.Request) -> web.Response:
    from signaling.pages import PAGE_HEADERS, WEB_DIR, forum_values, with_demo_badge  # the pages module owns these

    event = request.app[EVENT]
    forum_id = request.match_info["forum_id"]
    forum = event.forum(forum_id)
    if forum is None:
        raise web.HTTPNotFound(text=f"there is no forum {forum_id[:64]!r}")
    text = (WEB_DIR / "control.html").read_text("utf-8")
    for key, value in forum_values(event, forum).items():  # the same island and names as the other pages
        text = text.replace("{{" + key + "}}", value)
    text = with_demo_badge(text, event)
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


async def control_asset(request: web.Request) -> web.StreamResponse:
    from signaling.pages import WEB_DIR

    name = request.match_info["name"]
    if name not in ("control.js", "control.css"):
        raise web.HTTPNotFound()
    return web.FileResponse(WEB_DIR / name, headers={"Cache-Control": "no-cache"})


# --- wiring ----------------------------------------------------------------------------


def setup_operator(app: web.Application) -> None:
    """The operator's REST routes, the control page and the socket.io
    operator events. The forums they act on are wired by setup_hosting."""
    r = app.router
    base = "/api/forums/{forum_id}"
    r.add_get(f"{base}/sources", get_sources)
    r.add_post(f"{base}/program", post_program)
    r.add_post(f"{base}/preview", post_preview)
    r.add_post(f"{base}/manual", post_manual)
    r.add_get(f"{base}/ingest", get_ingest)
    r.add_get(f"{base}/media", get_media)
    r.add_post(f"{base}/media", post_media)
    r.add_post(f"{base}/media/{{media_id}}/audio", post_media_audio)
    r.add_get(f"{base}/jobs", get_jobs)
    r.add_get(f"{base}/jobs/{{job_id}}", get_job)
    setup_tus_routes(app)
    r.add_get(f"{base}/playouts", get_playouts)
    r.add_post(f"{base}/playouts", post_playout)
    r.add_delete(f"{base}/playouts/{{source_id}}", delete_playout)
    r.add_post(f"{base}/playouts/{{source_id}}/restart", restart_playout)
    r.add_get("/control/{forum_id}", control_page)
    r.add_get("/control-assets/{name}", control_asset)
    sio = app.get(SIO)
    if sio is not None:
        register_operator_events(app, sio)
    else:
        logger.warning("no socket.io server: the operator events are not registered")
