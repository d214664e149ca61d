"""A venue feed with B-frames in a real chromium (issue 14 item 4): x264
-profile:v high -bf 3 over RTMP. Copied as it was, Chromium decoded only
its keyframes (14 of 327 frames); transcoded once at ingest, the guest's
watch page decodes nearly every frame it receives, and the operator's
control page shows the tile as TRANSCODED with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Role
from tests.e2e.chromium import CHROMIUM
from tests.e2e.test_browser import collect_console
from tests.eventually import eventually
from tests.operator_app import Node, running_node
from tests.test_ingest_media import FORUM, get_json, x264_encoder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FRAMES = """async () => {
    const pc = window.forumcastWatch.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    for (const s of stats.values())
        if (s.type === 'inbound-rtp' && s.kind === 'video')
            return {received: s.framesReceived || 0, decoded: s.framesDecoded || 0, dropped: s.framesDropped || 0};
    return null; }"""


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium")
    async with running_node(tmp_path / "node") as running:
        yield running


async def test_chromium_decodes_a_b_frame_venue_feed(node: Node, browser: Any) -> None:
    op = node.token(Role.OPERATOR, [FORUM], "Op")
    ingest = await get_json(f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)  # in-process server: no blocking call
    encoder = x264_encoder(ingest["rtmp_url"], profile="high", bframes=3)
    await encoder.start()
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    console: list[str] = []
    try:
        watch = await context.new_page()
        collect_console(watch, console)
        await watch.goto(f"{node.url}/watch/{FORUM}?token={node.token(Role.VIEWER, [FORUM], 'Guest')}")
        await watch.wait_for_function("() => document.getElementById('program-video').videoWidth === 640",
                                      timeout=40_000)
        first = await eventually(lambda: watch.evaluate(FRAMES), timeout=20, what="video stats")
        await eventually(lambda: _more(watch, first, 90), timeout=40, what="90 more frames received")
        last = await watch.evaluate(FRAMES)
        received = last["received"] - first["received"]
        decoded = last["decoded"] - first["decoded"]
        assert decoded >= 0.8 * received, (decoded, received, last)  # copied: 14 of 327

        control = await context.new_page()
        collect_console(control, console)
        await control.goto(f"{node.url}/control/{FORUM}?token={op}")
        badge = f'.tile[data-source="{ingest["source_id"]}"] .media'
        await control.wait_for_function(f"() => document.querySelector('{badge}')?.textContent === 'TRANSCODED'",
                                        timeout=30_000)
        assert "B-frames" in (await control.get_attribute(badge, "title") or "")
    finally:
        await context.close()
        await encoder.stop(grace=2.0)
    assert not [line for line in console if line.startswith("pageerror")], console


async def _more(page: Any, first: dict[str, int], frames: int) -> bool:
    now = await page.evaluate(FRAMES)
    return bool(now and now["received"] - first["received"] >= frames)
