"""The forums this node hosts: `ForumHosts`, the registry of its
`ForumHost`s, the node's one room-event pump for them, and the node's
implementation of `rooms.forum_control.ForumControl`, the facade signaling
calls for every operator command.

- `await host(forum_id)` creates and starts a forum's host on first need
  (concurrent callers wait for the same start), `await release(forum_id)`
  stops and drops it, `hosted()` lists them, `stop()` stops them all.
- The pump reads the room events once for every host: a forum's first
  event (a source connects, someone joins, an operator acts) hosts it;
  program and source events go to its switcher, in order, each one's
  writes landing before the next event.
- Which forums a node hosts: every forum it needs, unless `may_host`
  (injected; e.g. "this node holds the forum's lease") says no: then
  `host()` refuses (RoomError unavailable), the pump leaves the forum's
  events alone and the agenda's slots play on the node that hosts it. A
  node that does not host a forum puts a forwarding ForumControl in front
  of this one (rooms/forum_control.py's Protocol stays the seam).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from rooms import events as room_events
from rooms.agenda import AgendaClock
from rooms.errors import RoomError
from rooms.forum_control import ForumNotifier, JsonObject
from rooms.models import ProgramState, Role
from rooms.service import RoomService
from rooms.store import Subscription
from rooms.tokens import Grant
from streaming.forum_host import ForumHost, HostPlane, HostSettings, HostState, Playout
from streaming.forum_outputs import ForumOutputs, ProgramOutputs, RestreamNotFound
from streaming.media_bridge import MediaBridge
from streaming.media_library import MediaLibrary
from streaming.restream import RestreamError, RestreamStatus

logger = logging.getLogger(__name__)


class RecordingPort(Protocol):
    """The node's recorder as the facade sees it (recorder/recorder.py
    behind an adapter of the edge): <recording> JSON, RoomError only."""

    async def start(self, forum_id: str, session: str | None) -> JsonObject: ...

    async def stop(self, forum_id: str) -> JsonObject: ...


SettingsFor = Callable[[str], HostSettings]  # forum id -> that forum's host settings
MayHost = Callable[[str], Awaitable[bool]]  # forum id -> may this node host it now


class NotHostedHere(RoomError):
    """This node may not host the forum now (another node does)."""

    def __init__(self, forum_id: str) -> None:
        super().__init__("unavailable", f"forum {forum_id} is hosted by another node")
        self.forum_id = forum_id


class ForumHosts:
    """This node's ForumHosts, and the ForumControl facade over them."""

    def __init__(self, rooms: RoomService, plane: HostPlane, bridge: MediaBridge, library: MediaLibrary,
                 outputs: ProgramOutputs, settings_for: SettingsFor, notifier: ForumNotifier,
                 agenda: AgendaClock | None = None, *, environ: Mapping[str, str] | None = None,
                 may_host: MayHost | None = None) -> None:
        self._rooms = rooms
        self._plane = plane
        self._bridge = bridge
        self.library = library
        self.outputs = outputs
        self._settings_for = settings_for
        self._notifier = notifier
        self._agenda = agenda
        self._environ = os.environ if environ is None else environ
        self.may_host = may_host
        self.recordings: RecordingPort | None = None  # set once the recorder exists (it needs `outputs`)
        self._hosts: dict[str, ForumHost] = {}
        self._starting: dict[str, asyncio.Future[ForumHost]] = {}
        self._events: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        outputs.add_listener(self._restream_status)

    # --- the registry --------------------------------------------------------

    async def start(self) -> None:
        """Start the room-event pump (subscribed now: nothing is lost)."""
        self._events = self._rooms.events()
        self._pump = asyncio.create_task(self._run(self._events), name="forum-hosts-events")

    async def stop(self) -> None:
        """Stop the pump, then every host (idempotent)."""
        self._closed = True
        if self._events is not None:
            self._events.close()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # hosts still starting register (or fail) first, so none is left running
        await asyncio.gather(*list(self._starting.values()), return_exceptions=True)
        for forum_id in list(self._hosts):
            await self.release(forum_id)

    async def host(self, forum_id: str) -> ForumHost:
        """The forum's running host, created and started on first need.
        RoomError: not_found (no such forum), unavailable (the node is
        stopping, or the host failed to start: the next call tries again),
        NotHostedHere (a RoomError unavailable: `may_host` said no)."""
        found = self._hosts.get(forum_id)
        if found is not None:
            return found
        forum = self._rooms.forum(forum_id)
        if self._closed:
            raise RoomError("unavailable", "this node is shutting down")
        if self.may_host is not None and not await self.may_host(forum.id):
            raise NotHostedHere(forum.id)
        pending = self._starting.get(forum.id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ForumHost] = asyncio.get_running_loop().create_future()
        self._starting[forum.id] = future
        try:
            host = ForumHost(forum, self._rooms, self._plane, self._bridge, self.library,
                             self._forum_outputs(forum.id), self._settings_for(forum.id),
                             on_playouts=self._notifier.playouts, on_state=self._host_state,
                             close_outputs=self.outputs.close_forum)
            await host.start()
        except BaseException as exc:
            self._starting.pop(forum.id, None)
            failed = exc if isinstance(exc, RoomError) else RoomError(
                "unavailable", f"forum {forum.id} could not be started on this node; try again")
            future.set_exception(failed)
            future.exception()  # retrieved: nobody else may be waiting
            if isinstance(exc, (asyncio.CancelledError, RoomError)):
                raise
            logger.exception("ForumHosts: the host of %s failed to start", forum.id)
            raise failed from None
        self._starting.pop(forum.id, None)
        if self._closed:  # the node began stopping meanwhile: this host must not outlive it
            await host.stop()
            closing = RoomError("unavailable", "this node is shutting down")
            future.set_exception(closing)
            future.exception()
            raise closing
        self._hosts[forum.id] = host
        future.set_result(host)
        return host

    def get(self, forum_id: str) -> ForumHost | None:
        """The forum's host if this node runs it (no start)."""
        return self._hosts.get(forum_id)

    def hosted(self) -> list[str]:
        return sorted(self._hosts)

    async def release(self, forum_id: str) -> None:
        """Stop the forum's host and forget it (idempotent); a host still
        starting is released once its start ends."""
        pending = self._starting.get(forum_id)
        if pending is not None:
            await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
        host = self._hosts.pop(forum_id, None)
        if host is not None:
            await host.stop()

    async def slot_host(self, forum_id: str) -> ForumHost | None:
        """The agenda's host for a due slot (AgendaScheduler's SlotHosts);
        None when another node hosts the forum."""
        try:
            return await self.host(forum_id)
        except NotHostedHere:
            return None

    def slot_hosts(self) -> list[ForumHost]:
        return list(self._hosts.values())

    def need(self, forum_id: str) -> None:
        """Host the forum soon, without waiting (an output started)."""
        if forum_id in self._hosts or forum_id in self._starting or self._closed:
            return
        task = asyncio.ensure_future(self._need(forum_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _need(self, forum_id: str) -> None:
        try:
            await self.host(forum_id)
        except NotHostedHere:
            pass
        except RoomError as exc:
            logger.warning("ForumHosts: %s not hosted: %s", forum_id, exc.message)

    def _forum_outputs(self, forum_id: str) -> ForumOutputs:
        """The forum's outputs (made by an output that started before the
        host, or now), with the event file's destinations added once per
        ForumOutputs: they go with it when the host is released."""
        outputs = self.outputs.forum(forum_id)
        forum = self._rooms.forum(forum_id)
        if forum.restreams and not any(d.id in outputs.restreams for d in forum.restreams):
            self.outputs.load_event_destinations(forum_id, forum.restreams, self._environ)
        return outputs

    def _host_state(self, forum_id: str, state: HostState) -> None:
        host = self._hosts.get(forum_id)
        if state is HostState.STOPPED and host is not None and host.state is HostState.STOPPED:
            del self._hosts[forum_id]  # it stopped by itself: the next need starts a new one

    # --- the room-event pump -------------------------------------------------

    async def _run(self, events: Subscription) -> None:
        async for event in events:
            try:
                await self._route(event)
            except asyncio.CancelledError:
                raise
            except RoomError as exc:
                logger.warning("ForumHosts: %s not handled: %s", type(event).__name__, exc.message)
            except Exception:
                logger.exception("ForumHosts: %s failed", type(event).__name__)

    async def _route(self, event: room_events.RoomEvent) -> None:
        forum_id = room_events.forum_of(event)
        if forum_id is None or self._rooms.event.forum(forum_id) is None:
            return
        if isinstance(event, room_events.SourceRemoved):
            host = self._hosts.get(forum_id)  # a removal alone does not host a forum
            if host is not None:
                host.switcher.on_source_removed(event.source.id)
                await host.switcher.idle()
            return
        try:
            host = await self.host(forum_id)  # the forum's first event hosts it
        except NotHostedHere:
            return  # its host is on another node
        match event:
            case room_events.ProgramChanged() | room_events.PreviewChanged():
                host.switcher.on_program_changed(event.state, event.by)
            case room_events.SourceAdded() | room_events.SourceUpdated():
                host.switcher.on_source(event.source)
            case _:
                return
        await host.switcher.idle()  # its writes land (and bump the version) before the next event

    # --- ForumControl: program -----------------------------------------------

    async def take(self, forum_id: str, grant: Grant, source_id: str | None = None,
                   expected_version: int | None = None) -> ProgramState:
        return await (await self.host(forum_id)).take(grant, source_id, expected_version)

    async def take_preview(self, forum_id: str, grant: Grant) -> ProgramState:
        return await (await self.host(forum_id)).take_preview(grant)

    async def cut_to_slate(self, forum_id: str, grant: Grant) -> ProgramState:
        return await (await self.host(forum_id)).cut_to_slate(grant)

    async def set_preview(self, forum_id: str, grant: Grant, source_id: str | None) -> ProgramState:
        return await (await self.host(forum_id)).set_preview(grant, source_id)

    async def set_manual(self, forum_id: str, grant: Grant, manual: bool) -> ProgramState:
        return await (await self.host(forum_id)).set_manual(grant, manual)

    # --- ForumControl: inputs ------------------------------------------------

    async def ingest(self, forum_id: str, grant: Grant, reveal: bool = False) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        return await (await self.host(forum_id)).ingest(grant, reveal)

    async def start_playout(self, forum_id: str, grant: Grant, media_id: str, take: bool = False,
                            audio_track: int | None = None) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        item = self.library.get(media_id)
        label = self._agenda.label_for_video(forum_id, item.name) if self._agenda is not None else None
        host = await self.host(forum_id)
        playout = await host.start_playout(grant, item, name=label, audio_track=audio_track)
        program: JsonObject | None = None
        if take:
            if not await host.wait_live(playout.source_id):
                raise RoomError("unavailable", f"{item.name!r} started but sends nothing; it was not taken")
            state = await host.take(grant, playout.source_id, None)
            program = dataclasses.asdict(state)
        return {"playout": playout.to_json(), "program": program}

    async def stop_playout(self, forum_id: str, grant: Grant, source_id: str) -> None:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        await (await self.host(forum_id)).stop_playout(grant, source_id)

    async def restart_playout(self, forum_id: str, grant: Grant, source_id: str) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        playout = await (await self.host(forum_id)).restart_playout(grant, source_id)
        return {"playout": playout.to_json()}

    async def playouts(self, forum_id: str, grant: Grant) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        host = self._hosts.get(forum_id)  # asking what plays does not host a forum
        return host.playouts_json() if host is not None else {"forum_id": forum_id, "playouts": []}

    def running_playouts(self, forum_id: str) -> list[Playout]:
        """The playouts of a forum hosted here ([] when it is not)."""
        host = self._hosts.get(forum_id)
        return host.playouts() if host is not None else []

    # --- ForumControl: outputs -------------------------------------------------

    async def restreams(self, forum_id: str, grant: Grant) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        await self.host(forum_id)  # loads the event file's destinations
        return self.restreams_json(forum_id)

    def restreams_json(self, forum_id: str, *, urls: bool = True) -> JsonObject:
        outputs = self.outputs.forums.get(forum_id)
        items: list[JsonObject] = [dict(s.to_json()) for s in outputs.statuses()] if outputs is not None else []
        if not urls:
            for item in items:
                item.pop("url", None)
        return {"forum_id": forum_id, "restreams": list(items)}

    async def add_restream(self, forum_id: str, grant: Grant, name: str, url: str, stream_key: str) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        host = await self.host(forum_id)
        try:
            restream = host.outputs.add(name, url, stream_key)
        except RestreamError as error:
            raise RoomError("invalid", str(error)) from None
        return dict(restream.status().to_json())

    async def start_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject:
        host = await self._restream_host(forum_id, grant)
        try:
            restream = await host.outputs.start(restream_id)
        except RestreamNotFound:
            raise _no_restream(restream_id) from None
        return dict(restream.status().to_json())

    async def stop_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject:
        host = await self._restream_host(forum_id, grant)
        try:
            restream = await host.outputs.stop(restream_id)
        except RestreamNotFound:
            raise _no_restream(restream_id) from None
        return dict(restream.status().to_json())

    async def remove_restream(self, forum_id: str, grant: Grant, restream_id: str) -> None:
        host = await self._restream_host(forum_id, grant)
        try:
            await host.outputs.remove(restream_id)
        except RestreamNotFound:
            raise _no_restream(restream_id) from None

    async def _restream_host(self, forum_id: str, grant: Grant) -> ForumHost:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        return await self.host(forum_id)

    def _restream_status(self, forum_id: str, status: RestreamStatus | None, restream_id: str) -> None:
        self._notifier.restreams(forum_id, self.restreams_json(forum_id, urls=False))

    async def start_recording(self, forum_id: str, grant: Grant, session: str | None = None) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        recordings = self._recordings()
        await self.host(forum_id)  # the program it records has its slate
        return await recordings.start(forum_id, session)

    async def stop_recording(self, forum_id: str, grant: Grant) -> JsonObject:
        grant.require(self._rooms.forum(forum_id).id, Role.OPERATOR)
        return await self._recordings().stop(forum_id)

    def _recordings(self) -> RecordingPort:
        if self.recordings is None:
            raise RoomError("unavailable", "recording is not running on this node")
        return self.recordings



def _no_restream(restream_id: str) -> RoomError:
    return RoomError("not_found", f"there is no restream {restream_id!r} in this forum")
