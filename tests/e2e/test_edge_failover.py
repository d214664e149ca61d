"""The watch page in a real chromium when its node dies: socket.io cannot
reconnect, the page asks another node of the cluster where to watch
(placement) and opens itself there (two node processes on one real Redis,
tests/cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from tests.cluster import Cluster, start_cluster
from tests.operator_app import SizedPublisher

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

FORUM = "digital-economy"
VIDEO = "document.getElementById('program-video')"


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    started = start_cluster(redis_url)
    try:
        yield started
    finally:
        started.stop()


async def test_the_watch_page_of_a_killed_edge_asks_placement_elsewhere_and_plays_again(
    cluster: Cluster, browser: Any, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    speaker = SizedPublisher(320, 240)
    context = await browser.new_context()
    errors: list[str] = []
    try:
        created = await http.post(f"{a.url}/whip/{FORUM}", data=await speaker.offer(), allow_redirects=False,
                                  headers={"Authorization": f"Bearer {a.token(Role.SPEAKER, [FORUM], 'Speaker')}",
                                           "Content-Type": "application/sdp"})
        assert created.status == 201, await created.text()  # a owns the forum
        await speaker.accept(await created.text())

        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        token = b.token(Role.VIEWER, [FORUM], "Guest")
        await page.goto(f"{b.url}/watch/{FORUM}?token={token}")  # on b: served through b's edge pull
        await page.wait_for_function(f"() => {VIDEO}.videoWidth > 0", timeout=60_000)
        await page.wait_for_function("() => window.forumcastWatch.cluster.nodes.length === 2", timeout=20_000)

        killed = time.monotonic()
        cluster.kill("b")
        try:
            await page.wait_for_url(f"{a.url}/watch/{FORUM}?token={token}", timeout=60_000)
        except Exception:
            print("the page stayed at", page.url, await page.evaluate("JSON.stringify(window.forumcastWatch.cluster)"),
                  console)
            raise
        moved = time.monotonic() - killed
        await page.wait_for_function(f"() => {VIDEO}.videoWidth > 0 && {VIDEO}.currentTime > 0", timeout=60_000)
        playing = time.monotonic() - killed
        print(f"SIGKILL of the page's node -> page on a {moved:.2f} s, playing again {playing:.2f} s "
              f"(socket.io's grace {1.5:g} s included)")
        start = await page.evaluate(f"{VIDEO}.currentTime")
        await page.wait_for_function(f"() => {VIDEO}.currentTime > {start} + 1", timeout=30_000)
        assert not errors, errors
    finally:
        await context.close()
        await speaker.close()
