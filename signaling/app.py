"""The composition root: the one place that builds a node from Settings.

build_app() is a short list of setup calls. Each long-lived resource owns
one cleanup context, registered in this order so they unwind in reverse
(STYLE.md item 10): state store, bus/event listener, room service,
socket.io server, media plane. run() serves the app until SIGINT/SIGTERM
and then shuts it down in that order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import Settings, load_or_create_secret
from rooms.agenda import AgendaClock, utc_now
from rooms.demo import demo_event
from rooms.event_file import load_event
from rooms.memory_store import MemoryStore
from rooms.models import Event
from rooms.service import RoomService
from rooms.store import Store, new_instance_id
from rooms.tokens import TokenService
from signaling.app_keys import AGENDA, EVENT, ICE_SERVERS, ROOMS, SETTINGS, STORE, TOKENS
from signaling.hls_api import setup_hls
from signaling.hosting import setup_hosting
from signaling.http_api import setup_http_api
from signaling.ice_servers import IceServers
from signaling.media_bridge import setup_media_plane
from signaling.metrics import setup_metrics
from signaling.operator_api import setup_operator
from signaling.ownership import setup_ownership
from signaling.placement import NodeLoadMeter, setup_placement
from signaling.pages import setup_pages
from signaling.recording_api import setup_recordings
from signaling.restream_api import setup_restreams
from signaling.sio_server import setup_socketio
from signaling.whep import setup_whip_whep
from streaming.child_processes import ChildRegistry, remove_dead_runs
from streaming.child_processes import install as install_children

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0  # in-flight requests get this long after a stop signal


def load_app_event(settings: Settings) -> Event:
    """The event file, with the settings' public override applied, and moved
    to run now in demo mode. Raises EventFileError listing every problem."""
    event = load_event(settings.event_file)
    if settings.public_event is not None:
        event = dataclasses.replace(event, public=settings.public_event)
    if settings.demo:
        now = dt.datetime.fromtimestamp(settings.demo_now, dt.timezone.utc) if settings.demo_now else utc_now()
        event = demo_event(event, now)
    return event


def build_app(settings: Settings) -> web.Application:
    """A node's application; nothing starts until the runner starts it.
    Raises EventFileError or SettingsError for a bad configuration."""
    event = load_app_event(settings)
    app = web.Application()
    app[SETTINGS] = settings
    app[EVENT] = event
    app[TOKENS] = TokenService(load_or_create_secret(settings))
    app[AGENDA] = AgendaClock(event)
    app[ICE_SERVERS] = IceServers(settings.ice_servers, settings.turn_secret, settings.turn_credential_ttl_s)

    setup_http_api(app)  # first: its error middleware wraps every later route
    app.cleanup_ctx.append(_children_ctx)  # before anything binds a port or spawns a child
    app.cleanup_ctx.append(_store_ctx)  # the store is also the event bus between nodes
    app.cleanup_ctx.append(_rooms_ctx)
    setup_ownership(app)  # forum leases, commands routed to each forum's owner, /api/cluster
    # Integrators: add, in this order, each registering its own cleanup_ctx:
    #   setup_socketio(app), the media plane; then setup_whip_whep(app), setup_pages(app).
    setup_socketio(app)  # socket.io sessions; they end in on_shutdown, before the media plane
    setup_media_plane(app)  # app[MEDIA]: the node's MediaPlane (MediaConfig from Settings)
    setup_whip_whep(app)  # WHIP/WHEP and the media bridge (publishers -> rooms, media states -> rooms)
    setup_pages(app)  # /lobby, /speak, /watch, /static
    setup_hosting(app)  # the forum hosts (slate, venue, playouts, switcher, outputs) behind app[CONTROL], agenda
    setup_restreams(app)  # restream destinations REST (the hosts push "restreams")
    setup_hls(app)  # /hls/{forum_id}/index.m3u8: fMP4 segments from the program encoder, signed segment URLs
    setup_recordings(app)  # recorder: segments + finalize, crash recovery, /api/recordings
    setup_operator(app)  # operator REST + socket.io events (all through app[CONTROL]), library, /control
    setup_metrics(app)  # /metrics (Prometheus), read from the plane's counters at scrape time
    setup_placement(app)  # /api/forums/{forum_id}/placement: the node a viewer should use
    return app


async def _children_ctx(app: web.Application) -> AsyncIterator[None]:
    """End the children a crashed predecessor left (their ports must be
    free before the venue listeners bind), then record this run's."""
    run = app[SETTINGS].data_dir / "run"
    registry = ChildRegistry(run / "children")
    ended = await asyncio.to_thread(registry.reap_strays)
    if ended:
        logger.warning("ended %d child processes left by a previous run: %s", len(ended), ended)
    for stale in await asyncio.to_thread(remove_dead_runs, run / "secrets"):
        logger.info("removed %s, left by a previous run", stale)
    install_children(registry)
    try:
        yield
    finally:
        install_children(None)


def make_store(settings: Settings, instance_id: str | None = None) -> Store:
    """The node's store; `instance_id` (default: a new one) is the id this
    run's liveness and ownership are keyed by (rooms.store.new_instance_id)."""
    node_id = instance_id or new_instance_id(settings.node_id)
    if settings.redis_url:
        from signaling.redis_store import RedisStore  # only a cluster needs redis

        return RedisStore(settings.redis_url, node_id=node_id)
    return MemoryStore(node_id=node_id)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = make_store(app[SETTINGS])  # a new instance id per process run
    await store.start()
    app[STORE] = store
    logger.info("store %s started for node %s", type(store).__name__, store.node_id)
    try:
        yield
    finally:
        await store.stop()


async def _rooms_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    rooms = RoomService(
        app[EVENT],
        app[STORE],
        app[STORE].node_id,  # the instance id: a restart under the same name reaps the crashed run
        chat_max_length=settings.chat_max_length,
        chat_rate_per_minute=settings.chat_rate_per_minute,
        heartbeat_ttl_s=settings.node_ttl_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        seats_per_token=settings.seats_per_token,
        sources_per_token=settings.sources_per_token,
        sources_per_forum=settings.sources_per_forum,
        public_url=settings.public_url,
        load=NodeLoadMeter(app),  # viewers and CPU in each heartbeat: placement reads them
    )
    await rooms.start()  # heart-beats once, so the node is known before it serves
    app[ROOMS] = rooms
    try:
        yield
    finally:
        await rooms.stop()


async def run(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully. `ready` is
    set once the socket listens (for embedding and tests)."""
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        logger.info(
            "forumcast node %s serving %s on http://%s:%d (%d forums)",
            settings.node_id, app[EVENT].id, settings.host, settings.port, len(app[EVENT].forums),
        )
        if app[EVENT].demo:
            logger.info("demo: %s moved to run now (the event file is unchanged)", settings.event_file)
        # every command (token, invite) finds the same secret here, whatever its cwd
        logger.info("data directory %s (token secret, media library)", settings.data_dir)
        if ready is not None:
            ready.set()
        await stop.wait()
        logger.info("stop signal received: shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        logger.info("stopped")
