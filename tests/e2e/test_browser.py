"""The speak and watch pages in a real chromium (Debian's, driven by
Playwright, never downloaded): a speaker goes live from a fake camera and
microphone, a guest's watch page plays the program; plain messages for a
bad invite; the pages' static parts. Screenshots of each page go to
$FORUMCAST_SCREENSHOTS (or the test's temp dir) to be looked at."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Role
from tests.e2e.chromium import CHROMIUM
from tests.server_process import ServerProcess, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FORUM = "youth-digital-literacy"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (bash scripts/test installs it)")
    process = start_server()
    try:
        yield process
    finally:
        process.cleanup()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FORUMCAST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def collect_console(page: Any, sink: list[str]) -> None:
    page.on("console", lambda message: sink.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: sink.append(f"pageerror: {error}"))


VIDEO = "document.getElementById('program-video')"


async def test_a_speaker_goes_live_and_a_guest_watches(server: ServerProcess, browser: Any, shots: Path) -> None:
    speaker_token = server.token(Role.SPEAKER, [FORUM], "Priya Raman")
    viewer_token = server.token(Role.VIEWER, [FORUM], "Guest")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    try:
        speak = await context.new_page()
        collect_console(speak, console)
        await speak.goto(f"{server.url}/speak/{FORUM}?token={speaker_token}")
        # camera preview first, then Go live once joined
        await speak.wait_for_function("() => document.getElementById('preview').videoWidth > 0", timeout=20_000)
        await speak.wait_for_function("() => !document.getElementById('go-live').disabled", timeout=20_000)
        assert await speak.eval_on_selector_all("#camera-select option", "els => els.length") >= 1
        await speak.click("#go-live")
        # the microphone meter hears the fake device's tone (the click let its AudioContext run)
        await speak.wait_for_function("() => window.forumcastSpeak.level > 0.01", timeout=15_000)
        await speak.wait_for_function(
            "() => window.forumcastSpeak.pc && window.forumcastSpeak.pc.connectionState === 'connected'",
            timeout=30_000)
        # the most recent live source goes on air: the speaker sees the red badge
        await speak.wait_for_function("() => !document.getElementById('on-air').hidden", timeout=20_000)
        assert "on air" in (await speak.text_content("#status") or "").lower()
        sent_codec = await speak.evaluate("""async () => {
            const stats = await window.forumcastSpeak.pc.getStats();
            for (const s of stats.values()) if (s.type === 'codec' && s.mimeType.startsWith('video/')) return s.mimeType;
            return null; }""")
        assert sent_codec == "video/H264", sent_codec  # setCodecPreferences put H.264 first

        watch = await context.new_page()
        collect_console(watch, console)
        await watch.goto(f"{server.url}/watch/{FORUM}?token={viewer_token}")
        await watch.wait_for_function(f"() => {VIDEO}.videoWidth > 0", timeout=30_000)
        start = await watch.evaluate(f"{VIDEO}.currentTime")
        await watch.wait_for_function(f"() => {VIDEO}.currentTime > {start} + 5", timeout=20_000)
        assert await watch.evaluate(f"{VIDEO}.muted")  # autoplay needs muted
        assert "Youth" in (await watch.text_content("#forum-name") or "")
        assert (await watch.text_content("#program")) == "Priya Raman"
        await watch.wait_for_function("() => Number(document.getElementById('viewers').textContent) >= 1",
                                      timeout=10_000)
        assert (await watch.text_content("#status")) == "Live"
        await watch.click("#unmute")
        assert not await watch.evaluate(f"{VIDEO}.muted")
        await speak.screenshot(path=str(shots / "speak.png"))
        await watch.screenshot(path=str(shots / "watch.png"))

        # the guest's connection drops: the page reconnects, re-joins and re-watches by itself
        await watch.evaluate("window.forumcastWatch.socket.io.engine.close()")
        await watch.wait_for_function("() => window.forumcastWatch.watches >= 2", timeout=20_000)
        await watch.wait_for_function(
            "() => window.forumcastWatch.pc && window.forumcastWatch.pc.connectionState === 'connected'",
            timeout=20_000)
        again = await watch.evaluate(f"{VIDEO}.currentTime")
        await watch.wait_for_function(f"() => {VIDEO}.currentTime > {again} + 1", timeout=20_000)

        # the speaker stops: the guest's page says the slate is on air
        await speak.click("#stop")
        await watch.wait_for_function(
            "() => document.getElementById('program').textContent.startsWith('Slate')", timeout=20_000)
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        await context.close()


async def test_an_expired_invite_gets_a_plain_message(server: ServerProcess, browser: Any, shots: Path) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        await page.goto(f"{server.url}/watch/{FORUM}?token={server.expired_token(Role.VIEWER, [FORUM])}")
        await page.wait_for_function("() => !document.getElementById('message').hidden", timeout=15_000)
        text = await page.text_content("#message") or ""
        assert "expired" in text and "new link" in text
        assert (await page.text_content("#status")) == "Cannot continue"
        await page.screenshot(path=str(shots / "watch-expired.png"))

        page = await context.new_page()
        await page.goto(f"{server.url}/speak/{FORUM}")  # no token at all
        await page.wait_for_function("() => !document.getElementById('message').hidden", timeout=15_000)
        assert "invite link" in (await page.text_content("#message") or "")

        # a guest's invite opens the speak page, but going live is refused in plain words
        page = await context.new_page()
        await page.goto(f"{server.url}/speak/{FORUM}?token={server.token(Role.VIEWER, [FORUM])}")
        await page.wait_for_function("() => !document.getElementById('go-live').disabled", timeout=20_000)
        await page.click("#go-live")
        await page.wait_for_function("() => !document.getElementById('message').hidden", timeout=15_000)
        refused = await page.text_content("#message") or ""
        assert "does not allow" in refused and "speaker role" in refused
        assert await page.evaluate("window.forumcastSpeak.pc === null && window.forumcastSpeak.fatal")
    finally:
        await context.close()


async def test_lobby_lists_forums_and_carries_the_token(server: ServerProcess, browser: Any, shots: Path) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(f"{server.url}/?token=abc")  # the address `serve` prints leads here
        assert page.url == f"{server.url}/lobby?token=abc"
        links = await page.eval_on_selector_all("a.watch-link", "els => els.map(e => e.href)")
        assert len(links) == len(server.get_json("/api/forums")["forums"])
        assert any(link.endswith(f"/watch/{FORUM}?token=abc") for link in links)
        await page.screenshot(path=str(shots / "lobby.png"), full_page=False)
    finally:
        await context.close()


def test_static_parts_and_unknown_forum(server: ServerProcess) -> None:
    with urllib.request.urlopen(server.url + "/static/vendor/socket.io.min.js", timeout=5) as response:
        assert response.status == 200 and b"io" in response.read(4096)
    with urllib.request.urlopen(f"{server.url}/watch/{FORUM}", timeout=5) as response:
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.url + "/watch/no-such-forum", timeout=5)
    assert refused.value.code == 404 and b"No such forum" in refused.value.read()


async def test_the_watch_page_hears_that_ice_failed_and_watches_again(browser: Any, shots: Path) -> None:
    """Issue 14 item 6: a viewer whose ICE never completes is ended by the
    server with a reason the client sees (socket.io media_ended); the watch
    page shows it and watches again. The page's answer is never applied
    here (setRemoteDescription does nothing), so its ICE never starts;
    the page's HLS fallback is put off for this test (test_stage tests it)."""
    node = start_server(extra_env={"FORUMCAST_ICE_TIMEOUT_S": "3"})
    context = await browser.new_context()
    console: list[str] = []
    try:
        await context.add_init_script(
            "RTCPeerConnection.prototype.setRemoteDescription = function () { return Promise.resolve(); };"
            "window.forumcastFallbackMs = 600000;")
        page = await context.new_page()
        collect_console(page, console)
        await page.goto(f"{node.url}/watch/{FORUM}?token={node.token(Role.VIEWER, [FORUM], 'Behind a firewall')}")
        await page.wait_for_function("() => window.forumcastWatch.watches >= 2", timeout=60_000)
        message = await page.locator("#message").inner_text()
        assert "could not be set up" in message and "Retrying" in message, message
        await page.screenshot(path=str(shots / "watch-ice-failed.png"))
    finally:
        await context.close()
        node.cleanup()
