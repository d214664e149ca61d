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
every change goes through the forum's ProgramSwitcher / the RoomService,
whose events reach every client of the forum over socket.io. Errors are
the JSON of http_api's middleware. `setup_operator` wires this module,
the switchboard, the forum inputs, the agenda runner and the socket.io
operator events into the app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web

from rooms.errors import RoomError
from rooms.models import MediaSource, ProgramState, Role
from rooms.tokens import Grant
from signaling import protocol
from signaling.app_keys import AGENDA, EVENT, MEDIA, ROOMS, SETTINGS, SIO, TOKENS
from signaling.forum_inputs import INPUTS, ForumInputs, setup_forum_inputs
from signaling.http_api import bearer_token, json_response
from signaling.tus_uploads import setup_tus_routes
from streaming.normalize_job import NormalizeJob
from streaming.program_switcher import ProgramSwitcher, Switchboard

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 16 * 1024
LIVE_WAIT_S = 5.0  # a playout's first packets arrive within milliseconds; this is a generous bound
SWITCHBOARD = web.AppKey("switchboard", Switchboard)


# --- shared with sio_operator ----------------------------------------------------


def sources_json(sources: list[MediaSource], program: ProgramState) -> list[dict[str, Any]]:
    return [
        {**protocol.source_json(s), "on_air": s.id == program.program and not program.slate,
         "in_preview": s.id == program.preview}
        for s in sources
    ]


async def program_answer(app: web.Application, state: ProgramState) -> dict[str, Any]:
    """The program as it is after a change, for every answer that changes
    it (REST and socket.io acks alike): `source` repeats the on-air
    source's record, as the pushes and the join ack do."""
    return protocol.program_json(state, await app[ROOMS].sources(state.forum_id))


def forum_of(app: web.Application, forum_id: object) -> str:
    if not isinstance(forum_id, str) or app[EVENT].forum(forum_id) is None:
        raise RoomError("not_found", f"there is no forum {str(forum_id)[:64]!r} in this event")
    return forum_id


def require_operator(grant: Grant, forum_id: str) -> None:
    grant.require(forum_id, Role.OPERATOR)


async def switcher_of(app: web.Application, forum_id: str) -> ProgramSwitcher:
    board = app.get(SWITCHBOARD)
    if board is None:
        raise RoomError("unavailable", "the program switcher is not running on this node")
    return await board.switcher(forum_id)


def inputs_of(app: web.Application) -> ForumInputs:
    inputs = app.get(INPUTS)
    if inputs is None:
        raise RoomError("unavailable", "the forum inputs are not running on this node")
    return inputs


def optional_source(value: object, what: str = "source") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
        raise RoomError("invalid", f"{what} must be a source id (a short string) or null")
    return value


async def start_playout(app: web.Application, forum_id: str, grant: Grant, media_id: object,
                        take: object, audio_track: object = None) -> dict[str, Any]:
    """Play a library item as a source; with take, put it on air once live.
    `audio_track`: an index of the item's audio_tracks (None: its chosen one)."""
    if not isinstance(media_id, str) or not media_id:
        raise RoomError("invalid", "media must be the id of an item of the forum's media library")
    if not isinstance(take, bool):
        raise RoomError("invalid", "take must be true or false")
    if audio_track is not None and (not isinstance(audio_track, int) or isinstance(audio_track, bool)):
        raise RoomError("invalid", "audio_track must be an index of the item's audio tracks, or null")
    require_operator(grant, forum_id)
    inputs = inputs_of(app)
    item = inputs.library.get(media_id)
    label = app[AGENDA].label_for_video(forum_id, item.name) if AGENDA in app else None
    playout = await inputs.start_playout(forum_id, grant, item, name=label, audio_track=audio_track)
    body: dict[str, Any] = {"playout": playout.to_json(), "program": None}
    if take:
        if not await inputs.wait_live(playout.source_id, LIVE_WAIT_S):
            raise RoomError("unavailable", f"{item.name!r} started but sends nothing; it was not taken")
        switcher = await switcher_of(app, forum_id)
        state = await switcher.take(grant, playout.source_id)
        body["program"] = await program_answer(app, state)
    return body


