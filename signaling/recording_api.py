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
"recording" (<recording>) to the forum's operators' room (the
ForumNotifier). Starts and stops go through the ForumControl facade
(app[CONTROL]), which reaches the recorder through `RecorderPort`. Sessions
of forums marked `recorded` are recorded while live by the agenda
(checked every 5 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import ffmpeg_path
from recorder.recorder import Recorder, RecorderError
from recorder.recording import RecordingInfo
from recorder.schedule import due_recordings, plan
from rooms.errors import RoomError
from rooms.models import Role
from rooms.forum_control import JsonObject
from signaling.app_keys import AGENDA, EVENT, HOSTS, MEDIA, NOTIFIER, OUTPUTS, SETTINGS, TOKENS
from signaling.http_api import json_response
from signaling.operator_common import control_of, operator_forum, read_body
from streaming.forum_host import system_grant
from streaming.forum_hosts import NotHostedHere

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


class RecorderPort:
    """The Recorder as the forum hosts' facade sees it
    (streaming/forum_hosts.py RecordingPort): <recording> JSON, and
    RecorderError turned into the RoomError every edge knows."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def start(self, forum_id: str, session: str | None) -> JsonObject:
        try:
            return dict((await self._recorder.start(forum_id, session)).to_json())
        except RecorderError as error:
            raise _error(error) from None

    async def stop(self, forum_id: str) -> JsonObject:
        try:
            return dict((await self._recorder.stop(forum_id)).to_json())
        except RecorderError as error:
            raise _error(error) from None


async def post_start(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    body = await read_body(request) if request.can_read_body else {}
    session = body.get("session")
    if session is not None and not isinstance(session, str):
        raise RoomError("invalid", "session must be a string")
    return json_response(await control_of(request.app).start_recording(forum_id, grant, session), status=201)


async def post_stop(request: web.Request) -> web.Response:
    forum_id, grant = operator_forum(request)
    return json_response(await control_of(request.app).stop_recording(forum_id, grant))


async def _follow_agenda(app: web.Application, interval: float = 5.0) -> None:
    """Record each session of a forum marked `recorded` while it is live
    (recorder/schedule.py decides; manual recordings are left alone), on
    the node that hosts the forum: through this node's ForumHosts, so the
    forum is hosted (its slate on) first and a forum another node hosts is
    left to that node."""
    await asyncio.sleep(0)
    hosts = app.get(HOSTS)
    if hosts is None:
        return  # no media plane here: nothing to record
    grant = system_grant("recorder")
    running: dict[str, str] = {}
    while True:
        due = due_recordings(app[EVENT], app[AGENDA])
        stop, start = plan(due, running)
        for forum_id in stop:
            running.pop(forum_id, None)
            try:
                await hosts.stop_recording(forum_id, grant)
            except RoomError:
                pass  # an operator stopped it already
        for forum_id, session in start:
            try:
                await hosts.start_recording(forum_id, grant, session)
                running[forum_id] = session
            except NotHostedHere:
                logger.debug("recording %s/%s: the forum is hosted by another node", forum_id, session)
            except RoomError as error:
                logger.warning("recording %s/%s not started: %s", forum_id, session, error.message)
            except Exception:
                logger.exception("recording %s/%s failed to start", forum_id, session)
        await asyncio.sleep(interval)


async def _recorder_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]

    def on_change(info: RecordingInfo) -> None:
        notifier = app.get(NOTIFIER)
        if notifier is not None:
            notifier.recording(info.forum_id, dict(info.to_json()))

    plane = app[MEDIA]
    recorder = Recorder(settings.data_dir / "recordings", app[OUTPUTS], ffmpeg_path=ffmpeg_path(settings),
                        on_change=on_change, iso=settings.record_iso, feeds_of=plane.feeds)
    app[RECORDER] = recorder
    hosts = app.get(HOSTS)
    if hosts is not None:
        hosts.recordings = RecorderPort(recorder)
    recovery = asyncio.create_task(recorder.recover(), name="recorder-recover")
    schedule = asyncio.create_task(
        _follow_agenda(app) if settings.record_sessions else asyncio.sleep(0), name="recorder-agenda")
    try:
        yield
    finally:
        for task in (recovery, schedule):
            task.cancel()
        await asyncio.gather(recovery, schedule, return_exceptions=True)
        if hosts is not None:
            hosts.recordings = None
        await recorder.close()


def setup_recordings(app: web.Application) -> None:
    """Routes and the Recorder's cleanup context (after setup_hosting)."""
    app.cleanup_ctx.append(_recorder_ctx)
    r = app.router
    r.add_get("/api/recordings", get_recordings)
    r.add_get("/api/recordings/{recording_id}/media", get_media)
    r.add_post("/api/forums/{forum_id}/recording/start", post_start)
    r.add_post("/api/forums/{forum_id}/recording/stop", post_stop)
