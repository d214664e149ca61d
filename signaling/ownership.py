"""The node's side of forum ownership, wired into the app: the lease
keeper (rooms/lease_keeper.py) and the command router
(rooms/forum_forwarding.py) over the node's store, fed by the room events
of this node's connections (`note_event`) and by the agenda (recorded
slots within `AGENDA_LEAD`), and `GET /api/cluster` (admin): the live
nodes with their public URLs, and who owns each forum.

Publishers are redirected to a forum's owner (signaling/whip.py: 307;
sio_server.py: an error ack with its URL) through `forum_owner()`.

`bind_hosts` (called by signaling/hosting.py once the node's ForumHosts
exist) makes the lease the rule for hosting: only the owner hosts a forum
(`ForumHosts.may_host`), a forum acquired is hosted at once (slate first)
and joins its recorded slot under way where it should be, a forum lost is
released, and operator commands go through `RoutedControl` (run here or
forwarded to the owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from rooms.errors import RoomError
from rooms.forum_control import ForumControl
from rooms.forum_forwarding import ForumRouter
from rooms.forum_ownership import ForumOwnership, Owner, note_event, scheduled_forums
from rooms.lease_keeper import LeaseKeeper
from rooms.models import Role
from rooms.routed_control import RoutedControl
from recorder.schedule import due_recordings
from signaling.app_keys import AGENDA, EVENT, HOSTS, ROOMS, SETTINGS, STORE, TOKENS
from signaling.http_api import bearer_token, json_response
from signaling.node_liveness import answering
from streaming.agenda_scheduler import AgendaScheduler
from streaming.forum_hosts import ForumHosts

logger = logging.getLogger(__name__)

AGENDA_LEAD = dt.timedelta(minutes=2)  # a recorded slot's forum gets a host this long before it

KEEPER = web.AppKey("lease_keeper", LeaseKeeper)
ROUTER = web.AppKey("forum_router", ForumRouter)


class HostsOnLease:
    """The lease keeper's listener: host what this node acquired, release
    what it lost. Each change runs in a task of its own, chained per forum
    (a release and a new start of one forum never overlap), so a slow
    start (a slate encode) never holds up the renewal of every lease."""

    def __init__(self, hosts: ForumHosts, scheduler: AgendaScheduler | None) -> None:
        self._hosts = hosts
        self._scheduler = scheduler
        self._chains: dict[str, asyncio.Task[None]] = {}

    async def acquired(self, forum_id: str) -> None:
        self._chain(forum_id, self._host(forum_id))

    async def lost(self, forum_id: str) -> None:
        self._chain(forum_id, self._hosts.release(forum_id))

    async def _host(self, forum_id: str) -> None:
        try:
            await self._hosts.host(forum_id)  # slate first, then the switcher (ForumHost.start)
        except RoomError as exc:
            logger.warning("forum %s acquired but not hosted: %s", forum_id, exc.message)
            return
        if self._scheduler is not None:
            self._scheduler.join_under_way(forum_id)  # a recorded slot under way resumes where it should be

    def _chain(self, forum_id: str, step: Coroutine[Any, Any, None]) -> None:
        previous = self._chains.get(forum_id)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            await step

        task = asyncio.create_task(run(), name=f"lease change {forum_id}")
        self._chains[forum_id] = task
        task.add_done_callback(lambda done: self._forget(forum_id, done))

    def _forget(self, forum_id: str, task: asyncio.Task[None]) -> None:
        if self._chains.get(forum_id) is task:
            del self._chains[forum_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("forum %s: a lease change failed: %r", forum_id, task.exception())

    async def close(self) -> None:
        tasks = list(self._chains.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_LISTENER: web.AppKey[HostsOnLease] = web.AppKey("hosts_on_lease", HostsOnLease)


async def bind_hosts(app: web.Application, hosts: ForumHosts, scheduler: AgendaScheduler | None) -> ForumControl:
    """Only the lease owner hosts a forum (see the module docstring); the
    ForumControl signaling must call. An app without ownership gets `hosts`."""
    keeper, router = app.get(KEEPER), app.get(ROUTER)
    if keeper is None or router is None:
        return hosts

    async def may_host(forum_id: str) -> bool:
        return keeper.owns(forum_id)

    def busy(forum_id: str) -> bool:
        """An output (restream, recording, HLS) or a playout still runs: not idle."""
        outputs = hosts.outputs.forums.get(forum_id)
        host = hosts.get(forum_id)
        return (outputs is not None and outputs.encoder is not None) or (host is not None and bool(host.playouts()))

    hosts.may_host = may_host
    keeper.ownership.busy = busy
    listener = HostsOnLease(hosts, scheduler)
    app[_LISTENER] = listener
    keeper.set_listener(listener)
    for forum_id in keeper.ownership.owned():  # acquired before the hosts existed
        await listener.acquired(forum_id)
    return RoutedControl(hosts, router)


async def unbind_hosts(app: web.Application) -> None:
    """Before the hosts stop: lease changes no longer reach them."""
    keeper = app.get(KEEPER)
    if keeper is not None:
        keeper.set_listener(None)
    listener = app.get(_LISTENER)
    if listener is not None:
        await listener.close()


async def forum_owner(app: web.Application, forum_id: str) -> Owner | None:
    """None when this node hosts the forum (taking it if nobody does), else
    its owner (where its publishers go); None too on an app without
    ownership (tests that build parts of the app)."""
    router = app.get(ROUTER)
    return None if router is None else await router.where(forum_id)


async def live_redirect_url(app: web.Application, owner: Owner, path_qs: str) -> str:
    """`redirect_url` for a client sent to the owner (a publisher's 307 or
    `moved`, a preview tile, an HLS playlist), once the owner answers on
    the bus (signaling/node_liveness.py): a killed owner's lease and
    heartbeat live on for seconds, and a page sent there is stranded.
    RoomError("unavailable") (try again: the forum is being taken over)
    when it does not answer."""
    if not await answering(app[STORE], owner.node_id):
        raise RoomError("unavailable", "this forum's node does not answer; another node takes the forum over "
                        "within seconds, try again")
    return redirect_url(owner, path_qs)


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
        due = scheduled_forums(agenda, AGENDA_LEAD)
        if settings.record_sessions:  # a recorded forum's live session is recorded by its owner
            due |= set(due_recordings(app[EVENT], agenda))
        ownership.set_scheduled(due)

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
    "nodes": [{"node_id", "public_url", "last_seen", "load"}] (load: what its
    heartbeat carries, signaling/placement.py), "owners": {forum: node_id | null},
    "hosted": [forum ids this node's ForumHosts run]}."""
    grant = request.app[TOKENS].verify(bearer_token(request))
    if not grant.role.at_least(Role.ADMIN):
        raise RoomError("forbidden", f"/api/cluster needs the admin role; your token grants {grant.role.value}")
    store = request.app[STORE]
    forums = [forum.id for forum in request.app[EVENT].forums]
    owners = await asyncio.gather(*(store.lease_owner(forum_id) for forum_id in forums))
    return json_response({
        "node_id": store.node_id,
        "nodes": [{"node_id": n.node_id, "public_url": n.public_url, "last_seen": n.last_seen, "load": n.load}
                  for n in await store.nodes()],
        "owners": dict(zip(forums, owners)),
        "hosted": hosts.hosted() if (hosts := request.app.get(HOSTS)) is not None else [],
    })


def setup_ownership(app: web.Application) -> None:
    """After the rooms (it follows their events), before the hosts."""
    app.cleanup_ctx.append(_ownership_ctx)
    app.router.add_get("/api/cluster", get_cluster)
