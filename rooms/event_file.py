"""The event definition file (TOML): reading it into an `Event` and
reporting every problem in it at once.

Layout (see config/events/summit.toml for a full example)::

    [event]
    id = "wic-2026"
    name = { en = "...", zh = "..." }
    timezone = "Asia/Shanghai"          # IANA name
    days = [2026-11-08, 2026-11-09]     # TOML dates or "YYYY-MM-DD"
    public = false                      # false: guests need invite tokens

    [[speakers]]
    id = "li-wei"
    name = { en = "Li Wei", zh = "李伟" }
    affiliation = { en = "...", zh = "..." }   # or a plain string
    mode = "recorded"                   # live | recorded
    video = "media/li-wei.mp4"          # relative to this file; recorded only

    [[forums]]
    id = "main"
    kind = "main"                       # main | sub
    name = { en = "...", zh = "..." }
    room = { en = "...", zh = "..." }
    capacity = 3000                     # online viewers at once
    recorded = true

    [[forums.sessions]]
    id = "opening"
    start = "2026-11-08T09:00"          # local to the event's time zone
    end = "2026-11-08T09:40"
    title = { en = "...", zh = "..." }
    speakers = ["li-wei"]

    [[forums.restreams]]
    id = "webcast"
    name = "Webcast platform"
    url = "rtmps://live.example.com/app"
    key_env = "FORUMCAST_KEY_MAIN"      # the stream key itself is never here

A problem's `path` locates it, e.g. "forums[3].sessions[2].end"
(indices count from 0 in file order). Messages never repeat the file's own
path: whoever prints them names the file once.

Every problem is reported, not the first of a kind: a value that cannot be
read is replaced by a stand-in so the checks that depend on it still run
(an unknown time zone reads session times in UTC and marks each problem
found that way; a session with a bad id is still checked for overlaps).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import tomllib
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from rooms.models import (
    Event,
    Forum,
    ForumKind,
    RestreamDestination,
    Session,
    Speaker,
    SpeakerMode,
    Text,
)

logger = logging.getLogger(__name__)

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_E = TypeVar("_E", bound=enum.Enum)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOML_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")

_EVENT_KEYS = {"id", "name", "timezone", "days", "public"}
_SPEAKER_KEYS = {"id", "name", "affiliation", "mode", "video"}
_FORUM_KEYS = {"id", "kind", "name", "room", "capacity", "recorded", "sessions", "restreams"}
_SESSION_KEYS = {"id", "start", "end", "title", "speakers"}
_RESTREAM_KEYS = {"id", "name", "url", "key_env"}
# session times are still checked when the event's zone is unknown; the
# problems found that way say so, since the real zone may move them
FALLBACK_TZ = dt.timezone.utc
_FALLBACK_NOTE = " (read in UTC: event.timezone is not usable)"


@dataclass(frozen=True)
class Problem:
    path: str  # where in the file, e.g. "forums[3].sessions[2].end"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class EventFileError(ValueError):
    """The event file cannot be used; `problems` lists every reason."""

    def __init__(self, file: Path, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        count = len(problems)
        super().__init__(f"event file {str(file)!r} has {count} problem{'s' * (count != 1)}:\n{lines}")


def load_event(path: Path) -> Event:
    """The event the file describes, or EventFileError listing every problem."""
    event, problems = _read(Path(path))
    if problems or event is None:
        raise EventFileError(Path(path), problems)
    return event


def check_event(path: Path) -> list[Problem]:
    """Every problem in the file; an empty list means it loads."""
    return _read(Path(path))[1]


def _read(path: Path) -> tuple[Event | None, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem("", "no such file")]
    except IsADirectoryError:
        return None, [Problem("", "is a directory, not an event file")]
    except OSError as exc:
        return None, [Problem("", f"cannot read ({exc.strerror or exc})")]
    except UnicodeDecodeError as exc:
        return None, [Problem("", f"not UTF-8 text (byte {exc.start})")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        where = f"line {found.group(1)}" if found else ""
        return None, [Problem(where, f"TOML syntax error: {exc}")]
    reader = _Reader(path.resolve().parent)
    event = reader.event(data)
    return (None if reader.problems else event), reader.problems


class _Reader:
    """Walks the parsed TOML, collecting problems instead of stopping at the
    first one; returns best-effort values so later checks still run."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[Problem] = []
        self.tz: dt.tzinfo = FALLBACK_TZ
        self.tz_note = ""  # set when session times are read in the fallback zone

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # --- typed field readers -------------------------------------------

    def unknown_keys(self, table: dict[str, Any], known: set[str], path: str) -> None:
        for key in table:
            if key not in known:
                self.problem(_join(path, key), f"unknown key (expected one of: {', '.join(sorted(known))})")

    def table(self, data: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            self.problem(path, f"must be a table, not {_kind(data)}")
            return None
        return data

    def string(self, table: dict[str, Any], key: str, path: str, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                self.problem(_join(path, key), "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(_join(path, key), f"must be a non-empty string, not {_kind(value)}")
            return None
        return value.strip()

    def ident(self, table: dict[str, Any], path: str) -> str | None:
        value = self.string(table, "id", path)
        if value is not None and not _ID.fullmatch(value):
            self.problem(_join(path, "id"), f"{value!r}: use 1-64 lowercase letters, digits, '-' or '_'")
            return None
        return value

    def unique_ident(self, table: dict[str, Any], path: str, seen: set[str], what: str,
                     scope: str = "") -> str | None:
        """The table's id, reported when `seen` already holds it (the id is
        still returned: the rest of the table is checked as usual)."""
        value = self.ident(table, path)
        if value is not None:
            if value in seen:
                self.problem(_join(path, "id"), f"duplicate {what} id {value!r}{scope}")
            seen.add(value)
        return value

    def choice(self, table: dict[str, Any], key: str, path: str, kind: type[_E], default: _E) -> _E:
        """An enum value by name; a wrong one is reported and `default` used."""
        text = self.string(table, key, path, required=False) or default.value
        try:
            return kind(text)
        except ValueError:
            names = " or ".join(member.value for member in kind)
            self.problem(_join(path, key), f"{text!r}: must be {names}")
            return default

    def text(self, table: dict[str, Any], key: str, path: str, required: bool = True) -> Text:
        value = table.get(key)
        where = _join(path, key)
        if value is None:
            if required:
                self.problem(where, "missing")
            return Text("")
        if isinstance(value, str):
            if required and not value.strip():
                self.problem(where, "must not be empty")
            return Text(value.strip())
        if isinstance(value, dict):
            for lang in value:
                if lang not in ("en", "zh"):
                    self.problem(_join(where, lang), "unknown language (expected en or zh)")
            en, zh = value.get("en", ""), value.get("zh", "")
            if not isinstance(en, str) or not isinstance(zh, str):
                self.problem(where, "en and zh must be strings")
                return Text("")
            if required and not en.strip():
                self.problem(_join(where, "en"), "missing: every name needs an English form")
            return Text(en.strip(), zh.strip())
        self.problem(where, f"must be a string or a table {{ en, zh }}, not {_kind(value)}")
        return Text("")

    def boolean(self, table: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.problem(_join(path, key), f"must be true or false, not {_kind(value)}")
            return default
        return value

    def array(self, table: dict[str, Any], key: str, path: str) -> list[Any]:
        value = table.get(key, [])
        if not isinstance(value, list):
            self.problem(_join(path, key), f"must be an array, not {_kind(value)}")
            return []
        return value

    def local_time(self, table: dict[str, Any], key: str, path: str) -> dt.datetime | None:
        value = table.get(key)
        where = _join(path, key)
        if value is None:
            self.problem(where, "missing")
            return None
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                self.problem(where, f"{value!r} is not a date-time like 2026-11-08T14:00")
                return None
        if not isinstance(value, dt.datetime):
            self.problem(where, f"must be a date-time like 2026-11-08T14:00, not {_kind(value)}")
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=self.tz)
        return value.astimezone(self.tz)

    # --- the document ----------------------------------------------------

    def event(self, data: dict[str, Any]) -> Event | None:
        self.unknown_keys(data, {"event", "speakers", "forums"}, "")
        head = self.table(data.get("event", None), "event") if "event" in data else None
        if "event" not in data:
            self.problem("event", "missing: the [event] table")
        head = head or {}
        self.unknown_keys(head, _EVENT_KEYS, "event")
        event_id = self.ident(head, "event")
        name = self.text(head, "name", "event")
        timezone = self.string(head, "timezone", "event")
        self.tz_note = _FALLBACK_NOTE
        if timezone is not None:
            try:
                self.tz = zoneinfo.ZoneInfo(timezone)
                self.tz_note = ""
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.problem("event.timezone", f"{timezone!r} is not a known IANA time zone (e.g. Asia/Shanghai)")
        days = self.days(head)
        public = self.boolean(head, "public", "event", False)

        speakers = self.speakers(data)
        forums = self.forums(data, speakers, days)
        if data.get("forums") == []:
            self.problem("forums", "the event has no forums")
        elif "forums" not in data:
            self.problem("forums", "missing: at least one [[forums]] table")
        if self.problems or event_id is None or timezone is None:
            return None
        return Event(
            id=event_id,
            name=name,
            timezone=timezone,
            days=tuple(days),
            forums=tuple(forums),
            speakers=speakers,
            public=public,
        )

    def days(self, head: dict[str, Any]) -> list[dt.date]:
        raw = head.get("days")
        if raw is None:
            self.problem("event.days", "missing: the dates the event is held")
            return []
        if not isinstance(raw, list) or not raw:
            self.problem("event.days", "must be a non-empty array of dates")
            return []
        days: list[dt.date] = []
        for index, value in enumerate(raw):
            where = f"event.days[{index}]"
            if isinstance(value, str):
                try:
                    value = dt.date.fromisoformat(value.strip())
                except ValueError:
                    self.problem(where, f"{value!r} is not a date like 2026-11-08")
                    continue
            if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
                self.problem(where, f"must be a date like 2026-11-08, not {_kind(value)}")
                continue
            if value in days:
                self.problem(where, f"duplicate day {value.isoformat()}")
                continue
            days.append(value)
        return sorted(days)

    def speakers(self, data: dict[str, Any]) -> dict[str, Speaker]:
        speakers: dict[str, Speaker] = {}
        for index, raw in enumerate(self.array(data, "speakers", "")):
            path = f"speakers[{index}]"
            table = self.table(raw, path)
            if table is None:
                continue
            self.unknown_keys(table, _SPEAKER_KEYS, path)
            speaker_id = self.ident(table, path)
            name = self.text(table, "name", path)
            affiliation = self.text(table, "affiliation", path, required=False)
            mode = self.choice(table, "mode", path, SpeakerMode, SpeakerMode.LIVE)
            video = self.video(table, path, mode)
            if speaker_id is None:
                continue
            if speaker_id in speakers:
                self.problem(_join(path, "id"), f"duplicate speaker id {speaker_id!r}")
                continue
            speakers[speaker_id] = Speaker(speaker_id, name, mode, affiliation, video)
        return speakers

    def video(self, table: dict[str, Any], path: str, mode: SpeakerMode) -> Path | None:
        relative = self.string(table, "video", path, required=False)
        where = _join(path, "video")
        if relative is None:
            if mode is SpeakerMode.RECORDED and "video" not in table:
                self.problem(where, "missing: a recorded speaker needs a video file")
            return None
        video = (self.base / relative).resolve()
        if not video.is_file():
            self.problem(where, f"no such file: {relative} (looked in {video.parent})")
        return video

    def forums(self, data: dict[str, Any], speakers: dict[str, Speaker], days: list[dt.date]) -> list[Forum]:
        forums: list[Forum] = []
        forum_ids: set[str] = set()
        session_ids: set[str] = set()
        for index, raw in enumerate(self.array(data, "forums", "")):
            path = f"forums[{index}]"
            table = self.table(raw, path)
            if table is None:
                continue
            self.unknown_keys(table, _FORUM_KEYS, path)
            forum_id = self.unique_ident(table, path, forum_ids, "forum")
            name = self.text(table, "name", path)
            room = self.text(table, "room", path, required=False)
            kind = self.choice(table, "kind", path, ForumKind, ForumKind.SUB)
            capacity = table.get("capacity")
            if capacity is None:
                self.problem(_join(path, "capacity"), "missing: how many online viewers at once")
                capacity = 0
            elif not isinstance(capacity, int) or isinstance(capacity, bool):
                self.problem(_join(path, "capacity"), f"must be an integer, not {_kind(capacity)}")
                capacity = 0
            elif capacity <= 0:
                self.problem(_join(path, "capacity"), f"{capacity}: must be greater than 0")
            recorded = self.boolean(table, "recorded", path, True)
            sessions = self.sessions(table, path, speakers, days, session_ids)
            restreams = self.restreams(table, path)
            if forum_id is not None:
                forums.append(Forum(forum_id, name, kind, capacity, tuple(sessions), tuple(restreams), recorded, room))
        return forums

    def sessions(
        self,
        forum: dict[str, Any],
        forum_path: str,
        speakers: dict[str, Speaker],
        days: list[dt.date],
        seen: set[str],
    ) -> list[Session]:
        placed: list[tuple[str, str, dt.datetime, dt.datetime]] = []  # path, label, start, end
        built: list[Session] = []
        for index, raw in enumerate(self.array(forum, "sessions", forum_path)):
            path = f"{forum_path}.sessions[{index}]"
            table = self.table(raw, path)
            if table is None:
                continue
            self.unknown_keys(table, _SESSION_KEYS, path)
            session_id = self.unique_ident(table, path, seen, "session")
            title = self.text(table, "title", path)
            start = self.local_time(table, "start", path)
            end = self.local_time(table, "end", path)
            speaker_ids = self.session_speakers(table, path, speakers)
            if start is None or end is None:
                continue
            if end <= start:
                self.time_problem(_join(path, "end"), f"ends at {_hm(end)}, not after its start {_hm(start)}")
            self.within_days(start, _join(path, "start"), days, is_end=False)
            self.within_days(end, _join(path, "end"), days, is_end=True)
            # a session without a usable id still takes its time slot
            placed.append((path, repr(session_id) if session_id else path, start, end))
            if session_id is not None:
                built.append(Session(session_id, title, start, end, tuple(speaker_ids)))
        ordered = sorted(placed, key=lambda item: item[2])
        # each session against the one ending last among those before it, so
        # an inverted or short session in between hides no overlap
        latest: tuple[str, dt.datetime] | None = None  # label, end
        for path, label, start, end in ordered:
            if latest is not None and start < latest[1]:
                self.time_problem(
                    _join(path, "start"),
                    f"session {label} starts at {_hm(start)}, before session "
                    f"{latest[0]} ends at {_hm(latest[1])} in the same forum",
                )
            if end > start and (latest is None or end > latest[1]):  # an inverted session takes no slot
                latest = (label, end)
        return sorted(built, key=lambda session: session.start)

    def time_problem(self, path: str, message: str) -> None:
        """A problem found by comparing session times: marked when they were
        read in the fallback zone."""
        self.problem(path, message + self.tz_note)

    def session_speakers(self, table: dict[str, Any], path: str, speakers: dict[str, Speaker]) -> list[str]:
        ids: list[str] = []
        for index, value in enumerate(self.array(table, "speakers", path)):
            where = f"{path}.speakers[{index}]"
            if not isinstance(value, str):
                self.problem(where, f"must be a speaker id string, not {_kind(value)}")
            elif value not in speakers:
                self.problem(where, f"unknown speaker {value!r} (not in [[speakers]])")
            elif value in ids:
                self.problem(where, f"speaker {value!r} is listed twice")
            else:
                ids.append(value)
        recorded = [i for i in ids if speakers[i].mode is SpeakerMode.RECORDED]
        if len(recorded) > 1:
            # a recorded video starts at the session's start: two would collide
            self.problem(_join(path, "speakers"), f"more than one recorded speaker ({', '.join(recorded)}); "
                         "give each recorded video its own session")
        return ids

    def within_days(self, when: dt.datetime, path: str, days: list[dt.date], is_end: bool) -> None:
        if not days:
            return
        day = when.date()
        # an end at midnight belongs to the day before it
        if is_end and when.time() == dt.time(0) and (day - dt.timedelta(days=1)) in days:
            return
        if day not in days:
            listed = ", ".join(d.isoformat() for d in days)
            self.time_problem(path, f"{when.strftime('%Y-%m-%d %H:%M')} is not on an event day ({listed})")

    def restreams(self, forum: dict[str, Any], forum_path: str) -> list[RestreamDestination]:
        restreams: list[RestreamDestination] = []
        ids: set[str] = set()
        for index, raw in enumerate(self.array(forum, "restreams", forum_path)):
            path = f"{forum_path}.restreams[{index}]"
            table = self.table(raw, path)
            if table is None:
                continue
            self.unknown_keys(table, _RESTREAM_KEYS, path)
            restream_id = self.unique_ident(table, path, ids, "restream", " in this forum")
            name = self.string(table, "name", path) or ""
            url = self.string(table, "url", path)
            if url is not None:
                self.check_rtmp_url(url, _join(path, "url"))
            key_env = self.string(table, "key_env", path, required=False)
            if key_env is not None and not _ENV_NAME.fullmatch(key_env):
                self.problem(_join(path, "key_env"), f"{key_env!r} is not an environment variable name")
            if restream_id is not None and url is not None:
                restreams.append(RestreamDestination(restream_id, name, url, key_env))
        return restreams

    def check_rtmp_url(self, url: str, path: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            self.problem(path, f"{url!r} is not a URL ({exc})")
            return
        if parts.scheme not in ("rtmp", "rtmps"):
            self.problem(path, f"{url!r}: the scheme must be rtmp:// or rtmps://")
        elif not parts.hostname:
            self.problem(path, f"{url!r}: names no host")
        elif port == 0:
            self.problem(path, f"{url!r}: port 0 is not a port")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dt.datetime):
        return f"a date-time ({value.isoformat()})"
    if isinstance(value, dt.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, dt.time):
        return f"a time ({value.isoformat()})"
    return f"{type(value).__name__} {value!r}"


def _hm(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M")
