"""The read-only REST API (/healthz, /api/forums) and the middleware that
turns every error into `{"error": {"code", "message"}}`.

A RoomError anywhere becomes its HTTP status and JSON body. Under /api/,
aiohttp's own HTTP errors (unknown route, wrong method, body too large)
and unexpected exceptions are JSON too; an unexpected exception answers
500 with a generic message and leaves its traceback in the log only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from rooms.agenda import AgendaClock, session_json
from rooms.errors import RoomError
from rooms.events import record_to_json
from rooms.models import Event, Forum
from signaling.app_keys import AGENDA, EVENT, ROOMS, SETTINGS

logger = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/",)
dumps = functools.partial(json.dumps, ensure_ascii=False)  # Chinese names stay readable  # paths whose every error is answered in JSON

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's HTTP errors -> our stable codes
_STATUS_CODES = {
    400: "invalid",
    401: "token_missing",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=dumps)


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(JSON_PREFIXES) or request.path == "/api"


def malformed_request(exc: HttpProcessingError) -> RoomError:
    """aiohttp's parser refusing what a handler read (a malformed multipart
    part header, a NUL in a file name, a line over its limit) is the
    client's fault: 400 invalid, never a 500 (issue 8, item 5)."""
    reason = (exc.message or "").strip().splitlines()
    return RoomError("invalid", "a malformed request: " + (reason[0][:200] if reason else "unreadable"))


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (RFC 6750 section 2.1),
    None without the header; RoomError("token_invalid") for another scheme.
    Every HTTP path (REST, WHIP, WHEP) reads tokens through this one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise RoomError("token_invalid", "the Authorization header must be 'Bearer <token>'")
    return value.strip()


def error_json_response(error: RoomError, headers: dict[str, str] | None = None) -> web.Response:
    """A refusal as JSON with its status; a 401 says how to authenticate
    (RFC 6750 section 3: WWW-Authenticate), on every HTTP path alike."""
    response = web.json_response(error.to_json(), status=error.http_status, headers=headers, dumps=dumps)
    if error.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="forumcast"'
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RoomError as exc:
        return error_json_response(exc)
    except HttpProcessingError as exc:
        return error_json_response(malformed_request(exc))
    except web.HTTPException as exc:
        if exc.status < 400 or not _wants_json(request):
            raise
        if exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            message = f"no such API path: {request.path}"
        else:
            message = exc.reason
        response = error_response(exc.status, _STATUS_CODES.get(exc.status, "error"), message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # ConnectionResetError and cancellation are not ours to answer
        if not _wants_json(request):
            raise
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error; the details are in the server log")


def forum_summary(forum: Forum, agenda: AgendaClock) -> dict[str, Any]:
    status = agenda.status(forum.id)
    return {
        "id": forum.id,
        "name": forum.name.to_json(),
        "kind": forum.kind.value,
        "capacity": forum.capacity,
        "room": forum.room.to_json(),
        "recorded": forum.recorded,
        "live": session_json(status.live) if status.live else None,
        "next": session_json(status.next) if status.next else None,
    }


def forum_detail(forum: Forum, event: Event, agenda: AgendaClock) -> dict[str, Any]:
    body = forum_summary(forum, agenda)
    speaker_ids = {sid for session in forum.sessions for sid in session.speaker_ids}
    body["sessions"] = [session_json(session) for session in forum.sessions]
    body["speakers"] = [
        {
            "id": speaker.id,
            "name": speaker.name.to_json(),
            "affiliation": speaker.affiliation.to_json(),
            "mode": speaker.mode.value,
        }
        for sid in sorted(speaker_ids)
        if (speaker := event.speakers.get(sid)) is not None
    ]
    # names only: restream URLs and key variables are for operators
    body["restreams"] = [{"id": r.id, "name": r.name} for r in forum.restreams]
    return body


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "node_id": request.app[SETTINGS].node_id})


COUNTS_TTL_S = 2.0  # the lobby polls this list: one store read per forum per TTL, not per guest
_COUNTS_CACHE: web.AppKey[dict[str, Any]] = web.AppKey("viewer_counts_cache", dict)


async def _viewer_counts(app: web.Application, event: Event) -> dict[str, int]:
    """Guests watching each forum (seats taken, on every node), read at
    most every COUNTS_TTL_S; {} when this app has no rooms (the API alone)."""
    rooms = app.get(ROOMS)
    if rooms is None:
        return {}
    cache = app[_COUNTS_CACHE]
    now = time.monotonic()
    if "at" in cache and cache["at"] + COUNTS_TTL_S > now:
        return dict(cache["counts"])
    found = await asyncio.gather(*(rooms.viewer_count(f.id) for f in event.forums))
    counts = {f.id: c.viewers for f, c in zip(event.forums, found)}
    cache.update(at=now, counts=counts)
    return counts


async def list_forums(request: web.Request) -> web.Response:
    """The event and every forum with its live and next session and
    `viewers` (guests watching now, null when unknown)."""
    event = request.app[EVENT]
    agenda = request.app[AGENDA]
    viewers = await _viewer_counts(request.app, event)
    forums = [forum_summary(forum, agenda) for forum in event.forums]
    for forum in forums:
        forum["viewers"] = viewers.get(forum["id"])
    return json_response(
        {
            "event": {
                "id": event.id,
                "name": event.name.to_json(),
                "timezone": event.timezone,
                "days": [day.isoformat() for day in event.days],
                "public": event.public,
                "demo": event.demo,  # true: the agenda was moved to run now (serve --demo)
            },
            "now": agenda.now().isoformat(),
            "forums": forums,
        }
    )


async def get_forum(request: web.Request) -> web.Response:
    event = request.app[EVENT]
    forum_id = request.match_info["forum_id"]
    forum = event.forum(forum_id)
    if forum is None:
        raise RoomError("not_found", f"there is no forum {forum_id!r} in this event")
    body = forum_detail(forum, event, request.app[AGENDA])
    body["now"] = request.app[AGENDA].now().isoformat()  # the server's clock, for pages' countdowns
    rooms = request.app.get(ROOMS)
    if rooms is not None:
        # what each input sends and whether it is copied or transcoded (and why)
        body["sources"] = [{"id": s.id, "kind": s.kind.value, "name": s.name, "state": s.state.value,
                            "media": record_to_json(s.media) if s.media is not None else None}
                           for s in await rooms.sources(forum.id)]
    return json_response(body)


def setup_http_api(app: web.Application) -> None:
    """Register the middleware and the read-only routes."""
    app.middlewares.append(json_errors)
    app[_COUNTS_CACHE] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/forums", list_forums)
    app.router.add_get("/api/forums/{forum_id}", get_forum)
