"""The watch page in a real chromium when its node dies: socket.io cannot
reconnect, the page asks another node of the cluster where to watch
(placement) and opens itself there (two node processes on one real Redis,
tests/cluster.py)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from tests.cluster import LEASE_TTL_MS, Cluster
from tests.operator_app import SizedPublisher

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

FORUM = "digital-economy"
VIDEO = "document.getElementById('program-video')"


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
        await page.wait_for_function("() => window.forumcastWatch.cluster.state.nodes.length === 2", timeout=20_000)

        killed = time.monotonic()
        cluster.kill("b")
        try:
            await page.wait_for_url(f"{a.url}/watch/{FORUM}?token={token}", timeout=60_000)
        except Exception:
            print("the page stayed at", page.url, await page.evaluate("JSON.stringify(window.forumcastWatch.cluster.state)"),
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


async def test_the_speak_page_of_a_killed_origin_opens_itself_on_another_node_and_is_live_again(
    cluster: Cluster, browser: Any
) -> None:
    """The origin dies under a live speaker: the page, relocated through
    placement, goes live again by itself on the node that takes the
    forum over (after the dead owner's lease: `unavailable` meanwhile)."""
    a, b = cluster["a"], cluster["b"]
    context = await browser.new_context()
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        token = a.token(Role.SPEAKER, [FORUM], "Priya Raman")
        await page.goto(f"{a.url}/speak/{FORUM}?token={token}")
        await page.wait_for_function("() => !document.getElementById('go-live').disabled", timeout=30_000)
        await page.click("#go-live")
        live = ("() => window.forumcastSpeak.pc && window.forumcastSpeak.pc.connectionState === 'connected'"
                " && window.forumcastSpeak.sourceId")
        await page.wait_for_function(live, timeout=30_000)
        assert cluster.owner(FORUM, "b") == cluster.node_id("a")
        await page.wait_for_function("() => window.forumcastSpeak.cluster.state.nodes.length === 2", timeout=20_000)

        killed = time.monotonic()
        cluster.kill("a")
        await page.wait_for_url(f"{b.url}/speak/{FORUM}?token={token}", timeout=60_000)  # the #live hash dropped
        moved = time.monotonic() - killed
        await page.wait_for_function(live, timeout=60_000)
        sending = time.monotonic() - killed
        assert cluster.owner(FORUM, "b") == cluster.node_id("b")
        await page.wait_for_function("() => !document.getElementById('on-air').hidden", timeout=30_000)
        on_air = time.monotonic() - killed
        print(f"SIGKILL of the speaker's node (the origin) -> page on b {moved:.2f} s, sending again "
              f"{sending:.2f} s, on air {on_air:.2f} s (lease {LEASE_TTL_MS} ms)")
        assert not errors, errors
    finally:
        await context.close()
