"""HLS for the mass audience (RFC 8216), behind any HTTP cache or CDN.

    GET /hls/{forum_id}/index.m3u8?token=...        the live playlist (viewer token of the forum)
    GET /hls/{forum_id}/{segment}?exp=...&sig=...   init-<run>.mp4 / seg-<run>-<n>.m4s

The playlist needs a viewer (or higher) token of the forum (none on a
public event, as for socket.io's guests; a token sent is still checked) and is short-
lived (`Cache-Control: private, max-age=1`). Its segment URIs are signed:
`sig` = HMAC-SHA256(key, "<forum_id>/<exp>") with `exp` (Unix s)
rounded up to a 10-minute boundary plus 10 minutes, so every viewer in
the same window gets the same URLs and a cache serves one copy to all;
segments are `public, max-age=31536000, immutable` (a name is never
reused). The key is derived from the token secret (HKDF, RFC 5869), so
every node of one event signs and accepts the same URLs. A forum's HLS runs while its playlist is requested (it starts
the program encoder on the first request and stops after 60 s without
one). Errors are http_api's JSON: 401/403 token, 403 `forbidden` bad or
expired signature, 404, 503 `unavailable` while the first segments are
being made (with Retry-After). With several nodes the playlist is made by
the node hosting the forum: another node answers 307 to it (its segment
URIs are relative, so they are fetched there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import ffmpeg_path
from rooms.errors import RoomError
from rooms.models import Role
from signaling.app_keys import EVENT, OUTPUTS, SETTINGS, TOKENS
from signaling.ownership import forum_owner, live_redirect_url
from streaming.child_processes import remove_dead_runs, run_id
from streaming.end_of_input import end_reader
from streaming.hls_output import HlsOutput, window_segments

logger = logging.getLogger(__name__)

SIGN_WINDOW_S = 600
IDLE_STOP_S = 60.0
FIRST_PLAYLIST_WAIT_S = 20.0
_SEGMENT = re.compile(r"^(init-[0-9a-f]+\.mp4|seg-[0-9a-f]+-\d{5}\.m4s)$")
_MAP_URI = re.compile(r'URI="([^"]+)"')


class HlsService:
    """The node's HLS outputs, one per forum being watched over HLS."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        # the same on every node of the event (derived from the token secret): a playlist
        # from one node signs segment URLs that any other node, or a CDN in front of all, accepts
        self._key = app[TOKENS].derive_key("hls-segment-urls")
        self.outputs: dict[str, HlsOutput] = {}
        self._lock = asyncio.Lock()

    def sign(self, forum_id: str, exp: int) -> str:
        return hmac.new(self._key, f"{forum_id}/{exp}".encode(), hashlib.sha256).hexdigest()[:32]

    def signed_query(self, forum_id: str, now: float) -> str:
        exp = (int(now) // SIGN_WINDOW_S + 2) * SIGN_WINDOW_S
        return f"exp={exp}&sig={self.sign(forum_id, exp)}"

    def check(self, forum_id: str, exp: str, sig: str, now: float) -> bool:
        return exp.isdigit() and int(exp) > now and hmac.compare_digest(self.sign(forum_id, int(exp)), sig)

    async def ensure(self, forum_id: str) -> HlsOutput:
        async with self._lock:
            output = self.outputs.get(forum_id)
            if output is None:
                settings = self._app[SETTINGS]
                url = await self._app[OUTPUTS].forum(forum_id).acquire("hls")
                window = window_segments(settings.hls_dvr_window_s)
                # per server run: a node sharing the data dir (serve --workers) that starts or stops
                # a forum's HLS (a handover) never empties another's directory
                output = HlsOutput(forum_id, settings.data_dir / "hls" / run_id() / forum_id, url,
                                   ffmpeg_path=ffmpeg_path(settings), window=window)
                await output.start()
                self.outputs[forum_id] = output
            output.last_request = time.monotonic()
            return output

    async def stop(self, forum_id: str) -> None:
        async with self._lock:
            output = self.outputs.pop(forum_id, None)
            if output is not None:
                await end_reader(output.supervisor.stop() if output.supervisor else None, self._app[OUTPUTS].forum(forum_id).release("hls"))
                await output.stop()

    async def reap_idle(self) -> None:
        while True:
            await asyncio.sleep(10)
            now = time.monotonic()
            for forum_id, output in list(self.outputs.items()):
                if now - output.last_request > IDLE_STOP_S:
                    logger.info("HLS of %s idle for %.0f s: stopped", forum_id, IDLE_STOP_S)
                    await self.stop(forum_id)

    async def close(self) -> None:
        for forum_id in list(self.outputs):
            await self.stop(forum_id)


HLS = web.AppKey("hls", HlsService)


def _forum_id(request: web.Request) -> str:
    forum_id = request.match_info["forum_id"]
    if request.app[EVENT].forum(forum_id) is None:
        raise RoomError("not_found", f"there is no forum {forum_id[:64]!r} in this event")
    return forum_id


def rewrite_playlist(text: str, query: str) -> str:
    """Sign every URI of a media playlist (segments and EXT-X-MAP)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            line = _MAP_URI.sub(lambda m: f'URI="{m.group(1)}?{query}"', line)
        elif line and not line.startswith("#"):
            line = f"{line}?{query}"
        lines.append(line)
    return "\n".join(lines) + "\n"


async def get_playlist(request: web.Request) -> web.Response:
    forum_id = _forum_id(request)
    token = request.query.get("token")
    if token is not None or not request.app[EVENT].public:  # a public event: watching needs no invite
        request.app[TOKENS].verify(token).require(forum_id, Role.VIEWER)
    owner = await forum_owner(request.app, forum_id)
    if owner is not None:  # another node hosts the forum and encodes its program: its playlist is there
        raise web.HTTPTemporaryRedirect(await live_redirect_url(request.app, owner, request.path_qs))
    service = request.app[HLS]
    output = await service.ensure(forum_id)
    deadline = time.monotonic() + FIRST_PLAYLIST_WAIT_S
    while not output.playlist.is_file():
        if time.monotonic() > deadline or output.state != "running":
            response = web.json_response(
                RoomError("unavailable", "the HLS stream is starting: try again shortly").to_json(), status=503)
            response.headers["Retry-After"] = "2"
            return response
        await asyncio.sleep(0.2)  # ffmpeg writes the first playlist after its first segment
    with contextlib.suppress(FileNotFoundError):
        text = output.playlist.read_text()
        body = rewrite_playlist(text, service.signed_query(forum_id, time.time()))
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl",
                            headers={"Cache-Control": "private, max-age=1"})
    raise RoomError("unavailable", "the HLS stream restarted: try again")


async def get_segment(request: web.Request) -> web.StreamResponse:
    forum_id = _forum_id(request)
    name = request.match_info["segment"]
    if not _SEGMENT.match(name):
        raise RoomError("not_found", "no such HLS file")
    service = request.app[HLS]
    if not service.check(forum_id, request.query.get("exp", ""), request.query.get("sig", ""), time.time()):
        raise RoomError("forbidden", "the segment URL's signature is missing, wrong or expired: reload the playlist")
    output = service.outputs.get(forum_id)
    path = output.directory / name if output is not None else None
    if path is None or not path.is_file():
        raise RoomError("not_found", "this segment is no longer available")
    content_type = "video/mp4" if name.endswith(".mp4") else "video/iso.segment"
    return web.FileResponse(path, headers={"Content-Type": content_type,
                                           "Cache-Control": "public, max-age=31536000, immutable"})


async def _hls_ctx(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(remove_dead_runs, app[SETTINGS].data_dir / "hls")  # a SIGKILLed run's segments
    service = HlsService(app)
    app[HLS] = service
    reaper = asyncio.create_task(service.reap_idle(), name="hls-reaper")
    try:
        yield
    finally:
        reaper.cancel()
        await asyncio.gather(reaper, return_exceptions=True)
        await service.close()


def setup_hls(app: web.Application) -> None:
    """Routes and the HLS service (after setup_restreams)."""
    app.cleanup_ctx.append(_hls_ctx)
    app.router.add_get("/hls/{forum_id}/index.m3u8", get_playlist)
    app.router.add_get("/hls/{forum_id}/{segment}", get_segment)
