"""The edge of the signaling protocol: every payload a client sends over
socket.io (and every SDP body WHIP/WHEP receive) is checked here and turned
into a typed request, or refused with RoomError carrying a stable code.

Pure functions and frozen dataclasses only: no sockets, no aiohttp, no
socketio, so the rules are testable on their own. docs/protocol.md is the
prose version of this file; change them together.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from rooms.chat import ChatMessage
from rooms.errors import RoomError
from rooms.events import record_to_json
from rooms.models import Forum, MediaSource, Participant, ProgramState

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024  # a real offer is 2-10 KiB; anything bigger is an attack or a bug
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MEDIA_LINE_RE = re.compile(r"^m=(audio|video|application) ", re.MULTILINE)


@dataclass(frozen=True)
class JoinRequest:
    forum_id: str


@dataclass(frozen=True)
class PublishRequest:
    forum_id: str
    sdp: str


@dataclass(frozen=True)
class UnpublishRequest:
    source_id: str


@dataclass(frozen=True)
class WatchRequest:
    forum_id: str
    sdp: str
    source_id: str | None  # None: follow the forum's program


@dataclass(frozen=True)
class UnwatchRequest:
    viewer_id: str


@dataclass(frozen=True)
class LeaveRequest:
    pass


@dataclass(frozen=True)
class ChatRequest:
    """Post to the joined forum's chat, or (kind "question") to its Q&A
    queue, or (kind "backstage") to its speakers and operators."""

    forum_id: str
    text: str  # length and characters are checked by RoomService.post_message
    kind: str  # "chat" | "question" | "backstage"


@dataclass(frozen=True)
class ChatHistoryRequest:
    forum_id: str


@dataclass(frozen=True)
class ModerateRequest:
    forum_id: str
    message_id: str
    action: str  # rooms.chat.ModerationAction: approve, hide (dismiss), answer, ...


Request = (JoinRequest | PublishRequest | UnpublishRequest | WatchRequest | UnwatchRequest | LeaveRequest
           | ChatRequest | ChatHistoryRequest | ModerateRequest)


# --- field checks ------------------------------------------------------------


def _require_dict(event: str, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        kind = type(payload).__name__ if payload is not None else "nothing"
        raise RoomError("invalid", f"{event}: the payload must be an object, got {kind}")
    return payload


def _identifier(event: str, payload: dict[str, Any], key: str) -> str:
    """A required id field."""
    value = _optional_identifier(event, payload, key)
    if value is None:
        raise RoomError("invalid", f"{event}: missing field {key!r}")
    return value


def _optional_identifier(event: str, payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RoomError("invalid", f"{event}: {key!r} must be a string, got {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        raise RoomError(
            "invalid",
            f"{event}: {key!r} must be 1-128 letters, digits, '.', '_', ':' or '-'",
        )
    return value


def check_sdp(sdp: Any, what: str = "sdp") -> str:
    """An SDP offer that is worth handing to the media plane: a string of at
    most MAX_SDP_BYTES that looks like SDP. Deeper checks (codecs, ICE,
    DTLS) are the media plane's, which answers invalid_sdp/unsupported_codec."""
    if sdp is None:
        raise RoomError("invalid", f"missing field {what!r}")
    if isinstance(sdp, (bytes, bytearray)):
        if len(sdp) > MAX_SDP_BYTES:
            raise RoomError("too_large", f"{what} is {len(sdp)} bytes; the limit is {MAX_SDP_BYTES}")
        try:
            sdp = bytes(sdp).decode("utf-8")
        except UnicodeDecodeError:
            raise RoomError("invalid_sdp", f"{what} is not UTF-8 text") from None
    if not isinstance(sdp, str):
        raise RoomError("invalid", f"{what!r} must be a string, got {type(sdp).__name__}")
    size = len(sdp.encode("utf-8", errors="surrogatepass"))
    if size > MAX_SDP_BYTES:
        raise RoomError("too_large", f"{what} is {size} bytes; the limit is {MAX_SDP_BYTES}")
    if not sdp.lstrip().startswith("v=0"):
        raise RoomError("invalid_sdp", f"{what} is not an SDP offer (it must start with 'v=0')")
    if not _MEDIA_LINE_RE.search(sdp):
        raise RoomError("invalid_sdp", f"{what} has no media section (m=audio or m=video)")
    if "\x00" in sdp:
        raise RoomError("invalid_sdp", f"{what} contains a NUL character")
    return sdp


# --- parsers, one per client event -------------------------------------------


def parse_join(payload: Any) -> JoinRequest:
    data = _require_dict("join", payload)
    forum_id = _identifier("join", data, "forum_id")
    return JoinRequest(forum_id)


def parse_publish(payload: Any) -> PublishRequest:
    data = _require_dict("publish", payload)
    forum_id = _identifier("publish", data, "forum_id")
    return PublishRequest(forum_id, check_sdp(data.get("sdp")))