async def stop_playout(app: web.Application, forum_id: str, grant: Grant, source_id: object) -> None:
    if not isinstance(source_id, str):
        raise RoomError("invalid", "source_id must be the id of a playout")
    await inputs_of(app).stop_playout(forum_id, grant, source_id)  # pushes the new list


def playouts_json(app: web.Application, forum_id: str) -> dict[str, Any]:
    inputs = app.get(INPUTS)
    playouts = inputs.playouts(forum_id) if inputs is not None else []
    return {"forum_id": forum_id, "playouts": [p.to_json() for p in playouts]}


async def push_playouts(app: web.Application, forum_id: str) -> None:
    """Tell the forum's socket.io room what plays (other operators' lists)."""
    sio = app.get(SIO)
    if sio is not None:
        await sio.emit("playouts", playouts_json(app, forum_id), room=f"forum:{forum_id}")


async def push_media(app: web.Application, forum_id: str) -> None:
    sio = app.get(SIO)
    if sio is not None:
        await sio.emit("media", media_json(app, forum_id), room=f"forum:{forum_id}")


def media_json(app: web.Application, forum_id: str) -> dict[str, Any]:
    inputs = app.get(INPUTS)
    items = inputs.library.items(forum_id) if inputs is not None else []
    jobs = inputs.library.jobs(forum_id) if inputs is not None else []
    return {"forum_id": forum_id, "media": [i.summary() for i in items], "jobs": [j.to_json() for j in jobs]}


async def push_job(app: web.Application, job: NormalizeJob) -> None:
    """Tell the forum's operators how a conversion goes ("media_job"), and
    the new library once it is done."""
    sio = app.get(SIO)
    if sio is not None:
        await sio.emit("media_job", job.to_json(), room=f"forum:{job.forum_id}")
    if job.finished:
        await push_media(app, job.forum_id)


# --- REST ------------------------------------------------------------------------


