"""The forums' side of a node, wired into the app: the media library, the
program outputs, the node's ForumHosts (streaming/forum_hosts.py: every
forum's slate, venue ingest, playouts, switcher, outputs) behind the
ForumControl facade (app[CONTROL]), the agenda's scheduler, resumable
uploads, and `SioNotifier`, the pushes the hosts make to socket.io.

One cleanup context, registered after the media plane and the media
bridge (setup_whip_whep) and before the recorder and HLS (they hold the
program outputs): library, outputs, hosts, scheduler, uploads start in
that order and stop in the reverse one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import socketio
from aiohttp import web

from config.settings import Settings, ffmpeg_path, load_or_create_secret
from rooms.forum_control import JsonObject
from rooms.models import Event
from signaling.app_keys import (AGENDA, CONTROL, EVENT, HOSTS, LIBRARY, MEDIA, NOTIFIER, OUTPUTS, ROOMS,
                                SCHEDULER, SETTINGS, SIO)
from signaling.media_bridge import BRIDGE
from signaling.ownership import bind_hosts, unbind_hosts
from signaling.sio_server import operators_room
from signaling.tus_uploads import TUS, TusStore
from streaming.agenda_scheduler import AgendaScheduler
from streaming.child_processes import run_id
from streaming.forum_host import HostSettings
from streaming.forum_hosts import ForumHosts
from streaming.forum_outputs import OutputProfile, ProgramOutputs
from streaming.media_library import MediaLibrary
from streaming.normalize_job import NormalizeJob
from streaming.normalize_plan import NormalizeRules

logger = logging.getLogger(__name__)


def forum_room(forum_id: str) -> str:
    return f"forum:{forum_id}"


def media_json(library: MediaLibrary | None, forum_id: str) -> dict[str, Any]:
    """The forum's media library and its conversion jobs."""
    items = library.items(forum_id) if library is not None else []
    jobs = library.jobs(forum_id) if library is not None else []
    return {"forum_id": forum_id, "media": [i.summary() for i in items], "jobs": [j.to_json() for j in jobs]}


class SioNotifier:
    """rooms.forum_control.ForumNotifier over socket.io: each push is one
    emit task (tracked, awaited at close), so the hosts never wait on a
    socket. Playouts and jobs go to the forum's room; restreams and
    recordings to its operators' room."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._pending: set[asyncio.Future[Any]] = set()

    def _emit(self, event: str, body: object, room: str) -> None:
        sio: socketio.AsyncServer | None = self._app.get(SIO)
        if sio is None:
            return
        task = asyncio.ensure_future(sio.emit(event, body, room=room))
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("SioNotifier: a push failed: %r", task.exception())

    def playouts(self, forum_id: str, body: JsonObject) -> None:
        self._emit("playouts", body, forum_room(forum_id))

    def restreams(self, forum_id: str, body: JsonObject) -> None:
        self._emit("restreams", body, operators_room(forum_id))

    def recording(self, forum_id: str, body: JsonObject) -> None:
        # an iso recording (one source's) has its own event: "recording" is the forum's program's
        self._emit("iso_recording" if body.get("source") else "recording", body, operators_room(forum_id))

    def media_job(self, forum_id: str, body: JsonObject, finished: bool) -> None:
        self._emit("media_job", body, forum_room(forum_id))
        if finished:
            self.media(forum_id)

    def media(self, forum_id: str) -> None:
        """The forum's library changed (a job finished, a track chosen)."""
        self._emit("media", media_json(self._app.get(LIBRARY), forum_id), forum_room(forum_id))

    async def close(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)


def host_settings(settings: Settings, event: Event, secret: str) -> Callable[[str], HostSettings]:
    """Forum id -> its host's settings: forum i of the event listens for its
    venue on rtmp_port + 1 + i and srt_port + 1 + i (the bare ports stay
    free for a front proxy)."""
    order = [forum.id for forum in event.forums]
    public_host = urlsplit(settings.public_url).hostname or settings.host
    # per run, so a start can remove what a SIGKILLed run left there
    secrets_dir = settings.data_dir / "run" / "secrets" / run_id()

    def settings_for(forum_id: str) -> HostSettings:
        index = order.index(forum_id)
        return HostSettings(ffmpeg=ffmpeg_path(settings), slate_grace=settings.slate_grace_ms / 1000,
                            ingest_host=settings.ingest_host, public_host=public_host,
                            rtmp_port=settings.rtmp_port + 1 + index, srt_port=settings.srt_port + 1 + index,
                            venue_secret=secret, secrets_dir=secrets_dir)

    return settings_for


def output_profile(settings: Settings) -> OutputProfile:
    return OutputProfile(width=settings.output_width, height=settings.output_height, fps=settings.output_fps,
                         video_kbps=settings.output_video_kbps, audio_kbps=settings.output_audio_kbps,
                         preset=settings.output_preset)


async def _hosting_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    library = MediaLibrary(settings.media_dir, ffmpeg=ffmpeg_path(settings),
                           max_upload_bytes=settings.max_upload_bytes,
                           rules=NormalizeRules(max_fps=settings.normalize_max_fps),
                           max_jobs_per_owner=settings.max_conversions_per_token,
                           max_jobs_per_forum=settings.max_conversions_per_forum)
    notifier = SioNotifier(app)
    library.on_job = lambda job: _job_changed(notifier, job)
    app[LIBRARY] = library
    app[NOTIFIER] = notifier
    hosts: ForumHosts | None = None

    def need(forum_id: str) -> None:  # an output started: its program needs the forum's slate
        if hosts is not None:
            hosts.need(forum_id)

    outputs = ProgramOutputs(lambda forum_id: app[MEDIA].program_bus(forum_id), output_profile(settings),
                             ffmpeg_path=ffmpeg_path(settings), on_need=need,
                             private_root=settings.data_dir / "run" / "secrets" / run_id())
    app[OUTPUTS] = outputs
    scheduler: AgendaScheduler | None = None
    uploads = TusStore(settings.data_dir / "media" / "uploads", library, node=settings.node_id)
    try:
        if MEDIA in app and BRIDGE in app:
            hosts = ForumHosts(app[ROOMS], app[MEDIA], app[BRIDGE], library, outputs,
                               host_settings(settings, app[EVENT], load_or_create_secret(settings)), notifier,
                               app[AGENDA])
            await hosts.start()
            app[HOSTS] = hosts
            scheduler = AgendaScheduler(app[AGENDA], library, hosts)
            # several nodes: only a forum's lease owner hosts it, commands go there (signaling/ownership.py)
            app[CONTROL] = await bind_hosts(app, hosts, scheduler)
            await scheduler.start()
            app[SCHEDULER] = scheduler
        else:
            logger.warning("no media plane on this node: forums are not hosted here")
        app[TUS] = uploads
        uploads.start()
        yield
    finally:
        await uploads.stop()  # first: their uploads must outlive the jobs the library now cancels
        if scheduler is not None:
            await scheduler.stop()
        await library.stop()
        await unbind_hosts(app)
        if hosts is not None:
            await hosts.stop()
        await outputs.close()
        await notifier.close()


def _job_changed(notifier: SioNotifier, job: NormalizeJob) -> None:
    notifier.media_job(job.forum_id, job.to_json(), job.finished)


def setup_hosting(app: web.Application) -> None:
    """Register after the media plane and the media bridge contexts
    (setup_whip_whep), before setup_restreams, setup_hls, setup_recordings."""
    if _hosting_ctx not in app.cleanup_ctx:
        app.cleanup_ctx.append(_hosting_ctx)
