"""The control page's outputs panel in a real chromium: an operator adds
a restream (the key field is cleared and the key is never shown), starts
it, sees it go live on a real RTMP listener, stops it; starts and stops
a recording and sees its state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Role
from tests.e2e.chromium import CHROMIUM
from tests.operator_app import Node, running_node
from tests.outputs.platforms import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
FORUM = "ai"
KEY = "page-key-0a9b8c7d6e5f-secret"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium")
    async with running_node(tmp_path / "node", output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as running:
        yield running


async def test_restream_and_recording_from_the_control_page(node: Node, browser: Any, tmp_path: Path) -> None:
    platform = Platform("page", tmp_path, KEY)
    await platform.start()
    page = await browser.new_page()
    try:
        await page.goto(f"{node.url}/control/{FORUM}?token={node.token(Role.OPERATOR, [FORUM], 'Op')}")
        await page.fill("#restream-name", "Video site")
        await page.fill("#restream-url", platform.url)
        await page.fill("#restream-key", KEY)
        await page.click("#restream-add button[type=submit]")
        await page.wait_for_selector("[data-restream][data-state=idle]", timeout=20_000)
        assert await page.input_value("#restream-key") == ""
        await page.click("[data-restream] button:text('Start')")
        await page.wait_for_selector("[data-restream][data-state=live]", timeout=120_000)
        text = await page.inner_text("#restreams")
        assert "Video site: live" in text and "kb/s" in text
        await page.click("[data-restream] button:text('Stop')")
        await page.wait_for_selector("[data-restream][data-state=stopped]", timeout=30_000)

        await page.click("#recording-toggle")
        await page.wait_for_function("() => document.getElementById('recording-state').textContent === 'recording'",
                                     timeout=30_000)
        assert await page.inner_text("#recording-toggle") == "Stop recording"
        await page.click("#recording-toggle")
        await page.wait_for_function(
            "() => ['finalized', 'failed'].some((s) => document.getElementById('recording-state')"
            ".textContent.startsWith(s))", timeout=60_000)
        assert KEY not in await page.content()
    finally:
        await page.close()
        await platform.stop()
