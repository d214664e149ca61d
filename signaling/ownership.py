"""The node's side of forum ownership, wired into the app: the lease
keeper (rooms/lease_keeper.py) and the command router
(rooms/forum_forwarding.py) over the node's store, fed by the room events
of this node's connections (`note_event`) and by the agenda (recorded
slots within `AGENDA_LEAD`), and `GET /api/cluster` (admin): the live
nodes with their public URLs, and who owns each forum.

Publishers are redirected to a forum's owner (signaling/whip.py: 307;
sio_server.py: an error ack with its URL) through `forum_owner()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from rooms.errors import RoomError
from rooms.forum_forwarding import ForumRouter
from rooms.forum_ownership import ForumOwnership, Owner, note_event, scheduled_forums
from rooms.lease_keeper import LeaseKeeper
from rooms.models import Role
from signaling.app_keys import AGENDA, EVENT, ROOMS, SETTINGS, STORE, TOKENS
from signaling.http_api import bearer_token, json_response

logger = logging.getLogger(__name__)

AGENDA_LEAD = dt.timedelta(minutes=2)  # a recorded slot's forum gets a host this long before it

KEEPER = web.AppKey("lease_keeper", LeaseKeeper)
ROUTER = web.AppKey("forum_router", ForumRouter)


async def forum_owner(app: web.Application, forum_id: str) -> Owner | None:
    """None when this node hosts the forum (taking it if nobody does), else
    its owner (where its publishers go); None too on an app without
    ownership (tests that build parts of the app)."""
    router = app.get(ROUTER)
    return None if router is None else await router.where(forum_id)


def redirect_url(owner: Owner, path_qs: str) -> str:
    """The owner's URL for the same path; RoomError("unavailable") while
    the owner's address is unknown (its heartbeat expired: it is dying and
    its lease will be taken over)."""
    if not owner.public_url:
        raise RoomError("unavailable", "this forum is hosted by a node that does not answer; try again in a few seconds")
    return owner.public_url.rstrip("/") + path_qs


async def _ownership_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[STORE]
    ownership = ForumOwnership(store, store.node_id, settings.lease_ttl_ms, time.monotonic,
                               idle_ms=int(settings.forum_idle_s * 1000))
    keeper = LeaseKeeper(ownership)
    router = ForumRouter(keeper, store, store, store)
    router.serve()
    app[KEEPER] = keeper
    app[ROUTER] = router
    agenda = app[AGENDA]
    events = app[ROOMS].events()

    async def follow() -> None:
        async for event in events:
            if note_event(ownership, event):
                keeper.poke()

    def scheduled() -> None:
        ownership.set_scheduled(scheduled_forums(agenda, AGENDA_LEAD))

    scheduled()
    keeper.before_tick = scheduled
    await keeper.start()
    follower = asyncio.create_task(follow(), name="ownership needs")
    try:
        yield
    finally:
        events.close()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await keeper.stop()  # releases every lease: the other nodes take the forums at once
        store.serve(None)


async def get_cluster(request: web.Request) -> web.Response:
    """The live nodes and the owner of each forum (admin token): {"node_id",
    "nodes": [{"node_id", "public_url", "last_seen"}], "owners": {forum: node_id | null}}."""
    grant = request.app[TOKENS].verify(bearer_token(request))
    if not grant.role.at_least(Role.ADMIN):
        raise RoomError("forbidden", f"/api/cluster needs the admin role; your token grants {grant.role.value}")
    store = request.app[STORE]
    forums = [forum.id for forum in request.app[EVENT].forums]
    owners = await asyncio.gather(*(store.lease_owner(forum_id) for forum_id in forums))
    return json_response({
        "node_id": store.node_id,
        "nodes": [{"node_id": n.node_id, "public_url": n.public_url, "last_seen": n.last_seen}
                  for n in await store.nodes()],
        "owners": dict(zip(forums, owners)),
    })


def setup_ownership(app: web.Application) -> None:
    """After the rooms (it follows their events), before the hosts."""
    app.cleanup_ctx.append(_ownership_ctx)
    app.router.add_get("/api/cluster", get_cluster)
