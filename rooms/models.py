"""The conference vocabulary: event, forum, session, speaker, roles, sources.

Frozen dataclasses only: the agenda (what the event file says) and the
small runtime records the store keeps (participants, sources, program
state). No I/O here; nothing imports aiortc, aiohttp, socketio or redis.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from pathlib import Path


class Role(enum.StrEnum):
    """What a token lets its holder do. Ordered: each role can do what the
    ones before it can."""

    VIEWER = "viewer"
    SPEAKER = "speaker"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_ORDER.index(self)

    def at_least(self, other: "Role") -> bool:
        return self.rank >= other.rank


_ROLE_ORDER = [Role.VIEWER, Role.SPEAKER, Role.OPERATOR, Role.ADMIN]


class SpeakerMode(enum.StrEnum):
    LIVE = "live"  # joins from a browser or a WHIP encoder
    RECORDED = "recorded"  # a video file plays at the slot ("simulive")


class ForumKind(enum.StrEnum):
    MAIN = "main"
    SUB = "sub"


class SourceKind(enum.StrEnum):
    LIVE = "live"  # a remote speaker over WebRTC (browser) or WHIP
    VENUE = "venue"  # the venue's cameras over RTMP/SRT
    RECORDED = "recorded"  # a normalized video from the media library
    SLATE = "slate"  # the forum's still/loop, covers every drop


class SourceState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    LOST = "lost"  # dropped; the slate covers it during the grace
    ENDED = "ended"


@dataclass(frozen=True)
class Text:
    """A name or title in English and Chinese."""

    en: str
    zh: str = ""

    def to_json(self) -> dict[str, str]:
        return {"en": self.en, "zh": self.zh}


@dataclass(frozen=True)
class Speaker:
    id: str
    name: Text
    mode: SpeakerMode
    affiliation: Text = Text("")
    video: Path | None = None  # recorded speakers: the file to play at the slot


@dataclass(frozen=True)
class Session:
    id: str
    title: Text
    start: dt.datetime  # timezone-aware
    end: dt.datetime
    speaker_ids: tuple[str, ...] = ()

    def is_live_at(self, now: dt.datetime) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class RestreamDestination:
    """A webcast platform to push a forum's program to. The stream key is
    never in the event file: `key_env` names the environment variable."""

    id: str
    name: str
    url: str  # rtmp:// or rtmps://
    key_env: str | None = None


@dataclass(frozen=True)
class Forum:
    id: str
    name: Text
    kind: ForumKind
    capacity: int  # online viewers admitted at once
    sessions: tuple[Session, ...] = ()
    restreams: tuple[RestreamDestination, ...] = ()
    recorded: bool = True
    room: Text = Text("")  # where it is held at the venue


@dataclass(frozen=True)
class Event:
    id: str
    name: Text
    timezone: str  # IANA name, e.g. "Asia/Shanghai"
    days: tuple[dt.date, ...]
    forums: tuple[Forum, ...]
    speakers: dict[str, Speaker] = field(default_factory=dict)
    public: bool = False  # True: watching needs no token
    demo: bool = False  # True: moved in time to run now (rooms/demo.py); labelled on pages and /api

    def forum(self, forum_id: str) -> Forum | None:
        for forum in self.forums:
            if forum.id == forum_id:
                return forum
        return None


# --- runtime records kept by the store -------------------------------------


@dataclass(frozen=True)
class Participant:
    """Someone connected to one forum (a socket.io session, a WHIP/WHEP
    session). `id` is unique per connection; `node_id` says which node
    holds the connection."""

    id: str
    forum_id: str
    role: Role
    name: str
    node_id: str
    joined_at: float  # unix seconds
    holder: str = ""  # the token's holder (its `sub`): seats and sources are bounded per holder


@dataclass(frozen=True)
class SourceMedia:
    """What a source's encoder sends and what the server does with it, as
    the operator sees it. `handling`: "copy" (forwarded as received),
    "transcode" (encoded once at ingest, for every viewer) or "flagged"
    (forwarded, but viewers may not play it: `reason` says why). Sizes in
    pixels, `frame_rate` in frames per second; `b_frames` None: unknown."""

    video_codec: str | None = None  # "h264", "vp8"; None: the source sends no video
    audio: bool = True  # False: it sends no audio (viewers get silence)
    profile: str | None = None  # "constrained baseline", "high", ...
    profile_level_id: str | None = None  # the encoder's (RFC 6184), e.g. "64001f"
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    b_frames: bool | None = None
    handling: str = "copy"
    reason: str = ""
    sent_profile_level_id: str | None = None  # what viewers receive


@dataclass(frozen=True)
class MediaSource:
    """One input a forum can put on air."""

    id: str
    forum_id: str
    kind: SourceKind
    name: str
    state: SourceState = SourceState.CONNECTING
    node_id: str = ""  # the node whose media plane holds it
    participant_id: str | None = None  # the speaker who publishes it, if any
    holder: str = ""  # the token's holder (its `sub`) that created it
    media: SourceMedia | None = None  # None until its first video parameters (or media) are known


@dataclass(frozen=True)
class ProgramState:
    """What a forum has on air and in preview. `program is None` and
    `slate` both mean the slate is on air."""

    forum_id: str
    program: str | None = None
    preview: str | None = None
    slate: bool = True
    manual: bool = False  # True: the agenda does not take recorded videos by itself
    version: int = 0  # bumped by every change; lets clients drop stale pushes
