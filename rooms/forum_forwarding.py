"""Commands to a forum run on the node that hosts it (its lease's owner).

`ForumRouter.call(forum_id, kind, body)` claims the forum when nobody
hosts it (this node then runs the command itself, through the local
executor), runs it here when this node owns it, and otherwise sends it
over the bus (`EventBus.request`, kind `forum_command`) to the owner,
whose router runs it and sends the answer back. The owner not answering
within `timeout_s` (dead, or its lease moving) is RoomError
"unavailable"; the command's own RoomError comes back with its code.

`where(forum_id)` answers the same question for publishers: None when
this node hosts the forum, else the owner and its public URL (WHIP
answers 307 to it, socket.io's publish ack carries it), until edge nodes
exist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from rooms.errors import RoomError
from rooms.forum_ownership import Owner, resolve_owner
from rooms.lease_keeper import LeaseKeeper
from rooms.store import BusRequest, EventBus, ForumLeases, JsonObject, NodeLiveness

logger = logging.getLogger(__name__)

FORUM_COMMAND = "forum_command"  # the bus request kind this router answers
DEFAULT_TIMEOUT_S = 10.0

# runs one command on a forum this node hosts: (forum_id, command, body) -> answer
LocalCommands = Callable[[str, str, JsonObject], Awaitable[JsonObject]]


class ForumRouter:
    def __init__(
        self,
        keeper: LeaseKeeper,
        bus: EventBus,
        leases: ForumLeases,
        liveness: NodeLiveness,
        local: LocalCommands | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._keeper = keeper
        self._bus = bus
        self._leases = leases
        self._liveness = liveness
        self._local = local
        self.timeout_s = timeout_s

    @property
    def node_id(self) -> str:
        return self._bus.node_id

    def set_local(self, local: LocalCommands | None) -> None:
        self._local = local

    def serve(self) -> None:
        """Answer the commands other nodes forward to this one."""
        self._bus.serve(self._answer)

    async def where(self, forum_id: str) -> Owner | None:
        """None when this node hosts the forum (taking its lease if nobody
        holds it), else the node that does. RoomError("unavailable") when
        the store cannot tell."""
        if await self._keeper.claim(forum_id):
            return None
        owner = await resolve_owner(forum_id, self._leases, self._liveness)
        if owner is None:  # released between our claim and this read: once more
            if await self._keeper.claim(forum_id):
                return None
            owner = await resolve_owner(forum_id, self._leases, self._liveness)
        if owner is None:
            raise RoomError("unavailable", f"nobody hosts forum {forum_id!r} and this node cannot take it now")
        if owner.node_id == self.node_id:  # ours in the store, not yet in our books: the next tick says so
            raise RoomError("unavailable", f"forum {forum_id!r} is being taken over; try again")
        return owner

    async def call(self, forum_id: str, kind: str, body: JsonObject) -> JsonObject:
        """Run `kind` on the forum where it is hosted; its answer."""
        owner = await self.where(forum_id)
        if owner is None:
            return await self._run_local(forum_id, kind, body)
        return await self.forward(owner, forum_id, kind, body)

    async def forward(self, owner: Owner, forum_id: str, kind: str, body: JsonObject) -> JsonObject:
        """Send `kind` to the owner `where` named; its answer (see `call`)."""
        return await self._bus.request(
            owner.node_id, FORUM_COMMAND, {"forum_id": forum_id, "command": kind, "body": body}, self.timeout_s
        )

    async def _run_local(self, forum_id: str, kind: str, body: JsonObject) -> JsonObject:
        local = self._local
        if local is None:
            raise RoomError("unavailable", f"node {self.node_id} runs no forum commands")
        return await local(forum_id, kind, body)

    async def _answer(self, request: BusRequest) -> JsonObject:
        forum_id, kind, body = request.body.get("forum_id"), request.body.get("command"), request.body.get("body")
        if request.kind != FORUM_COMMAND or not isinstance(forum_id, str) or not isinstance(kind, str) \
                or not isinstance(body, dict):
            raise RoomError("invalid", f"node {self.node_id} does not answer {request.kind!r}")
        if not self._keeper.owns(forum_id):
            # the lease moved while the command travelled: the asker tries again
            raise RoomError("unavailable", f"node {self.node_id} does not host forum {forum_id!r} (any more)")
        return await self._run_local(forum_id, kind, body)
