"""The operator's actions over socket.io, beside the REST API:

    take          {"forum_id", "source_id"?: id | null, "expected_version"?: int}
                  source_id omitted or null: take what is in preview
    preview       {"forum_id", "source_id": id | null}
    cut_to_slate  {"forum_id"}
    set_manual    {"forum_id", "manual": bool}
    playout_start {"forum_id", "media": id, "take"?: bool, "audio_track"?: int}
    playout_stop  {"forum_id", "source_id": id}

Each is validated, needs an operator grant for the forum (the token the
socket connected with), and is acked with the new state or
{"error": {"code", "message"}}. The resulting room events reach the
forum's socket.io room through sio_server's pump ("program", "preview",
"sources"), plus "playouts" from here, so several operators of one forum
see each other's actions at once. Operators need not have joined to act,
but join to receive the pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web

from rooms.errors import RoomError
from rooms.tokens import Grant
from signaling.sio_server import SOCKETS
from signaling.operator_common import (
    control_of,
    forum_of,
    optional_source,
    program_answer,
    require_operator,
    start_playout,
    stop_playout,
    version_arg,
)

logger = logging.getLogger(__name__)

Ack = dict[str, Any]
Action = Callable[[web.Application, str, Grant, dict[str, Any]], Awaitable[Ack]]
OPERATOR_EVENTS = ("take", "preview", "cut_to_slate", "set_manual", "playout_start", "playout_stop")


async def _take(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    source = optional_source(payload.get("source_id"), "source_id")
    expected = version_arg(payload.get("expected_version"))
    state = await control_of(app).take(forum_id, grant, source, expected)
    return {"program": await program_answer(app, state)}


async def _preview(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    if "source_id" not in payload:
        raise RoomError("invalid", "preview: source_id is required (null clears the preview)")
    source = optional_source(payload["source_id"], "source_id")
    state = await control_of(app).set_preview(forum_id, grant, source)
    return {"program": await program_answer(app, state)}


async def _cut_to_slate(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    state = await control_of(app).cut_to_slate(forum_id, grant)
    return {"program": await program_answer(app, state)}


async def _set_manual(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    manual = payload.get("manual")
    if not isinstance(manual, bool):
        raise RoomError("invalid", "set_manual: manual must be true or false")
    state = await control_of(app).set_manual(forum_id, grant, manual)
    return {"program": await program_answer(app, state)}


async def _playout_start(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    return await start_playout(app, forum_id, grant, payload.get("media"), payload.get("take", False),
                               payload.get("audio_track"))


async def _playout_stop(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    await stop_playout(app, forum_id, grant, payload.get("source_id"))
    return {"ok": True}


async def _recording_start(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    session = payload.get("session")
    if session is not None and not isinstance(session, str):
        raise RoomError("invalid", "session must be a string")
    return {"recording": await control_of(app).start_recording(forum_id, grant, session)}


async def _recording_stop(app: web.Application, forum_id: str, grant: Grant, payload: dict[str, Any]) -> Ack:
    return {"recording": await control_of(app).stop_recording(forum_id, grant)}


ACTIONS: dict[str, Action] = {
    "take": _take,
    "preview": _preview,
    "cut_to_slate": _cut_to_slate,
    "set_manual": _set_manual,
    "playout_start": _playout_start,
    "playout_stop": _playout_stop,
    "recording_start": _recording_start,
    "recording_stop": _recording_stop,
}


def register_operator_events(app: web.Application, sio: socketio.AsyncServer) -> None:
    """Register the operator events on the node's socket.io server; grants
    come from sio_server's SocketServer (the token each socket connected with)."""
    def grant_of(sid: str) -> Grant | None:
        server = app.get(SOCKETS)
        return server.grant_of(sid) if server is not None else None

    for name, action in ACTIONS.items():
        sio.on(name, _handler(app, name, action, grant_of))


def _handler(app: web.Application, name: str, action: Action,
             grant_of: Callable[[str], Grant | None]) -> Callable[..., Awaitable[Ack]]:
    async def handle(sid: str, *args: Any) -> Ack:
        try:
            grant = grant_of(sid)
            if grant is None:
                raise RoomError("gone", "this connection is closing")
            if len(args) != 1 or not isinstance(args[0], dict):
                raise RoomError("invalid", f"{name}: send one payload object")
            payload = args[0]
            forum_id = forum_of(app, payload.get("forum_id"))
            require_operator(grant, forum_id)
            return await action(app, forum_id, grant, payload)
        except RoomError as exc:
            return exc.to_json()
        except Exception:
            logger.exception("operator event %s failed", name)
            return RoomError("internal", "the server failed on this request; it has been logged").to_json()

    return handle
