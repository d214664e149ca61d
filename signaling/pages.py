"""The browser pages: /lobby, /speak/{forum_id}, /watch/{forum_id}, /status, and
their static files under /static/ (signaling/web/static), with third-party
files such as the socket.io client committed in the package under
/static/vendor/ (signaling/vendor.py; never a CDN: venue networks and
firewalls are unpredictable; never npm at run time).

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

import yarl
from aiohttp import web

from rooms.agenda import session_json
from rooms.models import Event, Forum
from signaling import protocol
from signaling import vendor
from rooms.errors import RoomError
from signaling.app_keys import EVENT, STORE
from signaling.status_wall import setup_status_wall

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATES = WEB_DIR / "templates"

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


DEMO_BADGE = ('<div class="demo-badge" role="note"><strong data-i18n="demo.badge">Demo</strong> '
              '<span data-i18n="demo.note">the sample agenda, moved to run now</span></div>')


def with_demo_badge(page: str, event: Event) -> str:
    """The page with a visible Demo label first in its body when the event
    runs in demo mode (rooms/demo.py); unchanged otherwise."""
    if not event.demo:
        return page
    return page.replace("<body>", "<body>\n" + DEMO_BADGE, 1)


def _render(name: str, values: dict[str, str], event: Event, status: int = 200,
            connect_to: list[str] | None = None) -> web.Response:
    text = _template(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    text = with_demo_badge(text, event)
    headers = PAGE_HEADERS
    if connect_to:  # the page may ask these origins too (the watch page: placement when its node dies)
        csp = PAGE_HEADERS["Content-Security-Policy"].replace(
            "connect-src 'self'", "connect-src 'self' " + " ".join(connect_to))
        headers = {**PAGE_HEADERS, "Content-Security-Policy": csp}
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=headers)


async def cluster_origins(app: web.Application) -> list[str]:
    """The origins (scheme://host:port) of the cluster's other nodes, from
    their heartbeats: where the watch page asks placement when its own node
    dies (common.js `relocator`); [] on a single node or a store that cannot
    tell now."""
    store = app.get(STORE)
    if store is None:
        return []
    try:
        nodes = await store.nodes()
    except RoomError:
        return []
    origins = set()
    for node in nodes:
        if node.node_id == store.node_id or not node.public_url:
            continue
        try:
            url = yarl.URL(node.public_url)
        except ValueError:
            continue
        if url.scheme in ("http", "https") and url.host:
            origins.add(str(url.origin()))
    return sorted(origins)


def forum_values(event: Event, forum: Forum) -> dict[str, str]:
    # the page script reads the forum from a JSON island, not from HTML
    island = json.dumps({"forum": protocol.forum_json(forum), "event": event.name.to_json(),
                         "public": event.public, "timezone": event.timezone}, ensure_ascii=False)
    island = island.replace("<", "\\u003c")  # script text is raw: no tag may close it early
    return {
        "EVENT_NAME": html.escape(event.name.en),
        "FORUM_NAME": html.escape(forum.name.en),
        "FORUM_NAME_ZH": html.escape(forum.name.zh),
        "FORUM_JSON": island,
        # {en, zh} for the pages' language switch (i18n.js reads data-name)
        "FORUM_NAME_JSON": html.escape(json.dumps(forum.name.to_json(), ensure_ascii=False)),
        "EVENT_NAME_JSON": html.escape(json.dumps(event.name.to_json(), ensure_ascii=False)),
    }


def _not_found(event: Event, forum_id: str) -> web.Response:
    return _render("not_found.html", {
        "EVENT_NAME": html.escape(event.name.en),
        "FORUM_ID": html.escape(forum_id[:64]),
    }, event, status=404)


def _forum_page(template: str, cluster: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`cluster`: the page may also connect to the cluster's other nodes."""
    async def handler(request: web.Request) -> web.Response:
        event = request.app[EVENT]
        forum_id = request.match_info["forum_id"]
        forum = event.forum(forum_id)
        if forum is None:
            return _not_found(event, forum_id)
        connect_to = await cluster_origins(request.app) if cluster else None
        return _render(template, forum_values(event, forum), event, connect_to=connect_to)

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
    # the agenda for the page script (times shown in the guest's zone and the venue's);
    # live/next and viewer counts come from polling GET /api/forums
    island = json.dumps({
        "event": {"name": event.name.to_json(), "timezone": event.timezone, "public": event.public,
                  "days": [day.isoformat() for day in event.days]},
        "speakers": {sid: s.name.to_json() for sid, s in event.speakers.items()},
        "forums": [{"id": f.id, "name": f.name.to_json(), "room": f.room.to_json(), "kind": f.kind.value,
                    "sessions": [session_json(x) for x in f.sessions]} for f in event.forums],
    }, ensure_ascii=False).replace("<", "\\u003c")
    return _render("lobby.html", {
        "EVENT_NAME": html.escape(event.name.en),
        "EVENT_NAME_ZH": html.escape(event.name.zh),
        "EVENT_NAME_JSON": html.escape(json.dumps(event.name.to_json(), ensure_ascii=False)),
        "FORUM_ITEMS": "\n".join(items),
        "LOBBY_JSON": island,
    }, event)


async def status_page(request: web.Request) -> web.Response:
    """The status wall (signaling/status_wall.py); the script checks the token."""
    event = request.app[EVENT]
    return _render("status.html", {
        "EVENT_NAME": html.escape(event.name.en),
        "EVENT_NAME_JSON": html.escape(json.dumps(event.name.to_json(), ensure_ascii=False)),
    }, event)


async def home(request: web.Request) -> web.StreamResponse:
    """The address `serve` prints: the lobby, keeping an invite's token."""
    query = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPFound("/lobby" + query)


async def favicon(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={
        "Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"})


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/lobby", lobby)
    app.router.add_get("/speak/{forum_id}", _forum_page("speak.html", cluster=True))
    app.router.add_get("/watch/{forum_id}", _forum_page("watch.html", cluster=True))
    setup_status_wall(app, status_page)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.router.add_get("/favicon.ico", favicon)  # browsers ask every page for it
    for problem in vendor.problems(vendor.load_manifest()):
        # a broken checkout or package: say so once at start, not per request
        logger.error("vendored browser file: %s (pages will not connect)", problem)
