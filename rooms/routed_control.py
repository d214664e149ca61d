"""`ForumControl` wherever the forum is hosted: `RoutedControl` runs each
operator command on this node's hosts when this node owns the forum's
lease (taking it when nobody does), and otherwise sends it over the bus
to the owner (rooms/forum_forwarding.py), whose router calls its own
hosts through `run_command` and sends the answer back. Arguments and
answers cross as JSON: the `Grant` and `ProgramState` as their fields
(rooms.events.record_to_json / record_from_json), the rest as they are.
The owner not answering within the router's timeout is RoomError
"unavailable"; a refusal comes back with its code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from rooms.errors import RoomError
from rooms.events import record_from_json, record_to_json
from rooms.forum_control import ForumControl, JsonObject
from rooms.forum_forwarding import ForumRouter
from rooms.models import ProgramState
from rooms.store import JsonObject as BusObject
from rooms.tokens import Grant

# command -> (argument names after forum_id and grant, what it answers)
_PROGRAM, _OBJECT, _NONE = "program", "object", "none"
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "take": (("source_id", "expected_version"), _PROGRAM),
    "take_preview": ((), _PROGRAM),
    "cut_to_slate": ((), _PROGRAM),
    "set_preview": (("source_id",), _PROGRAM),
    "set_manual": (("manual",), _PROGRAM),
    "ingest": (("reveal",), _OBJECT),
    "start_playout": (("media_id", "take", "audio_track"), _OBJECT),
    "stop_playout": (("source_id",), _NONE),
    "restart_playout": (("source_id",), _OBJECT),
    "playouts": ((), _OBJECT),
    "restreams": ((), _OBJECT),
    "add_restream": (("name", "url", "stream_key"), _OBJECT),
    "start_restream": (("restream_id",), _OBJECT),
    "stop_restream": (("restream_id",), _OBJECT),
    "remove_restream": (("restream_id",), _NONE),
    "start_recording": (("session",), _OBJECT),
    "stop_recording": ((), _OBJECT),
}

_Scalar = str | int | float | bool | None


def _encode(result: object, kind: str) -> BusObject:
    if kind == _PROGRAM:
        return {"program": cast(BusObject, record_to_json(result))}
    if kind == _OBJECT:
        return {"object": cast(BusObject, result)}
    return {}


def _decode_program(answer: BusObject) -> ProgramState:
    return record_from_json(ProgramState, answer.get("program"))


def _decode_object(answer: BusObject) -> JsonObject:
    value = answer.get("object")
    if not isinstance(value, dict):
        raise RoomError("internal", "the hosting node answered without a result")
    return cast(JsonObject, value)


async def run_command(control: ForumControl, forum_id: str, command: str, body: BusObject) -> BusObject:
    """Run a forwarded command on this node's hosts (the owner's side)."""
    spec = COMMANDS.get(command)
    if spec is None:
        raise RoomError("invalid", f"there is no forum command {command!r}")
    names, kind = spec
    grant = record_from_json(Grant, body.get("grant"))
    args = body.get("args")
    if not isinstance(args, dict) or set(args) - set(names):
        raise RoomError("invalid", f"bad arguments for {command!r}")
    method = cast(Callable[..., Awaitable[object]], getattr(control, command))
    return _encode(await method(forum_id, grant, **args), kind)


class RoutedControl:
    """ForumControl that runs each command where its forum is hosted."""

    def __init__(self, local: ForumControl, router: ForumRouter) -> None:
        self._local = local
        self._router = router
        router.set_local(lambda forum_id, command, body: run_command(local, forum_id, command, body))

    async def _remote(self, forum_id: str, grant: Grant, command: str, **args: _Scalar) -> BusObject | None:
        """None when this node hosts the forum (run it locally), else the owner's answer."""
        owner = await self._router.where(forum_id)
        if owner is None:
            return None
        body: BusObject = {"grant": cast(BusObject, record_to_json(grant)), "args": dict(args)}
        return await self._router.forward(owner, forum_id, command, body)

    async def take(self, forum_id: str, grant: Grant, source_id: str | None = None,
                   expected_version: int | None = None) -> ProgramState:
        answer = await self._remote(forum_id, grant, "take", source_id=source_id, expected_version=expected_version)
        if answer is None:
            return await self._local.take(forum_id, grant, source_id, expected_version)
        return _decode_program(answer)

    async def take_preview(self, forum_id: str, grant: Grant) -> ProgramState:
        answer = await self._remote(forum_id, grant, "take_preview")
        return await self._local.take_preview(forum_id, grant) if answer is None else _decode_program(answer)

    async def cut_to_slate(self, forum_id: str, grant: Grant) -> ProgramState:
        answer = await self._remote(forum_id, grant, "cut_to_slate")
        return await self._local.cut_to_slate(forum_id, grant) if answer is None else _decode_program(answer)

    async def set_preview(self, forum_id: str, grant: Grant, source_id: str | None) -> ProgramState:
        answer = await self._remote(forum_id, grant, "set_preview", source_id=source_id)
        if answer is None:
            return await self._local.set_preview(forum_id, grant, source_id)
        return _decode_program(answer)

    async def set_manual(self, forum_id: str, grant: Grant, manual: bool) -> ProgramState:
        answer = await self._remote(forum_id, grant, "set_manual", manual=manual)
        return await self._local.set_manual(forum_id, grant, manual) if answer is None else _decode_program(answer)

    async def ingest(self, forum_id: str, grant: Grant, reveal: bool = False) -> JsonObject:
        answer = await self._remote(forum_id, grant, "ingest", reveal=reveal)
        return await self._local.ingest(forum_id, grant, reveal) if answer is None else _decode_object(answer)

    async def start_playout(self, forum_id: str, grant: Grant, media_id: str, take: bool = False,
                            audio_track: int | None = None) -> JsonObject:
        answer = await self._remote(forum_id, grant, "start_playout", media_id=media_id, take=take,
                                    audio_track=audio_track)
        if answer is None:
            return await self._local.start_playout(forum_id, grant, media_id, take, audio_track)
        return _decode_object(answer)

    async def stop_playout(self, forum_id: str, grant: Grant, source_id: str) -> None:
        if await self._remote(forum_id, grant, "stop_playout", source_id=source_id) is None:
            await self._local.stop_playout(forum_id, grant, source_id)

    async def restart_playout(self, forum_id: str, grant: Grant, source_id: str) -> JsonObject:
        answer = await self._remote(forum_id, grant, "restart_playout", source_id=source_id)
        if answer is None:
            return await self._local.restart_playout(forum_id, grant, source_id)
        return _decode_object(answer)

    async def playouts(self, forum_id: str, grant: Grant) -> JsonObject:
        answer = await self._remote(forum_id, grant, "playouts")
        return await self._local.playouts(forum_id, grant) if answer is None else _decode_object(answer)

    async def restreams(self, forum_id: str, grant: Grant) -> JsonObject:
        answer = await self._remote(forum_id, grant, "restreams")
        return await self._local.restreams(forum_id, grant) if answer is None else _decode_object(answer)

    async def add_restream(self, forum_id: str, grant: Grant, name: str, url: str, stream_key: str) -> JsonObject:
        # the stream key crosses the bus (Redis pub/sub, never logged); the owner stores it as before
        answer = await self._remote(forum_id, grant, "add_restream", name=name, url=url, stream_key=stream_key)
        if answer is None:
            return await self._local.add_restream(forum_id, grant, name, url, stream_key)
        return _decode_object(answer)

    async def start_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject:
        answer = await self._remote(forum_id, grant, "start_restream", restream_id=restream_id)
        if answer is None:
            return await self._local.start_restream(forum_id, grant, restream_id)
        return _decode_object(answer)

    async def stop_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject:
        answer = await self._remote(forum_id, grant, "stop_restream", restream_id=restream_id)
        if answer is None:
            return await self._local.stop_restream(forum_id, grant, restream_id)
        return _decode_object(answer)

    async def remove_restream(self, forum_id: str, grant: Grant, restream_id: str) -> None:
        if await self._remote(forum_id, grant, "remove_restream", restream_id=restream_id) is None:
            await self._local.remove_restream(forum_id, grant, restream_id)

    async def start_recording(self, forum_id: str, grant: Grant, session: str | None = None) -> JsonObject:
        answer = await self._remote(forum_id, grant, "start_recording", session=session)
        if answer is None:
            return await self._local.start_recording(forum_id, grant, session)
        return _decode_object(answer)

    async def stop_recording(self, forum_id: str, grant: Grant) -> JsonObject:
        answer = await self._remote(forum_id, grant, "stop_recording")
        return await self._local.stop_recording(forum_id, grant) if answer is None else _decode_object(answer)
