"""Each forum's non-speaker inputs on the node that hosts it: the slate,
recorded-video playouts (from the media library), the venue feed's
ingest addresses.

- Slate: one `Slate` per forum, showing the forum's title, added to the
  media plane as the forum's SLATE feed. Started lazily, at the forum's
  first room event (someone joined, a source appeared, an operator
  acted): encoding 21 titles at boot would cost ~20 s of both cores.
- Playouts: a MediaLibrary item played by `FilePlayout` as a RECORDED
  source, registered with the rooms; its media-plane state (connecting,
  live, lost, ended) is written back to the rooms, and a file that plays
  out is removed (the rooms then put the slate in its place).
- Venue ingest: stream keys are HMAC(token secret, forum id), stable
  across restarts and never in the event file; forum i listens on
  rtmp_port + 1 + i and srt_port + 1 + i (the bare ports stay free for
  a front proxy). A forum's listeners (two idle ffmpegs, ~50 MB, ~0.5 %
  of a core: never all 21 at boot) start when an operator first asks for
  its ingest addresses; the control page asks as it opens.

This module listens to the media plane's source changes for the sources
it owns (playouts, venue feeds), beside the media bridge's listener.
State changes are applied by one task, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from config.settings import Settings, ffmpeg_path, load_or_create_secret
from rooms.errors import RoomError
from rooms.models import MediaSource, Role, SourceKind, SourceMedia, SourceState
from rooms.tokens import Grant
from signaling.app_keys import EVENT, MEDIA, ROOMS, SETTINGS
from streaming.media_library import MediaItem, MediaLibrary
from streaming.normalize_plan import NormalizeRules
from streaming.playout import FilePlayout
from streaming.rtp_source import RtpSource, SourceFeed
from streaming.rtp_udp_ingest import h264_codec, opus_codec
from streaming.slate import Slate, encode_slate
from streaming.child_processes import run_id
from streaming.venue_ingest import VenueIngest

if TYPE_CHECKING:
    from rooms.service import RoomService

logger = logging.getLogger(__name__)

SYSTEM_GRANT_TTL_S = 10 * 365 * 24 * 3600.0
SLATE_SIZE = (960, 540)
SLATE_LOOP_S = 0.2  # 3 frames at 15 fps (~200 kbit/s of IDRs): a cut to the slate waits at most this for its IDR
SLATE_RETRY_S = 30
MAX_PLAYOUTS_PER_FORUM = 8  # each costs a paced task; more is a mistake, not a need


def system_grant(name: str) -> Grant:
    """The grant the node's own actors (agenda, inputs) act with."""
    return Grant(role=Role.ADMIN, forums=None, name=name, subject=f"system-{name}",
                 expires_at=time.time() + SYSTEM_GRANT_TTL_S)


def slate_id(forum_id: str) -> str:
    return f"slate-{forum_id}"


def venue_id(forum_id: str) -> str:
    return f"venue-{forum_id}"


def venue_key(secret: str, forum_id: str) -> str:
    """A forum's venue stream key: stable, secret, per forum."""
    return hmac.new(secret.encode(), f"venue-ingest/{forum_id}".encode(), hashlib.sha256).hexdigest()[:24]


@dataclass
class Playout:
    forum_id: str
    source_id: str
    item: MediaItem
    player: FilePlayout
    by: str
    label: str  # the source's name: the agenda's "session — speaker" when known, else the file's

    def to_json(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "media": self.item.id, "name": self.label, "file": self.item.name,
                "audio_track": self.player.audio_track,
                "duration": self.item.duration, "state": self.player.state,
                "position": round(self.player.position, 2), "by": self.by}


SECRET_INGEST_FIELDS = ("stream_key", "rtmp_url", "srt_url")  # the key, or URLs that hold it


