"""What the operator edges share (REST: operator_api, restream_api,
recording_api; socket.io: sio_operator): argument checks, the body
reader, the facade lookup and the program answer. A leaf: it imports no
other operator module, so none of them import each other."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from rooms.errors import RoomError
from rooms.forum_control import ForumControl
from rooms.models import MediaSource, ProgramState, Role
from rooms.tokens import Grant
from signaling import protocol
from signaling.app_keys import CONTROL, EVENT, ROOMS, TOKENS
from signaling.http_api import bearer_token

MAX_JSON_BYTES = 16 * 1024


def control_of(app: web.Application) -> ForumControl:
    """The facade every operator command goes through (RoomError
    unavailable when this node hosts no forums)."""
    control = app.get(CONTROL)
    if control is None:
        raise RoomError("unavailable", "the forums are not hosted on this node (no media plane)")
    return control


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


def optional_source(value: object, what: str = "source") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
        raise RoomError("invalid", f"{what} must be a source id (a short string) or null")
    return value


def version_arg(value: object) -> int | None:
    """An `expected_version` (None: take whatever is on air now)."""
    if value is not None and (type(value) is not int or value < 0):
        raise RoomError("invalid", "expected_version must be a version number the server sent")
    return value


def manual_arg(value: object) -> bool:
    if not isinstance(value, bool):
        raise RoomError("invalid", "manual must be true or false")
    return value


def playout_args(media_id: object, take: object, audio_track: object) -> tuple[str, bool, int | None]:
    """A playout start's arguments checked: (media id, take, audio track)."""
    if not isinstance(media_id, str) or not media_id:
        raise RoomError("invalid", "media must be the id of an item of the forum's media library")
    if not isinstance(take, bool):
        raise RoomError("invalid", "take must be true or false")
    if audio_track is not None and (not isinstance(audio_track, int) or isinstance(audio_track, bool)):
        raise RoomError("invalid", "audio_track must be an index of the item's audio tracks, or null")
    return media_id, take, audio_track


async def start_playout(app: web.Application, forum_id: str, grant: Grant, media_id: object,
                        take: object, audio_track: object = None) -> dict[str, Any]:
    """Play a library item as a source; with take, put it on air once live.
    {"playout", "program": the program answer or None}."""
    media, take_it, track = playout_args(media_id, take, audio_track)
    require_operator(grant, forum_id)
    body = dict(await control_of(app).start_playout(forum_id, grant, media, take_it, track))
    program = body.get("program")
    if isinstance(program, dict):
        body["program"] = await program_answer(app, ProgramState(**program))  # type: ignore[arg-type]
    return body


async def stop_playout(app: web.Application, forum_id: str, grant: Grant, source_id: object) -> None:
    if not isinstance(source_id, str):
        raise RoomError("invalid", "source_id must be the id of a playout")
    await control_of(app).stop_playout(forum_id, grant, source_id)  # the hosts push the new list


# --- REST ------------------------------------------------------------------------


def operator_grant(request: web.Request, forum_id: str) -> Grant:
    grant = request.app[TOKENS].verify(bearer_token(request))
    require_operator(grant, forum_id)
    return grant


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (RoomError too_large over MAX_JSON_BYTES,
    invalid when not a JSON object)."""
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


def operator_forum(request: web.Request) -> tuple[str, Grant]:
    """The forum of the route and the operator's grant for it."""
    forum_id = forum_of(request.app, request.match_info["forum_id"])
    return forum_id, operator_grant(request, forum_id)
