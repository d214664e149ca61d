"""The one set of rules for what a holder name, a forum list and a role
may be, used by every path that accepts one: the CLI (`forumcast token`,
`forumcast invite`), token issue, and the server's edges (REST, WHIP,
WHEP, socket.io) through RoomService. Pure functions, no I/O.

Each check returns the cleaned value or raises RoomError("invalid") with
a message a person can act on, so the CLI refuses exactly what the
server would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rooms.errors import RoomError
from rooms.models import Event, Role

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 64
# spreadsheet formula triggers (OWASP "CSV Injection"): a cell starting
# with one of these is evaluated by Excel, LibreOffice and Google Sheets
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_FORUM_SEPARATORS = re.compile(r"[;|]")
ALL_FORUMS = "*"


def check_id(value: object, what: str) -> str:
    """A record id (participant, source, message): 1-128 printable characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise RoomError("invalid", f"{what} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise RoomError("invalid", f"{what} must not contain control characters")
    return value


def check_name(value: object) -> str:
    """A holder's display name: stripped, 1-64 printable characters (no
    newline, tab or other control character)."""
    if not isinstance(value, str) or not value.strip():
        raise RoomError("invalid", "a name (the holder's name) must be a non-empty string")
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise RoomError("invalid", f"a name is at most {MAX_NAME_LENGTH} characters (this one has {len(name)})")
    if not name.isprintable():
        raise RoomError("invalid", "a name must be printable: no newline, tab or other control character")
    return name


def check_role(value: object) -> Role:
    """A role by its value ('viewer', 'speaker', 'operator', 'admin')."""
    if isinstance(value, Role):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return Role(value.strip().lower())
    except ValueError:
        known = ", ".join(role.value for role in Role)
        raise RoomError("invalid", f"unknown role {value!r} (use one of {known})") from None


def check_forums(forums: Iterable[object] | None, event: Event | None = None) -> frozenset[str] | None:
    """The forums a token opens: None (every forum) or a non-empty set of
    ids; with `event`, each must be one of its forums."""
    if forums is None:
        return None
    if isinstance(forums, str):
        raise RoomError("invalid", "forums must be a list of forum ids, not one string")
    ids = list(forums)
    if not ids:
        raise RoomError("invalid", "a token must open at least one forum (or every forum)")
    for forum_id in ids:
        if not isinstance(forum_id, str) or not forum_id or len(forum_id) > MAX_ID_LENGTH or not forum_id.isprintable():
            raise RoomError("invalid", f"{forum_id!r} is not a forum id")
    if event is not None:
        unknown = [f for f in ids if event.forum(f) is None]  # type: ignore[arg-type]
        if unknown:
            raise RoomError("invalid", f"unknown forum {', '.join(repr(u) for u in unknown)}")
    return frozenset(ids)  # type: ignore[arg-type]


def parse_forums(value: str, event: Event | None = None) -> frozenset[str] | None:
    """'*' -> None (every forum); 'a;b' or 'a|b' -> {'a', 'b'}."""
    text = value.strip()
    if text == ALL_FORUMS:
        return None
    ids = [part.strip() for part in _FORUM_SEPARATORS.split(text) if part.strip()]
    if not ids:
        raise RoomError("invalid", "no forums given (list forum ids separated by ';', or '*' for all)")
    return check_forums(ids, event)


def csv_cell(value: str) -> str:
    """A value safe to put in a CSV cell that a spreadsheet opens: one
    starting with a formula trigger gets a leading apostrophe, so it is
    shown as text and never evaluated (OWASP CSV Injection guidance)."""
    if value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value