class ForumInputs:
    """The slates, playouts and venue addresses of this node's forums."""

    def __init__(self, settings: Settings, rooms: "RoomService", media: Any | None, library: MediaLibrary,
                 secret: str) -> None:
        self._settings = settings
        self._rooms = rooms
        self._media = media
        self.library = library
        self._secret = secret
        self._slates: dict[str, Slate] = {}
        self._venues: dict[str, VenueIngest] = {}
        self._venue_locks: dict[str, asyncio.Lock] = {}
        self._slate_tasks: dict[str, asyncio.Task[None]] = {}
        self._playouts: dict[str, Playout] = {}
        # source states and venue media reports, applied to the rooms in order
        self._changes: asyncio.Queue[tuple[str, str, SourceState | SourceMedia]] = asyncio.Queue(4096)
        self._remove_listener: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._events: Any = None
        self._grant = system_grant("inputs")
        self._live: dict[str, asyncio.Event] = {}  # playout source -> set once the rooms say live
        # told (forum id) after a playout starts or ends, so clients can be pushed the list
        self.on_playouts: Callable[[str], Awaitable[None]] | None = None

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._media is not None:
            self._remove_listener = self._media.add_source_listener(self._on_source_change)
        self._events = self._rooms.events()
        self._tasks = [asyncio.create_task(self._apply_changes(), name="forum-inputs-changes"),
                       asyncio.create_task(self._watch_rooms(self._events), name="forum-inputs-rooms")]

    async def stop(self) -> None:
        """Stop every playout and slate (their tasks), stop listening."""
        if self._events is not None:
            self._events.close()
        for task in list(self._slate_tasks.values()) + self._tasks:
            task.cancel()
        for task in list(self._slate_tasks.values()) + self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for source_id in list(self._playouts):
            with contextlib.suppress(Exception):
                await self._end_playout(source_id, unregister=True)
        for forum_id, venue in list(self._venues.items()):
            await venue.stop()  # reaps its ffmpegs
            if self._media is not None:
                with contextlib.suppress(Exception):
                    self._media.remove_feed(forum_id, venue.source_id)
        self._venues.clear()
        for forum_id, slate in list(self._slates.items()):
            await slate.stop()
            if self._media is not None:
                with contextlib.suppress(Exception):
                    self._media.remove_feed(forum_id, slate_id(forum_id))
        self._slates.clear()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    # --- slates --------------------------------------------------------------

    def ensure_slate(self, forum_id: str) -> asyncio.Task[None] | None:
        """Start the forum's slate if it is not running (idempotent)."""
        if self._media is None or self._rooms.event.forum(forum_id) is None:
            return None
        task = self._slate_tasks.get(forum_id)
        if task is None:
            task = asyncio.create_task(self._start_slate(forum_id), name=f"slate-start-{forum_id}")
            self._slate_tasks[forum_id] = task
        return task

    async def _start_slate(self, forum_id: str) -> None:
        forum = self._rooms.forum(forum_id)
        video = RtpSource("video", h264_codec(), name=slate_id(forum_id))
        audio = RtpSource("audio", opus_codec(), name=slate_id(forum_id))
        title = forum.name.en if not forum.name.zh else f"{forum.name.en}\n{forum.name.zh}"
        started = time.monotonic()
        try:
            # a short loop: each loop opens with the slate's only IDR, and a cut to
            # the slate waits for one (Slate cannot make one on request)
            loop = await encode_slate(title, ffmpeg_path=ffmpeg_path(self._settings), width=SLATE_SIZE[0],
                                      height=SLATE_SIZE[1], fps=15, seconds=SLATE_LOOP_S)
            slate = Slate(title, video, audio, source_id=slate_id(forum_id), loop=loop)
            await slate.start()
        except Exception:
            logger.exception("ForumInputs: the slate of %s failed to start; retrying in %d s", forum_id,
                             SLATE_RETRY_S)
            await asyncio.sleep(SLATE_RETRY_S)  # a backoff, so a broken encoder is not re-run per event
            self._slate_tasks.pop(forum_id, None)  # the next event tries again
            return
        self._slates[forum_id] = slate
        assert self._media is not None  # ensure_slate checked it
        self._media.add_feed(forum_id, SourceFeed(slate_id(forum_id), video, audio, kind=SourceKind.SLATE))
        logger.info("ForumInputs: slate of %s on in %.2f s", forum_id, time.monotonic() - started)

    async def _watch_rooms(self, events: Any) -> None:
        async for event in events:
            forum_id = getattr(event, "forum_id", None)
            if isinstance(forum_id, str):
                self.ensure_slate(forum_id)

    # --- venue ---------------------------------------------------------------

    async def ingest(self, forum_id: str, grant: Grant, reveal: bool = False) -> dict[str, Any]:
        """Where the venue's encoder sends this forum's feed; starts the
        forum's listeners on first ask (two idle ffmpegs per forum: 42 at
        boot would hold ~1 GB for forums nobody feeds yet). The stream key
        (and the URLs that hold it) only with `reveal`: else they are null
        and `keys_hidden` is true, so a page shows them only when asked."""
        forum = self._rooms.forum(forum_id)
        grant.require(forum.id, Role.OPERATOR)
        venue = await self.ensure_venue(forum.id)
        host = urlsplit(self._settings.public_url).hostname or self._settings.host
        # only addresses whose listener is up now: a URL of a port nobody
        # answers (or a stray holds) would send the venue to a dead end
        urls: dict[str, str | None] = dict(venue.urls(host))
        if not reveal:
            urls.update({key: None for key in SECRET_INGEST_FIELDS})
        return {"forum_id": forum.id, "source_id": venue.source_id, "state": venue.state,
                "protocol": venue.protocol, "keys_hidden": not reveal, "listening": venue.listening(), **urls}

    async def ensure_venue(self, forum_id: str) -> VenueIngest:
        """The forum's venue listeners, started if they are not running
        (RoomError unavailable when the ports cannot be bound)."""
        forum = self._rooms.forum(forum_id)
        venue = self._venues.get(forum.id)
        if venue is None:
            lock = self._venue_locks.setdefault(forum.id, asyncio.Lock())
            async with lock:
                venue = self._venues.get(forum.id) or await self._start_venue(forum.id)
        return venue

    def venues(self) -> list[str]:
        """The forums whose venue listeners run."""
        return sorted(self._venues)

    def venue_ports(self, forum_id: str) -> tuple[int, int]:
        index = [f.id for f in self._rooms.event.forums].index(forum_id)
        return self._settings.rtmp_port + 1 + index, self._settings.srt_port + 1 + index

    async def _start_venue(self, forum_id: str) -> VenueIngest:
        if self._media is None:
            raise RoomError("unavailable", "the media server is not running on this node")
        rtmp_port, srt_port = self.venue_ports(forum_id)
        source_id = venue_id(forum_id)
        video = RtpSource("video", h264_codec(), name=source_id)
        audio = RtpSource("audio", opus_codec(), name=source_id)
        venue = VenueIngest(forum_id, rtmp_port, srt_port, venue_key(self._secret, forum_id), video, audio,
                            source_id=source_id, ffmpeg=ffmpeg_path(self._settings),
                            on_media=lambda media: self._queue_change(forum_id, source_id, media),
                            listen_host=self._settings.ingest_host,
                            # per run, so a start can remove what a SIGKILLed run left there
                            secrets_dir=self._settings.data_dir / "run" / "secrets" / run_id())
        source = MediaSource(source_id, forum_id, SourceKind.VENUE, "Venue", state=SourceState.CONNECTING)
        await self._rooms.register_source(forum_id, self._grant, source)
        try:
            await venue.start()
        except Exception as exc:
            with contextlib.suppress(RoomError):
                await self._rooms.unregister_source(forum_id, source_id)
            logger.exception("ForumInputs: the venue ingest of %s failed to start", forum_id)
            raise RoomError("unavailable", f"cannot listen for the venue feed on ports {rtmp_port}/{srt_port}: "
                            f"{exc}") from None
        if not await venue.wait_listening(timeout=10.0):
            logger.warning("ForumInputs: the venue listeners of %s are not all up: %s", forum_id, venue.listening())
        self._venues[forum_id] = venue
        self._media.add_feed(forum_id, SourceFeed(source_id, video, audio, kind=SourceKind.VENUE))
        self.ensure_slate(forum_id)
        return venue

    # --- playouts ------------------------------------------------------------

    def playouts(self, forum_id: str) -> list[Playout]:
        return [p for p in self._playouts.values() if p.forum_id == forum_id]

    def playout(self, forum_id: str, source_id: str) -> Playout:
        found = self._playouts.get(source_id)
        if found is None or found.forum_id != forum_id:
            raise RoomError("not_found", f"forum {forum_id} has no playout {source_id!r}")
        return found

    async def start_playout(self, forum_id: str, grant: Grant, item: MediaItem, name: str | None = None,
                            start_at: float = 0.0, audio_track: int | None = None) -> Playout:
        """Play a library item as a new RECORDED source of the forum, from
        the start or from `start_at` seconds in (its next keyframe), with
        its chosen audio track or `audio_track` (an index of
        item.audio_tracks; an interpretation played as its own source).
        RoomError: forbidden (rooms decide), not_found, unavailable."""
        forum = self._rooms.forum(forum_id)
        if item.forum_id != forum.id:
            raise RoomError("not_found", f"forum {forum.id} has no media item {item.id!r}")
        if self._media is None:
            raise RoomError("unavailable", "the media server is not running on this node")
        if len(self.playouts(forum.id)) >= MAX_PLAYOUTS_PER_FORUM:
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
        source = MediaSource(source_id, forum.id, SourceKind.RECORDED, label, state=SourceState.CONNECTING)
        await self._rooms.register_source(forum.id, grant, source)
        video = RtpSource("video", h264_codec(), name=source_id)
        audio = RtpSource("audio", opus_codec(), name=source_id)
        player = FilePlayout(path, source_id, video, audio, audio_track=track,
                             on_ended=lambda: self._spawn(self._played_out(source_id)))
        playout = Playout(forum.id, source_id, item, player, grant.name, label)
        self._playouts[source_id] = playout
        self.ensure_slate(forum.id)
        try:
            self._media.add_feed(forum.id, SourceFeed(source_id, video, audio, kind=SourceKind.RECORDED))
            await player.start(start_at)
        except Exception:
            await self._end_playout(source_id, unregister=True)
            logger.exception("ForumInputs: playout %s of %s failed to start", source_id, item.id)
            raise RoomError("unavailable", f"could not play {item.name!r}") from None
        logger.info("ForumInputs: %s plays %s (%s) in %s as %s", grant.name, item.id, item.name, forum.id, source_id)
        await self._playouts_changed(forum.id)
        return playout

    async def wait_live(self, source_id: str, timeout: float = 5.0) -> bool:
        """Wait until the rooms hold the playout as live (False on timeout)."""
        event = self._live.setdefault(source_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def restart_playout(self, forum_id: str, grant: Grant, source_id: str) -> Playout:
        grant.require(forum_id, Role.OPERATOR)
        playout = self.playout(forum_id, source_id)
        await playout.player.restart()
        return playout

    async def stop_playout(self, forum_id: str, grant: Grant, source_id: str) -> None:
        grant.require(forum_id, Role.OPERATOR)
        self.playout(forum_id, source_id)
        await self._end_playout(source_id, unregister=True)

    async def _played_out(self, source_id: str) -> None:
        await self._end_playout(source_id, unregister=True)

    async def _end_playout(self, source_id: str, unregister: bool) -> None:
        playout = self._playouts.pop(source_id, None)
        self._live.pop(source_id, None)
        if playout is None:
            return
        await playout.player.stop()
        if self._media is not None:
            self._media.remove_feed(playout.forum_id, source_id)
        if unregister:
            with contextlib.suppress(RoomError):
                await self._rooms.unregister_source(playout.forum_id, source_id)
        logger.info("ForumInputs: playout %s in %s ended", source_id, playout.forum_id)
        await self._playouts_changed(playout.forum_id)

    async def _playouts_changed(self, forum_id: str) -> None:
        if self.on_playouts is None:
            return
        try:
            await self.on_playouts(forum_id)
        except Exception:
            logger.exception("ForumInputs: telling about %s's playouts failed", forum_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    # --- media plane state -> rooms -------------------------------------------

    def _venue_sources(self) -> set[str]:
        return {venue.source_id for venue in self._venues.values()}

    def _on_source_change(self, change: Any) -> None:
        if change.source_id in self._playouts or change.source_id in self._venue_sources():
            self._queue_change(change.forum_id, change.source_id, SourceState(change.state))

    def _queue_change(self, forum_id: str, source_id: str, change: SourceState | SourceMedia) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._changes.put_nowait((forum_id, source_id, change))

    async def _apply_changes(self) -> None:
        while True:
            forum_id, source_id, state = await self._changes.get()
            if isinstance(state, SourceMedia):  # a venue feed checked: copy or transcode, and why
                try:
                    await self._rooms.update_source_media(forum_id, source_id, state)
                except RoomError as exc:
                    logger.debug("ForumInputs: media of %s not recorded: %s", source_id, exc.message)
                continue
            if state is SourceState.ENDED:
                continue  # removal says it; the rooms forget the source then
            try:
                await self._rooms.update_source_state(forum_id, source_id, state)
                if state is SourceState.LIVE and source_id in self._playouts:
                    self._live.setdefault(source_id, asyncio.Event()).set()
            except RoomError as exc:
                logger.debug("ForumInputs: %s -> %s not recorded: %s", source_id, state.value, exc.message)
            except Exception:
                logger.exception("ForumInputs: recording %s -> %s failed", source_id, state.value)


INPUTS = web.AppKey("forum_inputs", ForumInputs)


async def _inputs_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    library = MediaLibrary(settings.media_dir, ffmpeg=ffmpeg_path(settings),
                           max_upload_bytes=settings.max_upload_bytes,
                           rules=NormalizeRules(max_fps=settings.normalize_max_fps),
                           max_jobs_per_owner=settings.max_conversions_per_token,
                           max_jobs_per_forum=settings.max_conversions_per_forum)
    inputs = ForumInputs(settings, app[ROOMS], app.get(MEDIA), library, load_or_create_secret(settings))
    from signaling.operator_api import push_job, push_playouts  # it imports this module
    from signaling.tus_uploads import TUS, TusStore

    async def tell(forum_id: str) -> None:
        await push_playouts(app, forum_id)

    inputs.on_playouts = tell
    library.on_job = lambda job: inputs._spawn(push_job(app, job))
    await inputs.start()
    app[INPUTS] = inputs
    uploads = TusStore(settings.data_dir / "media" / "uploads", library)
    app[TUS] = uploads
    uploads.start()
    try:
        yield
    finally:
        await uploads.stop()  # first: their uploads must outlive the jobs the library now cancels
        await library.stop()
        await inputs.stop()


def setup_forum_inputs(app: web.Application) -> None:
    """Register after the media plane and the media bridge contexts."""
    app.cleanup_ctx.append(_inputs_ctx)
    _ = app[EVENT]  # fail early if build_app did not set the event
