"""The node's media plane and its MediaBridge (streaming/media_bridge.py)
as cleanup contexts: the plane first, then the bridge, the one applier of
media states to the rooms (publishers and the forum hosts' sources)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from signaling.app_keys import MEDIA, ROOMS, SETTINGS
from streaming.media_bridge import MediaBridge

logger = logging.getLogger(__name__)

BRIDGE = web.AppKey("media_bridge", MediaBridge)


async def _bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    media = app.get(MEDIA)
    if media is None:
        # no media plane on this node: publish/watch answer "unavailable"
        logger.warning("no media plane configured: publishing and watching are unavailable")
        yield
        return
    bridge = MediaBridge(media, app[ROOMS], app[ROOMS].node_id)
    await bridge.start()
    app[BRIDGE] = bridge
    try:
        yield
    finally:
        await bridge.stop()


def setup_media_bridge(app: web.Application) -> None:
    """Register the bridge's cleanup context once, after the contexts that
    set MEDIA and ROOMS (setup_whip_whep calls it)."""
    if _bridge_ctx not in app.cleanup_ctx:
        app.cleanup_ctx.append(_bridge_ctx)


async def _media_plane_ctx(app: web.Application) -> AsyncIterator[None]:
    from streaming.media_config import MediaConfig  # the media plane is optional at import time
    from streaming.media_plane import MediaPlane
    from config.settings import ffmpeg_path

    settings = app[SETTINGS]
    config = MediaConfig(
        ice_addresses=settings.ice_addresses,
        udp_port=settings.udp_port,
        fanout_batch=settings.fanout_batch,
        ice_tcp=settings.ice_tcp,
        keyframe_request_interval=settings.keyframe_request_interval_ms / 1000,
        ffmpeg=ffmpeg_path(settings),
        slate_grace=settings.slate_grace_ms / 1000,
        connect_timeout=settings.viewer_connect_timeout_s,
        publisher_timeout=settings.publisher_timeout_s,
        ice_timeout=settings.ice_timeout_s,
    )
    plane = MediaPlane(config)
    await plane.start()
    app[MEDIA] = plane
    try:
        yield
    finally:
        await plane.stop()


def setup_media_plane(app: web.Application) -> None:
    """The node's MediaPlane as a cleanup context (for a composition root
    that has none of its own)."""
    app.cleanup_ctx.append(_media_plane_ctx)
