"""The glue between this node's media plane and the room service: the
node's one applier of media states to the rooms.

A publisher (browser speaker over socket.io, or a WHIP encoder) becomes a
MediaSource (kind LIVE) in the rooms before its media starts. The forum
hosts' own sources (playouts, venue feeds: streaming/forum_host.py) are
registered by their host, which hands them to the bridge with `adopt`.
The media plane's state changes (connecting -> live -> lost/ended) and
media reports (what a source sends: copy / transcode / flagged) of every
such source are written back to the rooms, so /api and every client see
them.

The bridge only translates: it never decides what goes on air. The
program policy (follow the newest live source, grace, cover) is
rooms/program_policy.py, applied by each forum's ProgramSwitcher (in its
ForumHost), which hears these source states as room events.

The media plane calls back synchronously from its own tasks; the bridge
only enqueues there, and one task applies the changes in order (an actor),
so no callback ever awaits the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rooms.errors import RoomError
from rooms.models import MediaSource, SourceKind, SourceMedia, SourceState
from rooms.tokens import Grant
from streaming.media_error import MediaError
from streaming.media_plane import MediaListener, MediaReport, SourceChange, SourceListener, ViewerListener
from streaming.peer_end import PeerEnd

if TYPE_CHECKING:
    from rooms.service import RoomService

logger = logging.getLogger(__name__)

_ENDED_KEPT = 4096  # reasons kept for sessions someone else ended, as WHIP/WHEP keep theirs
_QUEUE_LIMIT = 4096  # state changes are rare; a full queue means the applier is stuck
LOST_TIMEOUT_S = 30.0  # a source lost this long is gone (encoders re-POST, pages re-publish)


# media-plane error code -> room error code, so every edge answers alike
_MEDIA_CODES = {
    "invalid_sdp": "invalid_sdp",
    "unsupported_codec": "unsupported_codec",
    "not_found": "not_found",
    "unavailable": "unavailable",
}


def room_error_from_media(exc: Exception) -> RoomError:
    """A MediaError (code, message) as the RoomError every edge knows."""
    if isinstance(exc, MediaError) and exc.code in _MEDIA_CODES:
        return RoomError(_MEDIA_CODES[exc.code], exc.message)
    logger.error("media plane failed unexpectedly: %r", exc, exc_info=exc)
    return RoomError("unavailable", "the media server could not handle this; try again")


@dataclass(frozen=True)
class Published:
    source_id: str
    answer_sdp: str


@dataclass(frozen=True)
class _Expire:
    """Applier message: end `source_id` if it is still lost."""

    forum_id: str
    source_id: str


@dataclass(frozen=True)
class _Report:
    """Applier message: what an adopted source sends (a venue feed's check)."""

    forum_id: str
    source_id: str
    media: SourceMedia


@dataclass
class _LocalSource:
    forum_id: str
    participant_id: str | None
    state: SourceState = SourceState.CONNECTING


StateHook = Callable[[SourceState], None]


@dataclass
class _Adopted:
    """A source its forum's host registered and removes (playout, venue)."""

    forum_id: str
    on_state: StateHook | None


class BridgePlane(Protocol):
    """The media plane as the bridge sees it (streaming/media_plane.py)."""

    async def publish(self, forum_id: str, source_id: str, offer_sdp: str) -> str: ...

    async def unpublish(self, source_id: str) -> None: ...

    async def watch(self, forum_id: str, viewer_id: str, offer_sdp: str,
                    source_id: str | None = None) -> str: ...

    async def leave(self, viewer_id: str) -> None: ...

    def ended(self, peer_id: str) -> PeerEnd | None: ...

    def add_source_listener(self, listener: SourceListener) -> Callable[[], None]: ...

    def add_media_listener(self, listener: MediaListener) -> Callable[[], None]: ...

    def add_viewer_closed_listener(self, listener: ViewerListener) -> Callable[[], None]: ...


_Change = SourceChange | MediaReport | _Expire | _Report  # what the applier's queue holds


class MediaBridge:
    """One per node. Owns the record of which sources this node publishes,
    and applies the state of those and of the sources its forum hosts
    adopted, in order, from one queue."""

    def __init__(self, media: BridgePlane, rooms: "RoomService", node_id: str,
                 lost_timeout: float = LOST_TIMEOUT_S) -> None:
        self._media = media
        self._lost_timeout = lost_timeout
        self._lost_timers: dict[str, asyncio.TimerHandle] = {}
        self._rooms = rooms
        self._node_id = node_id
        self._sources: dict[str, _LocalSource] = {}
        self._adopted: dict[str, _Adopted] = {}
        self._changes: asyncio.Queue[_Change] = asyncio.Queue(_QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._remove_media_listener: Callable[[], None] | None = None
        self._ended_listeners: list[Callable[[str], Awaitable[None]]] = []
        self._ended_by: dict[str, RoomError] = {}  # source id -> why someone else ended it (bounded)

    def on_source_ended(self, listener: Callable[[str], Awaitable[None]]) -> None:
        """Call `listener(source_id)` when a source of this node ends by
        itself (the encoder went away without saying so), so the edge that
        opened it (a WHIP resource) can forget it."""
        self._ended_listeners.append(listener)

    def on_viewer_closed(self, listener: Callable[[str], Awaitable[None] | None]) -> Callable[[], None]:
        """Call `listener(viewer_id)` when a viewer's peer closes by itself
        (the player vanished without a DELETE), so the edge that admitted
        it can give its seat back. Returns the remover."""
        return self._media.add_viewer_closed_listener(listener)

    def end_reason(self, peer_id: str) -> RoomError | None:
        """Why a publisher (source id) or viewer (viewer id) of this node
        ended by itself ("ice_failed", "connection_lost"), or None."""
        if peer_id in self._ended_by:
            return self._ended_by[peer_id]
        end = self._media.ended(peer_id)
        return RoomError(end.code, end.message) if end is not None else None

    # --- the hosts' own sources ----------------------------------------------

    def adopt(self, forum_id: str, source_id: str, on_state: StateHook | None = None) -> None:
        """Apply this source's media states to the rooms from now on (its
        host registered it and unregisters it: ENDED is left to that).
        `on_state(state)` is called in the applier after each state is
        recorded (a playout's host waits for LIVE)."""
        self._adopted[source_id] = _Adopted(forum_id, on_state)

    def release(self, source_id: str) -> None:
        """Stop applying an adopted source's states (it was removed)."""
        self._adopted.pop(source_id, None)

    def report_media(self, forum_id: str, source_id: str, media: SourceMedia) -> None:
        """What an adopted source sends, recorded in order with its states."""
        self._on_source_change(_Report(forum_id, source_id, media))

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._remove_listener = self._media.add_source_listener(self._on_source_change)
        # MediaReports (what a publisher sends) go through the same ordered queue
        self._remove_media_listener = self._media.add_media_listener(self._on_source_change)
        self._task = asyncio.create_task(self._apply_changes(), name="media-bridge")

    async def stop(self) -> None:
        """Unpublish what this node still holds, then stop the applier."""
        for timer in self._lost_timers.values():
            timer.cancel()
        self._lost_timers.clear()
        for source_id in list(self._sources):
            with contextlib.suppress(Exception):
                await self.unpublish(source_id)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for remove in (self._remove_listener, self._remove_media_listener):
            if remove is not None:
                remove()
        self._remove_listener = self._remove_media_listener = None

    # --- publishers ----------------------------------------------------------

    async def publish(self, forum_id: str, grant: Grant, name: str, participant_id: str | None,
                      offer_sdp: str) -> Published:
        """Register a live source in the rooms, then hand the offer to the
        media plane. RoomError on refusal (forbidden, not_found,
        invalid_sdp, unsupported_codec, unavailable)."""
        source_id = "src-" + uuid.uuid4().hex[:12]
        source = MediaSource(id=source_id, forum_id=forum_id, kind=SourceKind.LIVE, name=name,
                             state=SourceState.CONNECTING, node_id=self._node_id,
                             participant_id=participant_id)
        await self._rooms.register_source(forum_id, grant, source)
        self._sources[source_id] = _LocalSource(forum_id, participant_id)
        try:
            answer = await self._media.publish(forum_id, source_id, offer_sdp)
        except Exception as exc:  # MediaError or worse: the source never existed
            self._sources.pop(source_id, None)
            with contextlib.suppress(Exception):
                await self._rooms.unregister_source(forum_id, source_id)
            if isinstance(exc, RoomError):
                raise
            raise room_error_from_media(exc) from None
        logger.info("MediaBridge: %s publishes %s in forum %s", name, source_id, forum_id)
        return Published(source_id, answer)

    def owns(self, source_id: str) -> bool:
        return source_id in self._sources

    async def unpublish(self, source_id: str) -> None:
        """End a publish this node holds (idempotent: unknown ids are ignored)."""
        local = self._sources.pop(source_id, None)
        if local is None:
            return
        timer = self._lost_timers.pop(source_id, None)
        if timer is not None:
            timer.cancel()
        try:
            await self._media.unpublish(source_id)
        except Exception as exc:
            logger.warning("MediaBridge: unpublish %s: %r", source_id, exc)
        with contextlib.suppress(RoomError):
            await self._rooms.unregister_source(local.forum_id, source_id)
        logger.info("MediaBridge: %s unpublished", source_id)

    async def end_source(self, source_id: str, why: RoomError) -> None:
        """End a publish on behalf of someone other than the edge that
        opened it (an operator): unpublish, then tell the edges, so a WHIP
        session forgets it and answers `why` (see `end_reason`)."""
        if source_id not in self._sources:
            return
        self._ended_by[source_id] = why
        while len(self._ended_by) > _ENDED_KEPT:
            self._ended_by.pop(next(iter(self._ended_by)))
        await self.unpublish(source_id)
        await self._tell_ended(source_id)

    # --- viewers -------------------------------------------------------------

    async def watch(self, forum_id: str, viewer_id: str, offer_sdp: str,
                    source_id: str | None = None) -> str:
        try:
            return str(await self._media.watch(forum_id, viewer_id, offer_sdp, source_id=source_id))
        except RoomError:
            raise
        except Exception as exc:
            raise room_error_from_media(exc) from None

    async def stop_watching(self, viewer_id: str) -> None:
        try:
            await self._media.leave(viewer_id)
        except Exception as exc:
            logger.warning("MediaBridge: leave %s: %r", viewer_id, exc)

    # --- state changes from the media plane ----------------------------------

    def _on_source_change(self, change: _Change) -> None:
        try:
            self._changes.put_nowait(change)
        except asyncio.QueueFull:
            logger.error("MediaBridge: change queue full, dropped %r", change)

    async def _apply_changes(self) -> None:
        while True:
            change = await self._changes.get()
            try:
                if isinstance(change, _Expire):
                    await self._expire(change.source_id)
                elif isinstance(change, (MediaReport, _Report)):  # what a source sends
                    if change.source_id in self._sources or change.source_id in self._adopted:
                        with contextlib.suppress(RoomError):  # what it sends: the operator sees it
                            await self._rooms.update_source_media(change.forum_id, change.source_id, change.media)
                elif change.source_id in self._adopted:
                    await self._apply_adopted(change.forum_id, change.source_id, SourceState(change.state))
                else:
                    await self._apply(change.forum_id, change.source_id, SourceState(change.state))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("MediaBridge: applying %r failed", change)

    async def _apply(self, forum_id: str, source_id: str, state: SourceState) -> None:
        local = self._sources.get(source_id)
        if local is None:
            return  # not a publisher of ours (a venue feed, or already unpublished)
        local.state = state
        self._watch_lost(forum_id, source_id, state)
        with contextlib.suppress(RoomError):
            await self._rooms.update_source_state(forum_id, source_id, state)
        if state is SourceState.ENDED:
            self._sources.pop(source_id, None)
            with contextlib.suppress(RoomError):
                await self._rooms.unregister_source(forum_id, source_id)
            await self._tell_ended(source_id)

    async def _apply_adopted(self, forum_id: str, source_id: str, state: SourceState) -> None:
        adopted = self._adopted.get(source_id)
        if adopted is None or state is SourceState.ENDED:
            return  # its host unregisters it; the rooms forget it then
        try:
            await self._rooms.update_source_state(forum_id, source_id, state)
        except RoomError as exc:
            logger.debug("MediaBridge: %s -> %s not recorded: %s", source_id, state.value, exc.message)
            return
        if adopted.on_state is not None:
            adopted.on_state(state)

    def _watch_lost(self, forum_id: str, source_id: str, state: SourceState) -> None:
        timer = self._lost_timers.pop(source_id, None)
        if timer is not None:
            timer.cancel()
        if state is SourceState.LOST:
            # through the queue, so the expiry is applied in order with the changes
            self._lost_timers[source_id] = asyncio.get_running_loop().call_later(
                self._lost_timeout, self._on_source_change, _Expire(forum_id, source_id))

    async def _expire(self, source_id: str) -> None:
        self._lost_timers.pop(source_id, None)
        local = self._sources.get(source_id)
        if local is None or local.state is not SourceState.LOST:
            return  # it came back, or was unpublished meanwhile
        logger.info("MediaBridge: %s lost for %.0f s: ending it", source_id, self._lost_timeout)
        await self.unpublish(source_id)
        await self._tell_ended(source_id)

    async def _tell_ended(self, source_id: str) -> None:
        for listener in list(self._ended_listeners):
            try:
                await listener(source_id)
            except Exception:
                logger.exception("MediaBridge: an ended-listener failed for %s", source_id)
