"""Invitations: a guests CSV in, the same CSV with a token and an invite
link per guest out.

Input columns: name, email, language, forums, role (name and forums
required; forums separated by ';' or '|', or '*' for every forum; role
defaults to viewer). Every bad row is reported at once, by line number.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from rooms import validation
from rooms.errors import RoomError
from rooms.models import Event, Role
from rooms.tokens import DEFAULT_TTL_SECONDS, TokenService

logger = logging.getLogger(__name__)

COLUMNS = ("name", "email", "language", "forums", "role")
OUTPUT_COLUMNS = COLUMNS + ("token", "invite_link")
REQUIRED_COLUMNS = ("name", "forums")

_EMAIL = re.compile(r"[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")


@dataclass(frozen=True)
class Guest:
    line: int  # line in the CSV file (the header is line 1)
    name: str
    email: str
    language: str
    forums: frozenset[str] | None  # None: every forum
    role: Role


@dataclass(frozen=True)
class Invite:
    guest: Guest
    token: str
    link: str


class InviteError(ValueError):
    """The guests file has problems; `problems` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the guests file has problems:\n" + "\n".join(f"  {p}" for p in problems))


def invite_link(public_url: str, role: Role, forums: Iterable[str] | None, token: str) -> str:
    """Where a guest lands: the page for their role in their one forum, or
    the lobby when they may choose among several."""
    base = public_url.rstrip("/")
    query = f"?token={quote(token, safe='')}"
    chosen = None if forums is None else sorted(set(forums))
    if chosen is None or len(chosen) != 1:
        return f"{base}/lobby{query}"
    forum = quote(chosen[0], safe="")
    if role is Role.VIEWER:
        page = "watch"
    elif role is Role.SPEAKER:
        page = "speak"
    else:
        page = "control"
    return f"{base}/{page}/{forum}{query}"


def default_ttl_seconds(event: Event, now: float | None = None) -> float:
    """Long enough to last through the event: until the day after its last
    day ends (in its time zone), and at least the usual token lifetime."""
    import zoneinfo

    now = time.time() if now is None else now
    last = max(event.days) if event.days else dt.date.today()
    after = dt.datetime.combine(last + dt.timedelta(days=2), dt.time(0), zoneinfo.ZoneInfo(event.timezone))
    return max(float(DEFAULT_TTL_SECONDS), after.timestamp() - now)


def parse_forums(value: str, event: Event) -> frozenset[str] | None:
    """'*' -> None (every forum); 'a;b' or 'a|b' -> {'a', 'b'}. Raises
    RoomError naming unknown forums (rooms/validation.py's rule)."""
    return validation.parse_forums(value, event)


def parse_role(value: str) -> Role:
    """A role (empty: viewer); RoomError for an unknown one."""
    return validation.check_role(value.strip() or Role.VIEWER.value)


def read_guests(source: Path | str, event: Event) -> list[Guest]:
    """Guests from a CSV file path or CSV text; InviteError lists every bad row."""
    if isinstance(source, Path):
        try:
            text = source.read_text(encoding="utf-8-sig")  # Excel writes a BOM
        except (OSError, UnicodeDecodeError) as exc:
            raise InviteError([f"{source}: cannot read ({exc})"]) from None
    else:
        text = source.lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [column.strip().lower() for column in (reader.fieldnames or [])]
    problems: list[str] = []
    if not header:
        raise InviteError(["line 1: the file is empty; expected a header: " + ",".join(COLUMNS)])
    unknown = [column for column in header if column not in COLUMNS]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if unknown:
        problems.append(f"line 1: unknown column {', '.join(repr(c) for c in unknown)} (expected {','.join(COLUMNS)})")
    if missing:
        problems.append(f"line 1: missing column {', '.join(repr(c) for c in missing)}")
    if problems:
        raise InviteError(problems)
    reader.fieldnames = header

    guests: list[Guest] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(f"line {line}: more fields than columns")
            continue
        values = {key: (row.get(key) or "").strip() for key in COLUMNS}
        if not any(values.values()):
            continue  # blank line
        row_problems: list[str] = []
        if not values["name"]:
            row_problems.append("missing name")
        else:
            try:  # the rule the server applies, so no invite is minted it would refuse
                validation.check_name(values["name"])
            except RoomError as exc:
                row_problems.append(exc.message)
        if values["email"] and not _EMAIL.fullmatch(values["email"]):
            row_problems.append(f"bad email {values['email']!r}")
        if values["language"] and not _LANGUAGE.fullmatch(values["language"]):
            row_problems.append(f"bad language {values['language']!r} (use a code like en or zh)")
        forums: frozenset[str] | None = frozenset()
        try:
            forums = parse_forums(values["forums"], event)
        except RoomError as exc:
            row_problems.append(exc.message)
        role = Role.VIEWER
        try:
            role = parse_role(values["role"])
        except RoomError as exc:
            row_problems.append(exc.message)
        if row_problems:
            problems.extend(f"line {line}: {message}" for message in row_problems)
            continue
        guests.append(Guest(line, values["name"], values["email"], values["language"], forums, role))
    if problems:
        raise InviteError(problems)
    return guests


def _subject(guest: Guest) -> str:
    # a stable id per email without putting the address itself in the token
    if guest.email:
        return "guest-" + hashlib.sha256(guest.email.lower().encode()).hexdigest()[:20]
    return "guest-" + uuid.uuid4().hex[:20]


def make_invites(guests: list[Guest], tokens: TokenService, public_url: str, ttl_seconds: float) -> list[Invite]:
    invites = []
    for guest in guests:
        token = tokens.issue(
            guest.role, guest.forums, guest.name, ttl_seconds=ttl_seconds,
            subject=_subject(guest), language=guest.language,
        )
        invites.append(Invite(guest, token, invite_link(public_url, guest.role, guest.forums, token)))
    return invites


def write_invites(invites: list[Invite], out: TextIO) -> None:
    """The input columns plus token and invite_link. A cell a spreadsheet
    would evaluate as a formula (starting with =, +, -, @, tab or CR) is
    written with a leading apostrophe (OWASP CSV Injection)."""
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180; a CR in a cell is then quoted
    writer.writerow(OUTPUT_COLUMNS)
    for invite in invites:
        guest = invite.guest
        forums = "*" if guest.forums is None else ";".join(sorted(guest.forums))
        row = [guest.name, guest.email, guest.language, forums, guest.role.value, invite.token, invite.link]
        writer.writerow([validation.csv_cell(cell) for cell in row])
