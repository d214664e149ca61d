"""The outputs against a real nginx: nginx-rtmp as the platform a forum
restreams to (it records what it receives), and nginx's proxy_cache in
front of HLS (a CDN's shape: the token-checked playlist goes to the
origin every time, each signed segment leaves the origin once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from rooms.models import Role
from tests.eventually import eventually
from tests.operator_app import Node, running_node
from tests.outputs.helpers import SMALL, probe, slate_program
from tests.outputs.nginx import Nginx

pytestmark = pytest.mark.timeout(240)
KEY = "nginx-live-7c1e9a0b-secret"


@pytest.mark.slow
async def test_restream_to_nginx_rtmp_survives_the_platform_restarting(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path / "nginx")
    nginx.start()
    try:
        async with slate_program(width=640, height=360) as (_, outputs):
            forum = outputs.forum("main")
            dest = forum.add("nginx platform", nginx.rtmp_url, KEY)
            await forum.start(dest.id)
            await eventually(lambda: dest.state == "live", timeout=90, what="live on nginx-rtmp")
            await eventually(lambda: dest.status().uptime_s >= 4, timeout=30, what="4 s streamed")
            await eventually(lambda: len(nginx.recorded()) == 1 and nginx.recorded()[0].stat().st_size > 0,
                             timeout=30, what="nginx recording the publish")
            nginx.kill()
            await eventually(lambda: dest.state in ("retrying", "connecting"), timeout=30, what="retrying")
            assert dest.status().to_json()["last_error"]
            nginx.start()
            back = time.monotonic()
            await eventually(lambda: dest.state == "live" and dest.lives == 2, timeout=60, what="live again")
            print(f"live on nginx again {time.monotonic() - back:.1f} s after its restart")
            await eventually(lambda: dest.status().uptime_s >= 4, timeout=30, what="4 s streamed again")
            await forum.stop(dest.id)
    finally:
        nginx.stop()  # after the outputs closed, as before
    files = nginx.recorded()
    assert len(files) == 2, files
    for path in files:
        info = probe(path)
        assert info["video"][:3] == ("h264", SMALL.width, SMALL.height), path
        assert info["audio"] == ("aac", 48000), path
        pts = info["video_pts"]
        assert isinstance(pts, list) and len(pts) > 10
        assert all(b > a for a, b in zip(pts, pts[1:])), path
    # the second publish began at a keyframe: nginx-rtmp recorded it from its first packet
    assert float(probe(files[1])["duration"]) >= 3.0  # type: ignore[arg-type]
    assert KEY not in repr(dest.status().to_json())


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as running:
        yield running


@pytest.mark.slow
async def test_hls_behind_nginx_proxy_cache(node: Node, tmp_path: Path) -> None:
    nginx = Nginx(tmp_path / "cache", origin=node.url)
    nginx.start()
    forum = "ai"
    token = node.token(Role.VIEWER, [forum])
    playlist_url = f"{nginx.http_url}/hls/{forum}/index.m3u8"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(playlist_url) as r:
                assert r.status == 401  # the token is checked at the origin, through the cache

            async def playlist() -> str:
                async with http.get(playlist_url, params={"token": token}) as r:
                    if r.status != 200:
                        return ""
                    # private: never stored, so a cache cannot hand one viewer's playlist to another
                    assert r.headers["X-Cache-Status"] in ("MISS", "BYPASS", "EXPIRED"), r.headers
                    text = await r.text()
                    return text if text.count("#EXTINF") >= 2 else ""

            text = await eventually(playlist, timeout=120, interval=0.5, what="2 segments through nginx")
            assert (await playlist()) != ""  # the second fetch went to the origin too
            segment = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
            url = f"{nginx.http_url}/hls/{forum}/{segment}"
            async with http.get(url) as r:
                assert r.status == 200
                assert r.headers["X-Cache-Status"] == "MISS"
                body = await r.read()

            async def fetch() -> tuple[str, bytes]:
                async with http.get(url) as r:
                    assert r.status == 200
                    return r.headers["X-Cache-Status"], await r.read()

            # 200 HLS viewers, each reading its playlist (at the origin) and the newest segments (the cache)
            async def viewer() -> list[tuple[str, str, bytes]]:
                async with http.get(playlist_url, params={"token": token}) as r:
                    assert r.status == 200
                    listed = [line for line in (await r.text()).splitlines() if line and not line.startswith("#")]
                got = []
                for uri in listed[-2:]:
                    async with http.get(f"{nginx.http_url}/hls/{forum}/{uri}") as r:
                        assert r.status == 200
                        got.append((uri, r.headers["X-Cache-Status"], await r.read()))
                return got

            fetched = [item for items in await asyncio.gather(*(viewer() for _ in range(200))) for item in items]
            by_uri: dict[str, list[str]] = {}
            for uri, status, data in fetched:
                by_uri.setdefault(uri, []).append(status)
                if uri == segment:
                    assert data == body
            misses = sum(statuses.count("MISS") for statuses in by_uri.values())
            print(f"200 HLS viewers: {len(fetched)} segment requests, {len(by_uri)} segments, "
                  f"{misses} reached the origin")
            assert misses <= len(by_uri)  # each segment left the origin at most once
            assert len(fetched) == 400
            async with http.get(url.split("?")[0]) as r:
                assert r.status == 403  # unsigned: refused by the origin, and not cached as a 200
    finally:
        nginx.stop()
