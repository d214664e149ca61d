"""One forum's life on the node that hosts it: `ForumHost`.

A ForumHost owns everything of its forum that runs on a node: the slate
(encoded once, looped as packets), the venue feed's ingest (its RTMP/SRT
listeners, started on first ask), the recorded-video playouts, the
program switcher (the applier of rooms/program_policy.py: the only thing
that tells the media plane what goes on air), the agenda's slots playing
now (the node's AgendaScheduler, streaming/agenda_scheduler.py, hands it
each due slot) and the forum's program outputs (its `ForumOutputs`:
encoder, restreams; the recorder and HLS hold that encoder too).

Lifecycle (STYLE.md item 5; the shared base, streaming/lifecycle.py):
`state` is NEW -> STARTING -> RUNNING -> STOPPING -> STOPPED, each change
through `_set_state` (logged, and told to the listeners: `on_state`). `start()` brings the parts up in one order: slate first (the
program is never empty), then the switcher (its first cut); agenda slots
come from the scheduler once it runs; the outputs are handed over at
creation (idle: the encoder starts with the first output); the venue
listeners start lazily (`ensure_venue`). `stop()` takes them down in the
reverse order (outputs, slots and playouts, venue, switcher, slate); it
is idempotent and every concurrent caller awaits the same stop, run as
one task (a caller cancelled mid-stop does not cut it short).
`started`/`exited` are set once each.

Media states of the host's sources reach the rooms through the node's
MediaBridge (`adopt`), the one applier; room events reach the switcher
through the node's one pump (streaming/forum_hosts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rooms import program_policy as policy
from rooms.agenda import ScheduledPlayout
from rooms.errors import RoomError
from rooms.forum_control import JsonObject
from rooms.models import Forum, MediaSource, ProgramState, Role, SourceKind, SourceMedia, SourceState
from rooms.service import RoomService
from rooms.tokens import Grant
from streaming.forum_outputs import ForumOutputs
from streaming.lifecycle import Lifecycle
from streaming.media_bridge import MediaBridge
from streaming.media_library import MediaItem, MediaLibrary
from streaming.playout import FilePlayout
from streaming.program_switcher import ProgramSwitcher
from streaming.rtp_source import RtpSource, SourceFeed
from streaming.rtp_udp_ingest import h264_codec, opus_codec
from streaming.slate import Slate, encode_slate
from streaming.venue_ingest import VenueIngest

logger = logging.getLogger(__name__)

SYSTEM_GRANT_TTL_S = 10 * 365 * 24 * 3600.0
SLATE_SIZE = (960, 540)
SLATE_LOOP_S = 0.2  # 3 frames at 15 fps (~200 kbit/s of IDRs): a cut to the slate waits at most this for its IDR
SLATE_RETRY_S = 30
SLATE_ENCODE_TIMEOUT_S = 30.0  # ~1 s on a quiet machine; a hung encoder must not hold the host's start
MAX_PLAYOUTS_PER_FORUM = 8  # each costs a paced task; more is a mistake, not a need
LIVE_WAIT_S = 5.0  # a playout's first packets arrive within milliseconds; this is a generous bound
AGENDA_BY = policy.AGENDA_BY
SECRET_INGEST_FIELDS = ("stream_key", "rtmp_url", "srt_url")  # the key, or URLs that hold it


def system_grant(name: str) -> Grant:
    """The grant the node's own actors (agenda, inputs) act with."""
    return Grant(role=Role.ADMIN, forums=None, name=name, subject=f"system-{name}",
                 expires_at=time.time() + SYSTEM_GRANT_TTL_S)


def slate_id(forum_id: str) -> str:
    return f"slate-{forum_id}"


def venue_id(forum_id: str) -> str:
    return f"venue-{forum_id}"


def venue_key(secret: str, forum_id: str) -> str:
    """A forum's venue stream key: stable across restarts, secret, per forum."""
    return hmac.new(secret.encode(), f"venue-ingest/{forum_id}".encode(), hashlib.sha256).hexdigest()[:24]


@dataclass(frozen=True)
class HostSettings:
    """What a host needs of the node's settings (config/settings.py).

    `rtmp_port`/`srt_port`: this forum's venue listeners (the node gives
    forum i the bare ports + 1 + i); `ingest_host`: where they listen;
    `public_host`: the host name put in the addresses handed out;
    `venue_secret`: the key stream keys are derived from (never logged);
    `secrets_dir`: per run, 0700, where the SRT passphrase file goes."""

    ffmpeg: str
    slate_grace: float
    ingest_host: str
    public_host: str
    rtmp_port: int
    srt_port: int
    venue_secret: str
    secrets_dir: Path


