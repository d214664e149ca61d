"""Keep every ICE agent of the benchmark on 127.0.0.1.

aioice gathers host candidates on every interface (and skips 127.0.0.1),
and aiortc falls back to Google's public STUN server when a configuration
names none; this machine has a real eth0 that must never be a target.
Call `restrict_ice_to_loopback()` before the first RTCPeerConnection
gathers, and build peer connections with `loopback_configuration()`.
The servers under test serve on LOOPBACK with `serve_until_stopped()`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import aioice.ice
from aiohttp import web
from aiortc import RTCBundlePolicy, RTCConfiguration
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceServer

LOOPBACK = "127.0.0.1"


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK] if use_ipv4 else []


def _no_ice_servers(cls: type) -> list[RTCIceServer]:
    return []


def restrict_ice_to_loopback() -> None:
    """Idempotent; the one place the benchmark patches aioice/aiortc's gathering."""
    aioice.ice.get_host_addresses = _loopback_only
    RTCIceGatherer.getDefaultIceServers = classmethod(_no_ice_servers)  # type: ignore[assignment]


def loopback_configuration() -> RTCConfiguration:
    """No STUN/TURN server, one bundled transport per peer connection."""
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def serve_until_stopped(app: web.Application, port: int, lifetime: float,
                              close: Callable[[], Awaitable[None]]) -> None:
    """Serve `app` on LOOPBACK:`port` until SIGTERM/SIGINT or `lifetime`
    seconds (a server whose harness died stops by itself), then `close()`
    the media (bounded) and the runner."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except asyncio.TimeoutError:
        pass
    finally:
        await asyncio.wait_for(close(), 20)
        await runner.cleanup()