def parse_unpublish(payload: Any) -> UnpublishRequest:
    data = _require_dict("unpublish", payload)
    source_id = _identifier("unpublish", data, "source_id")
    return UnpublishRequest(source_id)


def parse_watch(payload: Any) -> WatchRequest:
    data = _require_dict("watch", payload)
    forum_id = _identifier("watch", data, "forum_id")
    source_id = _optional_identifier("watch", data, "source_id")
    return WatchRequest(forum_id, check_sdp(data.get("sdp")), source_id)


def parse_unwatch(payload: Any) -> UnwatchRequest:
    data = _require_dict("unwatch", payload)
    viewer_id = _identifier("unwatch", data, "viewer_id")
    return UnwatchRequest(viewer_id)


def parse_leave(payload: Any) -> LeaveRequest:
    # `leave` needs no fields; an absent payload or {} are both fine
    if payload is not None:
        _require_dict("leave", payload)
    return LeaveRequest()


MAX_CHAT_FIELD = 4096  # characters; RoomService.post_message applies the forum's real limit


def _text(event: str, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RoomError("invalid", f"{event}: {key!r} must be a string")
    if len(value) > MAX_CHAT_FIELD:
        raise RoomError("too_large", f"{event}: {key!r} has {len(value)} characters; the limit is {MAX_CHAT_FIELD}")
    return value


def parse_chat(payload: Any) -> ChatRequest:
    data = _require_dict("chat", payload)
    forum_id = _identifier("chat", data, "forum_id")
    kind = data.get("kind", "chat")
    if kind not in ("chat", "question", "backstage"):
        raise RoomError("invalid", "chat: 'kind' is 'chat', 'question' or 'backstage'")
    return ChatRequest(forum_id, _text("chat", data, "text"), kind)


def parse_chat_history(payload: Any) -> ChatHistoryRequest:
    data = _require_dict("chat_history", payload)
    return ChatHistoryRequest(_identifier("chat_history", data, "forum_id"))


def parse_moderate(payload: Any) -> ModerateRequest:
    data = _require_dict("moderate", payload)
    forum_id = _identifier("moderate", data, "forum_id")
    message_id = _identifier("moderate", data, "message_id")
    action = data.get("action")
    if not isinstance(action, str) or len(action) > 32:
        raise RoomError("invalid", "moderate: 'action' must be a string such as 'approve' or 'hide'")
    return ModerateRequest(forum_id, message_id, action)


def check_forum_id(forum_id: str) -> str:
    """A forum id taken from a URL path (WHIP/WHEP, pages)."""
    if not _ID_RE.fullmatch(forum_id):
        raise RoomError("not_found", f"no forum {forum_id[:64]!r}")
    return forum_id


# --- what the server sends ----------------------------------------------------


def error_json(error: RoomError) -> dict[str, dict[str, str]]:
    return error.to_json()


def forum_json(forum: Forum) -> dict[str, Any]:
    return {"id": forum.id, "name": forum.name.to_json(), "kind": forum.kind.value,
            "room": forum.room.to_json()}


def participant_json(participant: Participant) -> dict[str, Any]:
    return {"id": participant.id, "forum_id": participant.forum_id,
            "role": participant.role.value, "name": participant.name}


def source_json(source: MediaSource) -> dict[str, Any]:
    """`media` is null until the source's stream is known, then what its
    encoder sends and how it is handled (see rooms.models.SourceMedia)."""
    return {"id": source.id, "forum_id": source.forum_id, "kind": source.kind.value,
            "name": source.name, "state": source.state.value,
            "participant_id": source.participant_id,
            "media": record_to_json(source.media) if source.media is not None else None}


def program_json(program: ProgramState, sources: list[MediaSource] | None = None) -> dict[str, Any]:
    """What is on air. `source` repeats the on-air source's record (name,
    kind) so a page can say who is speaking without a second lookup."""
    on_air = None
    if program.program is not None and sources is not None:
        on_air = next((source_json(s) for s in sources if s.id == program.program), None)
    return {"forum_id": program.forum_id, "program": program.program,
            "preview": program.preview, "slate": program.slate,
            "manual": program.manual, "version": program.version, "source": on_air}


def message_json(message: ChatMessage) -> dict[str, Any]:
    """A chat message or question as pages show it. `text` and `name` are
    the guests' own words: pages render them as text, never as HTML."""
    return {"id": message.id, "forum_id": message.forum_id, "name": message.name,
            "text": message.text, "kind": message.kind.value, "ts": message.ts,
            "hidden": message.hidden, "answered": message.answered, "pinned": message.pinned,
            "approved": message.approved, "public": message.public}


def counts_json(forum_id: str, counts: tuple[int, int]) -> dict[str, Any]:
    """`viewers` take seats (capacity); `total` adds speakers and operators."""
    viewers, total = counts
    return {"forum_id": forum_id, "viewers": viewers, "total": total}