class HostPlane(Protocol):
    """The node's media plane as a host sees it (streaming/media_plane.py)."""

    def add_feed(self, forum_id: str, feed: SourceFeed) -> None: ...

    def remove_feed(self, forum_id: str, source_id: str) -> None: ...

    def set_program(self, forum_id: str, source_id: str | None) -> None: ...


class HostState(str, enum.Enum):  # str: compares with its value, as the other media states read
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class Playout:
    forum_id: str
    source_id: str
    item: MediaItem
    player: FilePlayout
    by: str
    label: str  # the source's name: the agenda's "session — speaker" when known, else the file's

    def to_json(self) -> JsonObject:
        return {"source_id": self.source_id, "media": self.item.id, "name": self.label, "file": self.item.name,
                "audio_track": self.player.audio_track,
                "duration": self.item.duration, "state": self.player.state,
                "position": round(self.player.position, 2), "by": self.by}


@dataclass
class SlotPlaying:
    """An agenda slot whose recorded video plays as `source_id`."""

    playout: ScheduledPlayout
    source_id: str
    on_air: bool = False


class ForumHost(Lifecycle[HostState]):
    """One forum on the node that hosts it (see the module docstring)."""

    def __init__(self, forum: Forum, rooms: RoomService, plane: HostPlane, bridge: MediaBridge,
                 library: MediaLibrary, outputs: ForumOutputs, settings: HostSettings, *,
                 on_playouts: Callable[[str, JsonObject], None] | None = None,
                 on_state: Callable[[str, HostState], None] | None = None,
                 close_outputs: Callable[[str], Awaitable[None]] | None = None) -> None:
        super().__init__(HostState.NEW, f"ForumHost({forum.id})")
        self.forum = forum
        self.forum_id = forum.id
        self._rooms = rooms
        self._plane = plane
        self._bridge = bridge
        self.library = library
        self.outputs = outputs
        self._settings = settings
        self._on_playouts = on_playouts
        if on_state is not None:
            self.add_state_listener(lambda state: on_state(forum.id, state))
        self._close_outputs = close_outputs
        self.switcher = ProgramSwitcher(forum.id, rooms, plane, slate_grace=settings.slate_grace,
                                        node_id=rooms.node_id)
        self.slate: Slate | None = None
        self.venue: VenueIngest | None = None
        self._venue_lock = asyncio.Lock()
        self._playouts: dict[str, Playout] = {}
        self._live: dict[str, asyncio.Event] = {}  # playout source -> set once the rooms hold it live
        self._slots: dict[str, SlotPlaying] = {}  # source id -> the agenda slot it plays
        self._grant = system_grant("inputs")
        self._tasks: set[asyncio.Task[None]] = set()  # playouts ending: awaited at stop, never cut short
        self._slate_retry: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------

    @property
    def state(self) -> HostState:
        return self._state

    async def start(self) -> None:
        """Slate, then switcher (agenda slots and outputs need nothing
        started: the scheduler hands slots to a running host, the encoder
        starts with the first output). A slate that fails to encode is
        retried in the background (the forum works, with an empty program
        meanwhile).
        RuntimeError when not NEW; whatever the switcher's first read of
        the rooms raises (the host is then stopped)."""
        if self._state is not HostState.NEW:
            raise RuntimeError(f"ForumHost({self.forum_id}).start() in state {self._state.value}")
        self._set_state(HostState.STARTING)
        try:
            if not await self._start_slate():
                self._slate_retry = asyncio.create_task(self._retry_slate(), name=f"slate-retry-{self.forum_id}")
            await self.switcher.start()
        except BaseException:
            await self.stop()
            raise
        self._set_state(HostState.RUNNING)
        self.started.set()

    def _stop_begins(self) -> None:
        self._set_state(HostState.STOPPING)  # at once: nothing new starts on a stopping host

    async def _stop(self) -> None:
        """Outputs, agenda slots and playouts, venue, switcher, slate: the
        reverse of start (the one stop every stop() caller awaits)."""
        try:
            await self._stop_parts()
        finally:
            self._set_state(HostState.STOPPED)
            self.exited.set()

    async def _stop_parts(self) -> None:
        retry, self._slate_retry = self._slate_retry, None
        if retry is not None:
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        # a playout that is ending finishes (its source unregistered), then the rest end
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._close_outputs is not None:
            await _logged(self._close_outputs(self.forum_id), f"ForumHost({self.forum_id}) outputs")
        self._slots.clear()
        for source_id in list(self._playouts):
            await _logged(self._end_playout(source_id), f"ForumHost({self.forum_id}) playout {source_id}")
        venue, self.venue = self.venue, None
        if venue is not None:
            await _logged(venue.stop(), f"ForumHost({self.forum_id}) venue")  # reaps its ffmpegs
            self._bridge.release(venue.source_id)
            with contextlib.suppress(Exception):
                self._plane.remove_feed(self.forum_id, venue.source_id)
            with contextlib.suppress(RoomError):
                await self._rooms.unregister_source(self.forum_id, venue.source_id)
        await self.switcher.stop()
        slate, self.slate = self.slate, None
        if slate is not None:
            with contextlib.suppress(Exception):
                self._plane.remove_feed(self.forum_id, slate_id(self.forum_id))
            await _logged(slate.stop(), f"ForumHost({self.forum_id}) slate")

    def _require_running(self) -> None:
        if self._state is not HostState.RUNNING:
            raise RoomError("unavailable", f"forum {self.forum_id} is {self._state.value} on this node; try again")

    # --- slate ---------------------------------------------------------------

    async def _start_slate(self) -> bool:
        video = RtpSource("video", h264_codec(), name=slate_id(self.forum_id))
        audio = RtpSource("audio", opus_codec(), name=slate_id(self.forum_id))
        name = self.forum.name
        title = name.en if not name.zh else f"{name.en}\n{name.zh}"
        began = time.monotonic()
        try:
            # a short loop: each loop opens with the slate's only IDR, and a cut to
            # the slate waits for one (Slate cannot make one on request)
            loop = await asyncio.wait_for(
                encode_slate(title, ffmpeg_path=self._settings.ffmpeg, width=SLATE_SIZE[0], height=SLATE_SIZE[1],
                             fps=15, seconds=SLATE_LOOP_S),
                SLATE_ENCODE_TIMEOUT_S)
            slate = Slate(title, video, audio, source_id=slate_id(self.forum_id), loop=loop)
            await slate.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ForumHost(%s): the slate failed to start; retrying in %d s", self.forum_id,
                             SLATE_RETRY_S)
            return False
        self.slate = slate
        self._plane.add_feed(self.forum_id, SourceFeed(slate_id(self.forum_id), video, audio, kind=SourceKind.SLATE))
        logger.info("ForumHost(%s): slate on in %.2f s", self.forum_id, time.monotonic() - began)
        return True

    async def _retry_slate(self) -> None:
        while True:
            await asyncio.sleep(SLATE_RETRY_S)  # a backoff, so a broken encoder is not re-run in a loop
            if await self._start_slate():
                return

    # --- venue ---------------------------------------------------------------

    async def ingest(self, grant: Grant, reveal: bool = False) -> JsonObject:
        """Where the venue's encoder sends this forum's feed; starts the
        listeners on first ask (two idle ffmpegs per forum, ~50 MB: never
        all forums' at boot). The stream key (and the URLs that hold it)
        only with `reveal`: else null, and `keys_hidden` is true."""
        grant.require(self.forum_id, Role.OPERATOR)
        venue = await self.ensure_venue()
        # only addresses whose listener is up now: a URL of a port nobody
        # answers (or a stray holds) would send the venue to a dead end
        urls: JsonObject = dict(venue.urls(self._settings.public_host))
        if not reveal:
            urls.update({key: None for key in SECRET_INGEST_FIELDS})
        listening: JsonObject = dict(venue.listening())
        return {"forum_id": self.forum_id, "source_id": venue.source_id, "state": venue.state,
                "protocol": venue.protocol, "keys_hidden": not reveal, "listening": listening, **urls}

    async def ensure_venue(self) -> VenueIngest:
        """The venue listeners, started if not running (RoomError
        unavailable when the ports cannot be bound)."""
        self._require_running()
        if self.venue is None:
            async with self._venue_lock:
                if self.venue is None:
                    self.venue = await self._start_venue()
        return self.venue

    async def _start_venue(self) -> VenueIngest:
        s = self._settings
        source_id = venue_id(self.forum_id)
        video = RtpSource("video", h264_codec(), name=source_id)
        audio = RtpSource("audio", opus_codec(), name=source_id)
        venue = VenueIngest(self.forum_id, s.rtmp_port, s.srt_port, venue_key(s.venue_secret, self.forum_id),
                            video, audio, source_id=source_id, ffmpeg=s.ffmpeg,
                            on_media=lambda media: self._venue_media(source_id, media),
                            listen_host=s.ingest_host, secrets_dir=s.secrets_dir)
        source = MediaSource(source_id, self.forum_id, SourceKind.VENUE, "Venue", state=SourceState.CONNECTING)
        await self._rooms.register_source(self.forum_id, self._grant, source)
        self._bridge.adopt(self.forum_id, source_id)
        try:
            await venue.start()
        except Exception as exc:
            self._bridge.release(source_id)
            with contextlib.suppress(RoomError):
                await self._rooms.unregister_source(self.forum_id, source_id)
            logger.exception("ForumHost(%s): the venue ingest failed to start", self.forum_id)
            raise RoomError("unavailable", f"cannot listen for the venue feed on ports {s.rtmp_port}/"
                                           f"{s.srt_port}: {exc}") from None
        if not await venue.wait_listening(timeout=10.0):
            logger.warning("ForumHost(%s): the venue listeners are not all up: %s", self.forum_id,
                           venue.listening())
        self._plane.add_feed(self.forum_id, SourceFeed(source_id, video, audio, kind=SourceKind.VENUE))
        return venue

    def _venue_media(self, source_id: str, media: SourceMedia) -> None:
        self._bridge.report_media(self.forum_id, source_id, media)

    # --- playouts ------------------------------------------------------------

    def playouts(self) -> list[Playout]:
        return list(self._playouts.values())

    def playout(self, source_id: str) -> Playout:
        found = self._playouts.get(source_id)
        if found is None:
            raise RoomError("not_found", f"forum {self.forum_id} has no playout {source_id!r}")
        return found

    def playouts_json(self) -> JsonObject:
        return {"forum_id": self.forum_id, "playouts": [p.to_json() for p in self._playouts.values()]}

    async def start_playout(self, grant: Grant, item: MediaItem, name: str | None = None,
                            start_at: float = 0.0, audio_track: int | None = None) -> Playout:
        """Play a library item as a new RECORDED source, from the start or
        from `start_at` seconds in (its next keyframe), with its chosen
        audio track or `audio_track` (an index of item.audio_tracks).
        RoomError: forbidden (the rooms decide), not_found, invalid,
        too_many_sources, unavailable."""
        self._require_running()
        if item.forum_id != self.forum_id:
            raise RoomError("not_found", f"forum {self.forum_id} has no media item {item.id!r}")
        if len(self._playouts) >= MAX_PLAYOUTS_PER_FORUM:
            raise RoomError("too_many_sources", f"at most {MAX_PLAYOUTS_PER_FORUM} playouts per forum: stop one first")
        path = self.library.path(item)
        if not path.is_file():
            raise RoomError("not_found", f"the file of media item {item.id!r} is missing")
        track = item.audio_track if audio_track is None else audio_track
        if not 0 <= track < max(1, len(item.audio_tracks)):
            raise RoomError("invalid", f"audio_track must be an index of the item's {len(item.audio_tracks)} "
                                       "audio tracks")
        source_id = "rec-" + uuid.uuid4().hex[:12]
        label = (name or item.name)[:64]
        source = MediaSource(source_id, self.forum_id, SourceKind.RECORDED, label, state=SourceState.CONNECTING)
        await self._rooms.register_source(self.forum_id, grant, source)
        video = RtpSource("video", h264_codec(), name=source_id)
        audio = RtpSource("audio", opus_codec(), name=source_id)
        player = FilePlayout(path, source_id, video, audio, audio_track=track,
                             on_ended=lambda: self._spawn(self._end_playout(source_id)))
        playout = Playout(self.forum_id, source_id, item, player, grant.name, label)
        self._playouts[source_id] = playout
        self._bridge.adopt(self.forum_id, source_id, lambda state: self._playout_state(source_id, state))
        try:
            self._plane.add_feed(self.forum_id, SourceFeed(source_id, video, audio, kind=SourceKind.RECORDED))
            await player.start(start_at)
        except Exception:
            await self._end_playout(source_id)
            logger.exception("ForumHost(%s): playout %s of %s failed to start", self.forum_id, source_id, item.id)
            raise RoomError("unavailable", f"could not play {item.name!r}") from None
        logger.info("ForumHost(%s): %s plays %s (%s) as %s", self.forum_id, grant.name, item.id, item.name,
                    source_id)
        self._playouts_changed()
        return playout

    def _playout_state(self, source_id: str, state: SourceState) -> None:
        if state is SourceState.LIVE and source_id in self._playouts:
            self._live.setdefault(source_id, asyncio.Event()).set()

    async def wait_live(self, source_id: str, timeout: float = LIVE_WAIT_S) -> bool:
        """Wait until the rooms hold the playout as live (False on timeout)."""
        event = self._live.setdefault(source_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def restart_playout(self, grant: Grant, source_id: str) -> Playout:
        grant.require(self.forum_id, Role.OPERATOR)
        playout = self.playout(source_id)
        await playout.player.restart()
        self._playouts_changed()
        return playout

    async def stop_playout(self, grant: Grant, source_id: str) -> None:
        grant.require(self.forum_id, Role.OPERATOR)
        self.playout(source_id)
        await self._end_playout(source_id)

    async def _end_playout(self, source_id: str) -> None:
        playout = self._playouts.pop(source_id, None)
        self._live.pop(source_id, None)
        self._slots.pop(source_id, None)
        if playout is None:
            return
        await playout.player.stop()
        self._bridge.release(source_id)
        with contextlib.suppress(Exception):
            self._plane.remove_feed(self.forum_id, source_id)
        with contextlib.suppress(RoomError):
            await self._rooms.unregister_source(self.forum_id, source_id)
        logger.info("ForumHost(%s): playout %s ended", self.forum_id, source_id)
        self._playouts_changed()

    def _playouts_changed(self) -> None:
        if self._on_playouts is not None:
            try:
                self._on_playouts(self.forum_id, self.playouts_json())
            except Exception:
                logger.exception("ForumHost(%s): telling about the playouts failed", self.forum_id)

    # --- agenda slots (simulive) -------------------------------------------------

    async def play_slot(self, slot: ScheduledPlayout, item: MediaItem, label: str, start_at: float,
                        grant: Grant) -> SlotPlaying:
        """Play a due slot's video (from `start_at` s) and put it on air
        once live, unless the forum is in manual mode (the operator then
        sees it as a tile to take). RoomError as start_playout."""
        playout = await self.start_playout(grant, item, name=label, start_at=start_at)
        playing = SlotPlaying(slot, playout.source_id)
        self._slots[playing.source_id] = playing
        if await self.wait_live(playing.source_id, LIVE_WAIT_S):
            try:
                state = await self.switcher.take_system(playing.source_id, AGENDA_BY)
            except RoomError as exc:
                logger.warning("ForumHost(%s): could not take %s: %s", self.forum_id, playing.source_id,
                               exc.message)
                state = None
            playing.on_air = state is not None
        return playing

    def slots(self) -> list[SlotPlaying]:
        return list(self._slots.values())

    async def end_slots(self, now: dt.datetime, grant: Grant) -> None:
        """Stop the slots whose time is over at `now` (an aware datetime);
        forget those whose file played out."""
        for source_id, playing in list(self._slots.items()):
            until = playing.playout.until
            if source_id not in self._playouts:
                self._slots.pop(source_id, None)  # the file played out
            elif until is not None and now >= until:
                logger.info("ForumHost(%s): slot of %s is over: stopping %s", self.forum_id,
                            playing.playout.speaker_id, source_id)
                self._slots.pop(source_id, None)
                with contextlib.suppress(RoomError):
                    await self.stop_playout(grant, source_id)

    # --- program (the switcher; the rooms authorize) -------------------------------

    async def take(self, grant: Grant, source_id: str | None, expected_version: int | None) -> ProgramState:
        self._require_running()
        return await self.switcher.take(grant, source_id, expected_version)

    async def take_preview(self, grant: Grant) -> ProgramState:
        self._require_running()
        return await self.switcher.take_preview(grant)

    async def cut_to_slate(self, grant: Grant) -> ProgramState:
        self._require_running()
        return await self.switcher.cut_to_slate(grant)

    async def set_preview(self, grant: Grant, source_id: str | None) -> ProgramState:
        self._require_running()
        return await self.switcher.set_preview(grant, source_id)

    async def set_manual(self, grant: Grant, manual: bool) -> ProgramState:
        self._require_running()
        return await self.switcher.set_manual(grant, manual)

    # --- tasks -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(_logged(coro, f"ForumHost({self.forum_id}) task"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _logged(coro: Awaitable[None], what: str) -> None:
    """Await `coro`; log (not raise) what it raises, so one part's failure
    never keeps the others from stopping."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("%s failed", what)