def _grant(request: web.Request, forum_id: str) -> Grant:
    grant = request.app[TOKENS].verify(bearer_token(request))
    require_operator(grant, forum_id)
    return grant


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise RoomError("too_large", f"a request body is at most {MAX_JSON_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise RoomError("too_large", f"a request body is at most {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise RoomError("invalid", "the body is not valid JSON") from None
    except RecursionError:  # json nests deeper than the interpreter's stack
        raise RoomError("invalid", "the body's JSON nests too deeply") from None
    if not isinstance(body, dict):
        raise RoomError("invalid", "the body must be a JSON object")
    return body


def _forum(request: web.Request) -> tuple[str, Grant]:
    forum_id = forum_of(request.app, request.match_info["forum_id"])
    return forum_id, _grant(request, forum_id)


async def get_sources(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    rooms = request.app[ROOMS]
    program = await rooms.program(forum_id)
    sources = await rooms.sources(forum_id)
    return json_response({"forum_id": forum_id, "sources": sources_json(sources, program),
                          "program": protocol.program_json(program, sources)})


async def post_program(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    body = await _body(request)
    switcher = await switcher_of(request.app, forum_id)
    slate = body.get("slate", False)
    if not isinstance(slate, bool):
        raise RoomError("invalid", "slate must be true or false")
    expected = body.get("expected_version")
    if slate:
        state = await switcher.cut_to_slate(grant)
    else:
        if "source" not in body:
            raise RoomError("invalid", 'send {"source": id} or {"slate": true}')
        source = optional_source(body["source"])
        state = await switcher.take(grant, source, expected)
    return json_response(await program_answer(request.app, state))


async def post_preview(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    body = await _body(request)
    if "source" not in body:
        raise RoomError("invalid", 'send {"source": id} (or null to clear the preview)')
    switcher = await switcher_of(request.app, forum_id)
    state = await switcher.set_preview(grant, optional_source(body["source"]))
    return json_response(await program_answer(request.app, state))


async def post_manual(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    body = await _body(request)
    switcher = await switcher_of(request.app, forum_id)
    state = await switcher.set_manual(grant, body.get("manual"))  # type: ignore[arg-type]
    return json_response(await program_answer(request.app, state))


async def get_ingest(request: web.Request) -> web.Response:
    """The venue addresses; `?reveal=true` adds the stream key and the URLs
    holding it (hidden otherwise)."""
    forum_id, grant = _forum(request)
    reveal = request.query.get("reveal", "false").lower()
    if reveal not in ("true", "false", "1", "0"):
        raise RoomError("invalid", "reveal must be true or false")
    return json_response(await inputs_of(request.app).ingest(forum_id, grant, reveal=reveal in ("true", "1")))


async def get_media(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    return json_response(media_json(request.app, forum_id))


async def post_media(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    inputs = inputs_of(request.app)
    # refused from its headers, before a byte is read (the multipart framing is a few hundred bytes)
    inputs.library.check_upload(forum_id, grant.subject, None)
    if request.content_length is not None and request.content_length > inputs.library.max_upload_bytes + 65536:
        raise RoomError("too_large", f"uploads are limited to {inputs.library.max_upload_bytes} bytes; "
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

    job = await inputs.library.start_upload(forum_id, filename, chunks(), grant.subject, grant.name)
    return json_response({"job": job.to_json()}, status=202)


async def post_media_audio(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    body = await _body(request)
    library = inputs_of(request.app).library
    item = library.get(request.match_info["media_id"])
    if item.forum_id != forum_id:
        raise RoomError("not_found", f"forum {forum_id} has no media item {item.id!r}")
    item = await library.select_audio(item.id, body.get("audio_track"))
    await push_media(request.app, forum_id)
    return json_response(item.summary())


async def get_jobs(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    return json_response({"forum_id": forum_id, "jobs": [j.to_json() for j in inputs_of(request.app).library.jobs(forum_id)]})


async def get_job(request: web.Request) -> web.Response:
    from signaling.tus_uploads import uploader_grant

    forum_id, grant = uploader_grant(request)  # a speaker follows their own upload's job
    job = inputs_of(request.app).library.job(request.match_info["job_id"])
    if job.forum_id != forum_id or (job.owner != grant.subject and not grant.allows(forum_id, Role.OPERATOR)):
        raise RoomError("not_found", f"forum {forum_id} has no job {job.id!r} of yours")
    return json_response(job.to_json())


async def get_playouts(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    return json_response(playouts_json(request.app, forum_id))


async def post_playout(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    body = await _body(request)
    result = await start_playout(request.app, forum_id, grant, body.get("media"), body.get("take", False),
                                 body.get("audio_track"))
    return json_response(result, status=201)


async def delete_playout(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    await stop_playout(request.app, forum_id, grant, request.match_info["source_id"])
    return json_response({"ok": True})


async def restart_playout(request: web.Request) -> web.Response:
    forum_id, grant = _forum(request)
    playout = await inputs_of(request.app).restart_playout(forum_id, grant, request.match_info["source_id"])
    await push_playouts(request.app, forum_id)
    return json_response({"playout": playout.to_json()})


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


async def _switchboard_ctx(app: web.Application) -> AsyncIterator[None]:
    board = Switchboard(app[ROOMS], app.get(MEDIA), slate_grace=app[SETTINGS].slate_grace_ms / 1000)
    await board.start()
    app[SWITCHBOARD] = board
    try:
        yield
    finally:
        await board.stop()


def setup_operator(app: web.Application) -> None:
    """The operator's side: forum inputs, switchboard, agenda runner, REST,
    the control page and the socket.io operator events. Call it after the
    socket.io server, the media plane and WHIP/WHEP (the media bridge)."""
    from signaling.agenda_runner import setup_agenda_runner
    from signaling.sio_operator import register_operator_events
    setup_forum_inputs(app)
    app.cleanup_ctx.append(_switchboard_ctx)
    setup_agenda_runner(app)
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
