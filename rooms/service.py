"""The room use cases: join, sources, preview/take, chat, node upkeep.

`RoomService` checks the caller's Grant, changes state through the Store
and publishes one event per change through it, so every node (this one
included) hears about it from `events()`. Refusals are RoomErrors with
stable codes: invalid, forbidden, token_expired, not_found, conflict,
full, too_many_seats, too_many_sources, too_large, rate_limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from rooms import validation
from rooms.chat import ChatKind, ChatMessage, ModerationAction, RateLimiter
from rooms.errors import RoomError
from rooms.events import (
    ChatPosted,
    ChatUpdated,
    NodeLost,
    ParticipantJoined,
    ParticipantLeft,
    PreviewChanged,
    ProgramChanged,
    SourceAdded,
    SourceRemoved,
    SourceUpdated,
    ViewerCountChanged,
)
from rooms.models import (
    Event, Forum, MediaSource, Participant, ProgramState, Role, SourceKind, SourceMedia, SourceState,
)
from rooms.store import Admission, Counts, Reaped, Store, Subscription
from rooms.tokens import Grant

logger = logging.getLogger(__name__)

MAX_HISTORY = 200

# one set of rules for ids and names on every path (rooms/validation.py)
_check_id = validation.check_id
_check_name = validation.check_name


class RoomService:
    """One node's entry to the rooms. `start()` runs the node upkeep
    (heartbeat, reaping dead nodes); the use cases work without it."""

    def __init__(
        self,
        event: Event,
        store: Store,
        node_id: str,
        now: Callable[[], float] = time.time,
        chat_max_length: int = 500,
        chat_rate_per_minute: int = 10,
        heartbeat_ttl_s: float = 10.0,
        load: Callable[[], dict[str, Any]] | None = None,
        heartbeat_interval_s: float | None = None,
        seats_per_token: int = 2,
        sources_per_token: int = 4,
        sources_per_forum: int = 32,
        public_url: str = "",
    ) -> None:
        self.event = event
        self.store = store
        self.node_id = node_id
        self._now = now
        self.chat_max_length = chat_max_length
        self._chat_limiter = RateLimiter(chat_rate_per_minute, 60.0, clock=now)
        self.heartbeat_ttl_s = heartbeat_ttl_s
        # default: a third of the TTL, so two beats may be lost before expiry
        self.heartbeat_interval_s = heartbeat_interval_s or heartbeat_ttl_s / 3
        if self.heartbeat_interval_s >= heartbeat_ttl_s:
            raise ValueError("the heartbeat interval must be shorter than its TTL")
        self._load = load
        self.public_url = public_url  # heart-beaten: where other nodes send this node's clients
        # bounds (docs/DESIGN.md "What we promise"); 0 lifts one
        self.seats_per_token = seats_per_token
        self.sources_per_token = sources_per_token
        self.sources_per_forum = sources_per_forum
        self._local: set[tuple[str, str]] = set()  # (forum, participant) joined here
        self._upkeep: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Reap what earlier runs under this node's name held (a crashed
        run's viewers and sources, at once rather than after its TTL),
        heart-beat now (so this node is known before it serves anyone),
        then keep heart-beating and reaping in the background.
        `node_id` is this run's instance id (rooms.store.new_instance_id)."""
        if self._upkeep is not None:
            return
        previous = await self.store.previous_instances(self.node_id)
        beating = {node.node_id for node in await self.store.nodes()}
        for node_id in previous:
            if node_id in beating:  # a crash within the TTL, or a second process under our name
                logger.warning("RoomService(%s) reaps %s, an earlier run of its name that has not expired yet; "
                               "if another process runs under this name, give each node its own node_id",
                               self.node_id, node_id)
        await self._reap(previous)
        await self._free_leases(previous)
        await self._beat()
        self._stopping.clear()
        self._upkeep = asyncio.create_task(self._run_upkeep(), name=f"RoomService({self.node_id}) upkeep")

    async def _free_leases(self, crashed: list[str]) -> None:
        """Give up the forum leases earlier runs of this name held: they
        are dead (see `start`), so their forums are taken over now, not
        after the lease TTL (a restarted node would otherwise forward its
        own forums' commands to its crashed run)."""
        for node_id in crashed:
            freed = [f.id for f in self.event.forums if await self.store.release_lease(f.id, node_id)]
            if freed:
                logger.warning("RoomService(%s) freed the forum leases of %s, an earlier run: %s",
                               self.node_id, node_id, freed)

    async def stop(self) -> None:
        """Stop the upkeep. Idempotent. Participants stay in the store: the
        caller leaves them (graceful) or other nodes reap them (crash)."""
        task, self._upkeep = self._upkeep, None
        if task is None:
            return
        self._stopping.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run_upkeep(self) -> None:
        interval = self.heartbeat_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                await self._beat()
                await self.reap_dead_nodes()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("RoomService(%s) upkeep failed; retrying", self.node_id)

    async def _beat(self) -> None:
        load: dict[str, Any] = {"participants": len(self._local)}
        if self._load is not None:
            load.update(self._load())
        await self.store.heartbeat(self.node_id, load, self.heartbeat_ttl_s, self.public_url)

    # --- helpers -------------------------------------------------------------

    def forum(self, forum_id: object) -> Forum:
        forum = self.event.forum(forum_id) if isinstance(forum_id, str) else None
        if forum is None:
            raise RoomError("not_found", f"there is no forum {forum_id!r} in {self.event.id}")
        return forum

    def _authorize(self, forum_id: str, grant: Grant, at_least: Role) -> None:
        if not isinstance(grant, Grant):
            raise RoomError("token_missing", "this needs a token")
        if grant.expires_at <= self._now():
            raise RoomError("token_expired", "your token has expired; ask the organizers for a new link")
        grant.require(forum_id, at_least)

    async def _source(self, forum_id: str, source_id: object) -> MediaSource:
        source = await self.store.get_source(forum_id, _check_id(source_id, "source id"))
        if source is None:
            raise RoomError("not_found", f"forum {forum_id} has no source {source_id!r}")
        return source

    async def _counts_changed(self, forum_id: str) -> None:
        counts = await self.store.counts(forum_id)
        await self.store.publish(ViewerCountChanged(forum_id, counts.viewers, counts.total))

    async def _program_update(
        self, forum_id: str, by: str, expected_version: int | None = None, **changes: Any
    ) -> ProgramState:
        before = await self.store.get_program(forum_id) if expected_version is None else None
        state = await self.store.update_program(forum_id, expected_version, **changes)
        if before is not None and state.version == before.version:
            return state  # nothing changed
        if expected_version is not None and state.version == expected_version:
            return state
        if set(changes) == {"preview"}:
            await self.store.publish(PreviewChanged(forum_id, state, by))
        else:
            await self.store.publish(ProgramChanged(forum_id, state, by))
        return state

    # --- participants --------------------------------------------------------

    async def join(self, forum_id: str, grant: Grant, participant_id: str, name: str | None = None) -> Participant:
        """Admit the grant's holder. Viewers take a seat: RoomError "full"
        when none is left, "too_many_seats" when the token's holder already
        holds `seats_per_token` of the forum's seats (a phone and a laptop;
        more connections are refused, not swapped for the oldest: see
        docs/DESIGN.md "Bounds"). Speakers, operators and admins always get in."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.VIEWER)
        participant = Participant(
            id=_check_id(participant_id, "participant id"),
            forum_id=forum.id,
            role=grant.role,
            name=_check_name(grant.name if name is None else name),
            node_id=self.node_id,
            joined_at=self._now(),
            holder=grant.subject,
        )
        admission = await self.store.admit(participant, forum.capacity, self.seats_per_token)
        if admission is Admission.HOLDER_FULL:
            raise RoomError(
                "too_many_seats",
                f"this invite already watches forum {forum.name.en!r} on {self.seats_per_token} "
                "devices; close one of them (or wait a few seconds after closing it) and try again",
            )
        if not admission:
            raise RoomError(
                "full",
                f"forum {forum.name.en!r} is full: all {forum.capacity} online seats are taken; "
                "please try again in a few minutes",
            )
        try:
            await self.store.publish(ParticipantJoined(participant))
        except RoomError:
            # nobody heard of the seat: give it back rather than leak it
            with contextlib.suppress(RoomError):
                await self.store.remove_participant(forum.id, participant.id)
            raise
        self._local.add((forum.id, participant.id))
        await self._counts_changed(forum.id)
        return participant

    async def leave(self, forum_id: str, participant_id: str) -> Participant | None:
        """Remove the participant (None if already gone: leaving twice is fine)."""
        forum = self.forum(forum_id)
        participant = await self.store.remove_participant(forum.id, _check_id(participant_id, "participant id"))
        self._local.discard((forum.id, participant_id))
        self._chat_limiter.forget(participant_id)
        if participant is not None:
            await self.store.publish(ParticipantLeft(participant))
            await self._counts_changed(forum.id)
        return participant

    async def presence(self, forum_id: str) -> list[Participant]:
        return await self.store.participants(self.forum(forum_id).id)

    async def viewer_count(self, forum_id: str) -> Counts:
        return await self.store.counts(self.forum(forum_id).id)

    # --- sources -------------------------------------------------------------

    async def register_source(self, forum_id: str, grant: Grant, source: MediaSource) -> MediaSource:
        """Speakers may publish a live source; venue, recorded and slate
        sources need an operator. Re-registering the same source (a
        reconnect) updates it; a different source under a taken id is a
        conflict. A new source is refused with "too_many_sources" (429)
        when the grant's holder already has `sources_per_token` sources in
        the forum, or the forum `sources_per_forum` (slate and venue feeds
        are not counted: the node makes one of each per forum)."""
        forum = self.forum(forum_id)
        if not isinstance(source, MediaSource):
            raise RoomError("invalid", "a source must be a MediaSource")
        if source.forum_id != forum.id:
            raise RoomError("invalid", f"source {source.id!r} belongs to forum {source.forum_id!r}, not {forum.id!r}")
        _check_id(source.id, "source id")
        needed = Role.SPEAKER if source.kind is SourceKind.LIVE else Role.OPERATOR
        self._authorize(forum.id, grant, needed)
        source = dataclasses.replace(source, node_id=source.node_id or self.node_id, holder=grant.subject)
        existing = await self.store.get_source(forum.id, source.id)
        if existing is not None and (existing.kind, existing.participant_id) != (source.kind, source.participant_id):
            raise RoomError("conflict", f"forum {forum.id} already has another source {source.id!r}")
        admission = await self.store.add_source(source, self.sources_per_forum, self.sources_per_token)
        if admission is Admission.HOLDER_FULL:
            raise RoomError(
                "too_many_sources",
                f"this token already publishes {self.sources_per_token} sources in forum {forum.name.en!r}; "
                "stop one before starting another",
            )
        if not admission:
            raise RoomError(
                "too_many_sources",
                f"forum {forum.name.en!r} already has {self.sources_per_forum} sources; "
                "an operator must remove one before another can be added",
            )
        await self.store.publish(SourceAdded(source) if existing is None else SourceUpdated(source))
        return source

    async def update_source_state(self, forum_id: str, source_id: str, state: SourceState | str) -> MediaSource:
        """For the media plane that holds the source (its only writer)."""
        forum = self.forum(forum_id)
        try:
            new_state = SourceState(state)
        except ValueError:
            raise RoomError("invalid", f"unknown source state {state!r}") from None
        source = await self._source(forum.id, source_id)
        if source.state is new_state:
            return source
        updated = dataclasses.replace(source, state=new_state)
        await self.store.put_source(updated)
        await self.store.publish(SourceUpdated(updated))
        return updated

    async def update_source_media(self, forum_id: str, source_id: str, media: SourceMedia) -> MediaSource:
        """For the media plane that holds the source: what its encoder
        sends and how it is handled (copy / transcode / flagged)."""
        forum = self.forum(forum_id)
        if not isinstance(media, SourceMedia):
            raise RoomError("invalid", "source media must be a SourceMedia")
        source = await self._source(forum.id, source_id)
        if source.media == media:
            return source
        updated = dataclasses.replace(source, media=media)
        await self.store.put_source(updated)
        await self.store.publish(SourceUpdated(updated))
        return updated

    async def unregister_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        """Remove the source (None if already gone); if it was on program or
        preview, the slate (or an empty preview) takes its place."""
        forum = self.forum(forum_id)
        source = await self.store.remove_source(forum.id, _check_id(source_id, "source id"))
        if source is not None:
            await self.store.publish(SourceRemoved(source))
            await self._forget_in_program(forum.id, source.id)
        return source

    async def sources(self, forum_id: str) -> list[MediaSource]:
        return await self.store.sources(self.forum(forum_id).id)

    async def _forget_in_program(self, forum_id: str, source_id: str) -> None:
        for _ in range(10):  # re-read on conflict: another change raced us
            state = await self.store.get_program(forum_id)
            changes: dict[str, Any] = {}
            if state.program == source_id:
                changes["program"] = None
            if state.preview == source_id:
                changes["preview"] = None
            if not changes:
                return
            try:
                await self._program_update(forum_id, "system", state.version, **changes)
                return
            except RoomError as exc:
                if exc.code != "conflict":
                    raise
        logger.warning("RoomService(%s) could not clear source %s from %s's program", self.node_id, source_id, forum_id)

    # --- preview / program ---------------------------------------------------

    async def program(self, forum_id: str) -> ProgramState:
        return await self.store.get_program(self.forum(forum_id).id)

    async def set_preview(self, forum_id: str, grant: Grant, source_id: str | None) -> ProgramState:
        """Operators put any known source (or nothing) in preview."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.OPERATOR)
        if source_id is not None:
            await self._source(forum.id, source_id)
        return await self._program_update(forum.id, grant.name, None, preview=source_id)

    async def take(
        self,
        forum_id: str,
        grant: Grant,
        source_id: str | None = None,
        slate: bool = False,
        expected_version: int | None = None,
    ) -> ProgramState:
        """Operators put a live source on air: `source_id`, else what is in
        preview; `slate=True` puts the slate on air. With `expected_version`
        the take is refused ("conflict") if someone changed the program
        since the operator looked."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.OPERATOR)
        if not isinstance(slate, bool):
            raise RoomError("invalid", "slate must be true or false")
        if expected_version is not None and (type(expected_version) is not int or expected_version < 0):
            raise RoomError("invalid", "expected_version must be a version number the server sent")
        if slate:
            return await self._program_update(forum.id, grant.name, expected_version, program=None)
        if source_id is None:
            source_id = (await self.store.get_program(forum.id)).preview
            if source_id is None:
                raise RoomError("invalid", "nothing is in preview: choose a source to take")
        source = await self._source(forum.id, source_id)
        if source.state is not SourceState.LIVE:
            raise RoomError("conflict", f"source {source.name!r} is {source.state.value}; only a live source can go on air")
        return await self._program_update(forum.id, grant.name, expected_version, program=source.id)

    async def set_program_system(self, forum_id: str, source_id: str | None, by: str = "system") -> ProgramState:
        """For the media plane and the agenda: no grant, and the source need
        only exist (they know what they are about to play). None: slate."""
        forum = self.forum(forum_id)
        if source_id is not None:
            await self._source(forum.id, source_id)
        return await self._program_update(forum.id, by, None, program=source_id)

    async def set_manual(self, forum_id: str, grant: Grant, manual: bool) -> ProgramState:
        """Manual: the agenda stops taking recorded videos by itself."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.OPERATOR)
        if not isinstance(manual, bool):
            raise RoomError("invalid", "manual must be true or false")
        return await self._program_update(forum.id, grant.name, None, manual=manual)

    # --- chat ----------------------------------------------------------------

    async def post_message(
        self, forum_id: str, grant: Grant, participant_id: str, text: str, kind: ChatKind | str = ChatKind.CHAT
    ) -> ChatMessage:
        """Post to the forum's chat (or its Q&A with kind="question", or
        the backstage channel between its speakers and operators with
        kind="backstage": a speaker's grant or more, else `forbidden`). The
        poster must have joined; viewers and speakers are rate-limited per
        participant on this node, moderators are not."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.VIEWER)
        participant = await self.store.get_participant(forum.id, _check_id(participant_id, "participant id"))
        if participant is None:
            raise RoomError("forbidden", f"join forum {forum.id} before posting to its chat")
        try:
            chat_kind = ChatKind(kind)
        except ValueError:
            raise RoomError("invalid", f"a message kind is 'chat', 'question' or 'backstage', not {kind!r}") from None
        if chat_kind is ChatKind.BACKSTAGE and not grant.allows(forum.id, Role.SPEAKER):
            raise RoomError("forbidden", "the backstage channel is for the forum's speakers and operators")
        if not isinstance(text, str) or not text.strip():
            raise RoomError("invalid", "a message needs some text")
        text = text.strip()
        if len(text) > self.chat_max_length:
            raise RoomError("too_large", f"a message is at most {self.chat_max_length} characters (this one has {len(text)})")
        if any(not ch.isprintable() and ch not in "\n\t" for ch in text):
            raise RoomError("invalid", "a message must not contain control characters")
        if not participant.role.at_least(Role.OPERATOR):
            wait = self._chat_limiter.hit(participant.id)
            if wait > 0:
                raise RoomError(
                    "rate_limited",
                    f"slow down: at most {self._chat_limiter.limit} messages a minute; "
                    f"try again in {math.ceil(wait)} s",
                )
        message = ChatMessage(
            id=uuid.uuid4().hex,
            forum_id=forum.id,
            participant_id=participant.id,
            name=participant.name,
            text=text,
            kind=chat_kind,
            ts=self._now(),
        )
        await self.store.append_message(message)
        await self.store.publish(ChatPosted(message))
        return message

    async def moderate(
        self, forum_id: str, grant: Grant, message_id: str, action: ModerationAction | str
    ) -> ChatMessage:
        """Operators hide/show, answer/unanswer, pin/unpin a message."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.OPERATOR)
        try:
            what = ModerationAction(action)
        except ValueError:
            known = ", ".join(a.value for a in ModerationAction)
            raise RoomError("invalid", f"unknown moderation action {action!r}: use one of {known}") from None
        message = await self.store.update_message(forum.id, _check_id(message_id, "message id"), **what.changes())
        await self.store.publish(ChatUpdated(message, grant.name))
        return message

    async def messages(self, forum_id: str, grant: Grant, limit: int = 50) -> list[ChatMessage]:
        """The latest messages, oldest first: everything for operators (the
        Q&A queue, hidden messages), the public ones (ChatMessage.public)
        plus the backstage ones not hidden for speakers, the public ones
        for everyone else."""
        forum = self.forum(forum_id)
        self._authorize(forum.id, grant, Role.VIEWER)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise RoomError("invalid", "limit must be a whole number")
        found = await self.store.messages(forum.id, max(1, min(limit, MAX_HISTORY)))
        if grant.allows(forum.id, Role.OPERATOR):
            return found
        if grant.allows(forum.id, Role.SPEAKER):
            return [m for m in found if m.public or (m.kind is ChatKind.BACKSTAGE and not m.hidden)]
        return [m for m in found if m.public]

    # --- events and nodes ----------------------------------------------------

    def events(self) -> Subscription:
        """Every room event from every node, from now on."""
        return self.store.subscribe()

    async def reap_dead_nodes(self) -> list[Reaped]:
        """Free what nodes that stopped heart-beating held, and say so."""
        dead = [node_id for node_id in await self.store.dead_nodes() if node_id != self.node_id]
        return await self._reap(dead)  # (not ourselves: we are alive, our next beat re-registers us)

    async def _reap(self, node_ids: list[str]) -> list[Reaped]:
        reaped: list[Reaped] = []
        for node_id in node_ids:
            result = await self.store.reap_node(node_id)
            reaped.append(result)
            forums: set[str] = set()
            for participant in result.participants:
                forums.add(participant.forum_id)
                await self.store.publish(ParticipantLeft(participant, reason="node_lost"))
            for source in result.sources:
                await self.store.publish(SourceRemoved(source))
                await self._forget_in_program(source.forum_id, source.id)
            for forum_id in sorted(forums):
                await self._counts_changed(forum_id)
            if not result.registered:
                continue  # another node reaped it first and said so
            await self.store.publish(NodeLost(node_id, len(result.participants), len(result.sources)))
            logger.warning(
                "RoomService(%s) reaped lost node %s: %d participants, %d sources",
                self.node_id, node_id, len(result.participants), len(result.sources),
            )
        return reaped
