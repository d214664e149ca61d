"""The light viewer (bench/light_viewer.py) against a real aiortc server process:
ICE and DTLS complete, RTP is counted off the socket, and sampled packets pass
SRTP authentication with the viewer's own keys."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from bench.children import start_module
from bench.light_viewer import ViewerPool, http_signal
from bench.loopback import restrict_ice_to_loopback
from bench.media import ensure_media
from tests.eventually import eventually
from tests.processes import free_port

pytestmark = pytest.mark.timeout(60)


async def _wait_http(url: str, timeout: float) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        async def up() -> bool:
            try:
                async with http.get(f"{url}/stats") as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False  # still binding

        await eventually(up, timeout=timeout, interval=0.1, what="the baseline server to come up")


@pytest.mark.skipif(sys.platform != "linux", reason="the reader thread uses epoll")
async def test_light_viewers_count_and_verify_srtp(tmp_path) -> None:
    media = await asyncio.to_thread(ensure_media, 30)
    restrict_ice_to_loopback()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await start_module("baseline", "bench.baseline_server",
                                ["--media", str(media), "--port", str(port), "--lifetime", "40"], tmp_path)
    pool = ViewerPool(sample_every=10, rr_interval=0.5, ice_addresses=("127.0.0.1",))
    try:
        await _wait_http(url, 30)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await pool.connect(2, http_signal(http, url, "main"), timeout=10)
        assert pool.errors == []
        assert await pool.wait_receiving(timeout=30) == 2
        # aiortc's own receiver-report loops are stopped (they had nothing to report)
        for v in pool.viewers:
            tasks = [t.receiver._RTCRtpReceiver__rtcp_task for t in v.pc.getTransceivers()]
            assert len(tasks) == 2 and all(t is not None and t.done() for t in tasks), tasks

        def counted() -> bool:
            for counts in pool.per_viewer():
                assert counts.video > 50 and counts.audio > 20, counts
                assert counts.checked > 5, counts
            return True

        await eventually(counted, timeout=30, what="each viewer counting video, audio and checked packets")
        assert all(counts.auth_failures == 0 for counts in pool.per_viewer())
        # and the check can fail: a forged packet does not pass the viewer's keys
        viewer = pool.viewers[0]
        forged = bytes([0x80, 0x60]) + bytes(10) + bytes(range(100))
        viewer._verify(forged)
        assert viewer.counts().auth_failures == 1
    finally:
        await pool.close()
        await server.stop()
