"""The browser pages: /lobby, /speak/{forum_id}, /watch/{forum_id}, and
their static files under /static/ (signaling/web/static), with the
socket.io client served from npm's copy at /static/vendor/socket.io.min.js
(never a CDN: venue networks and firewalls are unpredictable).

Pages are HTML templates with a few {{placeholders}} filled in here (the
event and forum names, escaped); everything live comes over socket.io.
Invite tokens travel in the query string, so every page says
Referrer-Policy: no-referrer and the links it offers carry no token.
"""

from __future__ import annotations

import functools
import html
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from rooms.models import Event, Forum
from signaling import protocol
from signaling.app_keys import EVENT

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATES = WEB_DIR / "templates"
SOCKET_IO_CLIENT = WEB_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
TUS_CLIENT = WEB_DIR / "node_modules" / "tus-js-client" / "dist" / "tus.min.js"  # resumable uploads

PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
    "Permissions-Policy": "camera=(self), microphone=(self)",
}


@functools.cache
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _render(name: str, values: dict[str, str], status: int = 200) -> web.Response:
    text = _template(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)


def _forum_values(event: Event, forum: Forum) -> dict[str, str]:
    # the page script reads the forum from a JSON island, not from HTML
    island = json.dumps({"forum": protocol.forum_json(forum), "event": event.name.to_json(),
                         "public": event.public}, ensure_ascii=False)
    island = island.replace("<", "\\u003c")  # script text is raw: no tag may close it early
    return {
        "EVENT_NAME": html.escape(event.name.en),
        "FORUM_NAME": html.escape(forum.name.en),
        "FORUM_NAME_ZH": html.escape(forum.name.zh),
        "FORUM_JSON": island,
    }


def _not_found(event: Event, forum_id: str) -> web.Response:
    return _render("not_found.html", {
        "EVENT_NAME": html.escape(event.name.en),
        "FORUM_ID": html.escape(forum_id[:64]),
    }, status=404)


def _forum_page(template: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        event = request.app[EVENT]
        forum_id = request.match_info["forum_id"]
        forum = event.forum(forum_id)
        if forum is None:
            return _not_found(event, forum_id)
        return _render(template, _forum_values(event, forum))

    return handler


async def lobby(request: web.Request) -> web.Response:
    event = request.app[EVENT]
    items = []
    for forum in event.forums:
        zh = f'<span class="zh">{html.escape(forum.name.zh)}</span>' if forum.name.zh else ""
        room = f'<span class="room">{html.escape(forum.room.en)}</span>' if forum.room.en else ""
        items.append(
            f'<li class="forum forum-{forum.kind.value}" data-forum="{html.escape(forum.id)}">'
            f'<a class="watch-link" href="/watch/{html.escape(forum.id)}">'
            f'<span class="name">{html.escape(forum.name.en)}</span>{zh}{room}</a></li>'
        )
    return _render("lobby.html", {
        "EVENT_NAME": html.escape(event.name.en),
        "EVENT_NAME_ZH": html.escape(event.name.zh),
        "FORUM_ITEMS": "\n".join(items),
    })


def _vendor_script(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        if not path.is_file():
            logger.error("%s is missing: run `npm ci` in signaling/web", path)
            return web.Response(status=503, content_type="application/javascript",
                                text=f"/* {path.name} missing on the server: run `npm ci` in signaling/web */")
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600",
                                               "Content-Type": "application/javascript"})
    return serve


socket_io_client = _vendor_script(SOCKET_IO_CLIENT)


async def home(request: web.Request) -> web.StreamResponse:
    """The address `serve` prints: the lobby, keeping an invite's token."""
    query = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPFound("/lobby" + query)


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/lobby", lobby)
    app.router.add_get("/speak/{forum_id}", _forum_page("speak.html"))
    app.router.add_get("/watch/{forum_id}", _forum_page("watch.html"))
    app.router.add_get("/static/vendor/socket.io.min.js", socket_io_client)
    app.router.add_get("/static/vendor/tus.min.js", _vendor_script(TUS_CLIENT))
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
