"""What the rooms publish: frozen dataclasses, one per state change.

Every event carries `node_id`, the node that published it (the store
stamps it), so a node can tell its own events from the others'. Events
and the store's records go to JSON and back through `record_to_json` /
`record_from_json`, driven by the dataclasses' type hints; events travel
as envelopes `{"type", "node_id", "data"}` (see `event_to_json`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from rooms.chat import ChatMessage
from rooms.errors import RoomError
from rooms.models import MediaSource, Participant, ProgramState

T = TypeVar("T")


@dataclass(frozen=True)
class RoomEvent:
    node_id: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class ParticipantJoined(RoomEvent):
    participant: Participant

    @property
    def forum_id(self) -> str:
        return self.participant.forum_id


@dataclass(frozen=True)
class ParticipantLeft(RoomEvent):
    participant: Participant
    reason: str = "left"  # "left" | "node_lost"

    @property
    def forum_id(self) -> str:
        return self.participant.forum_id


@dataclass(frozen=True)
class ViewerCountChanged(RoomEvent):
    forum_id: str
    viewers: int
    total: int


@dataclass(frozen=True)
class SourceAdded(RoomEvent):
    source: MediaSource

    @property
    def forum_id(self) -> str:
        return self.source.forum_id


@dataclass(frozen=True)
class SourceUpdated(RoomEvent):
    source: MediaSource

    @property
    def forum_id(self) -> str:
        return self.source.forum_id


@dataclass(frozen=True)
class SourceRemoved(RoomEvent):
    source: MediaSource

    @property
    def forum_id(self) -> str:
        return self.source.forum_id


@dataclass(frozen=True)
class ProgramChanged(RoomEvent):
    """The program (or the slate/manual flags) changed: `state` is whole."""

    forum_id: str
    state: ProgramState
    by: str  # who: a participant's name, "system" or "agenda"


@dataclass(frozen=True)
class PreviewChanged(RoomEvent):
    forum_id: str
    state: ProgramState
    by: str


@dataclass(frozen=True)
class ChatPosted(RoomEvent):
    message: ChatMessage

    @property
    def forum_id(self) -> str:
        return self.message.forum_id


@dataclass(frozen=True)
class ChatUpdated(RoomEvent):
    message: ChatMessage
    by: str

    @property
    def forum_id(self) -> str:
        return self.message.forum_id


@dataclass(frozen=True)
class NodeLost(RoomEvent):
    """A node stopped heart-beating and its state was reaped."""

    lost_node_id: str
    participants: int
    sources: int


EVENT_TYPES: dict[str, type[RoomEvent]] = {
    cls.__name__: cls
    for cls in (
        ParticipantJoined,
        ParticipantLeft,
        ViewerCountChanged,
        SourceAdded,
        SourceUpdated,
        SourceRemoved,
        ProgramChanged,
        PreviewChanged,
        ChatPosted,
        ChatUpdated,
        NodeLost,
    )
}


def forum_of(event: RoomEvent) -> str | None:
    """The forum an event is about, or None (NodeLost)."""
    return getattr(event, "forum_id", None)


def event_to_json(event: RoomEvent) -> dict[str, Any]:
    name = type(event).__name__
    if EVENT_TYPES.get(name) is not type(event):
        raise RoomError("invalid", f"{name} is not a registered room event")
    data = record_to_json(event)
    node_id = data.pop("node_id")
    return {"type": name, "node_id": node_id, "data": data}


def event_from_json(envelope: Any) -> RoomEvent:
    """Rebuild an event from its envelope; RoomError("invalid") if it is
    not one."""
    if not isinstance(envelope, dict):
        raise RoomError("invalid", "an event envelope must be an object")
    cls = EVENT_TYPES.get(envelope.get("type"))  # type: ignore[arg-type]
    data = envelope.get("data")
    node_id = envelope.get("node_id", "")
    if cls is None:
        raise RoomError("invalid", f"unknown event type {envelope.get('type')!r}")
    if not isinstance(data, dict) or not isinstance(node_id, str):
        raise RoomError("invalid", f"malformed {cls.__name__} envelope")
    return record_from_json(cls, {**data, "node_id": node_id})


# --- the record codec --------------------------------------------------------


def record_to_json(value: Any) -> Any:
    """A dataclass (or anything inside one) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: record_to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list, set, frozenset)):
        return [record_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): record_to_json(v) for k, v in value.items()}
    return value


def record_from_json(cls: type[T], data: Any) -> T:
    """The inverse of record_to_json for the dataclass `cls`; raises
    RoomError("invalid") naming the first field that does not fit."""
    try:
        return typing.cast(T, _decode(cls, data, cls.__name__))
    except _DecodeError as exc:
        raise RoomError("invalid", str(exc)) from None


class _DecodeError(ValueError):
    pass


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Any, where: str) -> Any:
    if tp is Any:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _decode(arg, data, where)
                except _DecodeError:
                    continue
        raise _DecodeError(f"{where}: {data!r} does not fit {tp}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise _DecodeError(f"{where}: expected an object")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _DecodeError(f"{where}.{f.name} is missing")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise _DecodeError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if origin in (tuple, list, frozenset):
        if not isinstance(data, list):
            raise _DecodeError(f"{where}: expected a list")
        inner = args[0] if args else Any
        items = [_decode(inner, v, f"{where}[]") for v in data]
        return origin(items)
    if origin is dict:
        if not isinstance(data, dict):
            raise _DecodeError(f"{where}: expected an object")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _decode(inner, v, f"{where}.{k}") for k, v in data.items()}
    if tp is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        raise _DecodeError(f"{where}: expected a number")
    if tp in (int, str, bool):
        if isinstance(data, tp) and not (tp is int and isinstance(data, bool)):
            return data
        raise _DecodeError(f"{where}: expected {tp.__name__}")
    raise _DecodeError(f"{where}: cannot decode {tp}")
