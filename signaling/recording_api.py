"""Recordings over REST and socket.io.

    GET  /api/recordings                          {"recordings": [<recording>...]} of the forums the token operates
    GET  /api/recordings/{id}/media[?token=...]   the finalized MP4 (HTTP range requests, RFC 9110 14)
    POST /api/forums/{forum_id}/recording/start   {"session"?: id} -> 201 <recording>
    POST /api/forums/{forum_id}/recording/stop    <recording> (finalized or failed)

A <recording> is {"id", "forum_id", "session", "start" (Unix s),
"duration_s", "size" (bytes), "state": "recording" | "finalizing" |
"finalized" | "failed", "alert"}. Operator token (`Authorization:
Bearer`, or `?token=` on the media URL so a browser link works); errors
are http_api's JSON. Every change is pushed as the socket.io event
"recording" (<recording>) to the forum's room. Sessions of forums marked
`recorded` are recorded while live by the agenda (checked every 5 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from config.settings import ffmpeg_path
from recorder.recorder import Recorder, RecorderError
from recorder.recording import RecordingInfo
from recorder.schedule import due_recordings, plan
from rooms.errors import RoomError
from rooms.models import Role
from signaling.app_keys import AGENDA, EVENT, MEDIA, SETTINGS, SIO, TOKENS
from signaling.http_api import json_response
from signaling.operator_api import _body, _forum
from signaling.sio_server import operators_room
from signaling.restream_api import OUTPUTS

logger = logging.getLogger(__name__)

RECORDER = web.AppKey("recorder", Recorder)
_CODES = {"conflict": "conflict", "not_found": "not_found", "disk_full": "unavailable"}


def _error(error: RecorderError) -> RoomError:
    return RoomError(_CODES.get(error.code, "invalid"), error.message)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("token")


async def get_recordings(request: web.Request) -> web.Response:
    grant = request.app[TOKENS].verify(_token(request))
    items = [i.to_json() for i in request.app[RECORDER].recordings() if grant.allows(i.forum_id, Role.OPERATOR)]
    return json_response({"recordings": items})


async def get_media(request: web.Request) -> web.StreamResponse:
    grant = request.app[TOKENS].verify(_token(request))
    recording_id = request.match_info["recording_id"][:200]
    path = request.app[RECORDER].media_file(recording_id)
    forum_id = recording_id.split("--", 1)[0]
    if path is None or not grant.allows(forum_id, Role.OPERATOR):
        grant.require(forum_id, Role.OPERATOR)  # the right refusal when it is the grant
        raise RoomError("not_found", f"there is no finalized recording {recording_id!r}")
    return web.FileResponse(path, headers={
        "Content-Type": "video/mp4",
        "Content-Disposition": f'attachment; filename="{path.name}"',
        "Cache-Control": "private, max-age=3600",
    })


async def start_recording(app: web.Application, forum_id: str, session: object) -> dict[str, object]:
    """Start a manual recording (REST and the socket.io event
    "recording_start"); <recording> or RoomError."""
    if session is not None and not isinstance(session, str):
        raise RoomError("invalid", "session must be a string")
    try:
        return (await app[RECORDER].start(forum_id, session)).to_json()
    except RecorderError as error:
        raise _error(error) from None


async def stop_recording(app: web.Application, forum_id: str) -> dict[str, object]:
    """Stop and finalize (REST and "recording_stop"); <recording> or RoomError."""
    try:
        return (await app[RECORDER].stop(forum_id)).to_json()
    except RecorderError as error:
        raise _error(error) from None


async def post_start(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    body = await _body(request) if request.can_read_body else {}
    return json_response(await start_recording(request.app, forum_id, body.get("session")), status=201)


async def post_stop(request: web.Request) -> web.Response:
    forum_id, _ = _forum(request)
    return json_response(await stop_recording(request.app, forum_id))


async def _follow_agenda(app: web.Application, recorder: Recorder, interval: float = 5.0) -> None:
    """Record each session of a forum marked `recorded` while it is live
    (recorder/schedule.py decides; manual recordings are left alone)."""
    await asyncio.sleep(0)
    running: dict[str, str] = {}
    while True:
        due = due_recordings(app[EVENT], app[AGENDA])
        stop, start = plan(due, running)
        for forum_id in stop:
            running.pop(forum_id, None)
            try:
                await recorder.stop(forum_id)
            except RecorderError:
                pass  # an operator stopped it already
        for forum_id, session in start:
            try:
                await recorder.start(forum_id, session)
                running[forum_id] = session
            except RecorderError as error:
                logger.warning("recording %s/%s not started: %s", forum_id, session, error.message)
            except Exception:
                logger.exception("recording %s/%s failed to start", forum_id, session)
        await asyncio.sleep(interval)


async def _recorder_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pending: set[asyncio.Future[Any]] = set()

    def on_change(info: RecordingInfo) -> None:
        sio = app.get(SIO)
        if sio is None:
            return
        # an iso recording's changes have their own event: "recording" is the forum's program state
        event = "iso_recording" if info.source else "recording"
        task = asyncio.ensure_future(sio.emit(event, info.to_json(), room=operators_room(info.forum_id)))
        pending.add(task)
        task.add_done_callback(pending.discard)

    plane = app[MEDIA]
    recorder = Recorder(settings.data_dir / "recordings", app[OUTPUTS], ffmpeg_path=ffmpeg_path(settings),
                        on_change=on_change, iso=settings.record_iso, feeds_of=plane.feeds)
    app[RECORDER] = recorder
    recovery = asyncio.create_task(recorder.recover(), name="recorder-recover")
    schedule = asyncio.create_task(
        _follow_agenda(app, recorder) if settings.record_sessions else asyncio.sleep(0), name="recorder-agenda")
    try:
        yield
    finally:
        for task in (recovery, schedule):
            task.cancel()
        await asyncio.gather(recovery, schedule, return_exceptions=True)
        await recorder.close()
        await asyncio.gather(*pending, return_exceptions=True)


def setup_recordings(app: web.Application) -> None:
    """Routes and the Recorder's cleanup context (after setup_restreams)."""
    app.cleanup_ctx.append(_recorder_ctx)
    r = app.router
    r.add_get("/api/recordings", get_recordings)
    r.add_get("/api/recordings/{recording_id}/media", get_media)
    r.add_post("/api/forums/{forum_id}/recording/start", post_start)
    r.add_post("/api/forums/{forum_id}/recording/stop", post_stop)
