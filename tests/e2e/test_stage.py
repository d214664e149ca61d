"""The stage as people run it, in a real chromium (Debian's, driven by
Playwright, never downloaded): a remote speaker waits in the green room,
the operator previews and TAKEs them from the control page, a guest
watches them with the session's title, the speaker sees "on air" and the
program in their return feed, and the two sides talk backstage; a guest
whose WebRTC is blocked falls back to HLS and plays; the status wall
shows a forum's restream and recording states and alerts. Screenshots
go to $FORUMCAST_SCREENSHOTS (or the test's temp dir); each test prints
where."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Role
from tests.e2e.test_browser import FORUM, collect_console, server, shots  # noqa: F401 (fixtures)
from tests.e2e.test_pages import MARKUP, _agenda_now, _no_overlap
from tests.server_process import ServerProcess, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

SPEAKER = "Ada Lovelace"  # the speaker of session onair-1 in _agenda_now's event


def _playing(selector: str) -> str:
    return f"() => document.querySelector('{selector}').videoWidth > 0"


async def _advances(page: Any, selector: str, seconds: float) -> None:
    start = await page.evaluate(f"document.querySelector('{selector}').currentTime")
    await page.wait_for_function(f"() => document.querySelector('{selector}').currentTime > {start} + {seconds}",
                                 timeout=30_000)


def _air(state: str) -> str:
    return f"() => document.getElementById('air-state').dataset.state === '{state}'"


async def test_a_speaker_goes_from_the_green_room_on_air_and_talks_to_the_operators(
        browser: Any, shots: Path, tmp_path: Path) -> None:
    node = start_server(extra_args=["--event", str(_agenda_now(tmp_path))])
    desk = await browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="Europe/Berlin",
                                     locale="en-US")
    home = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    guest = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    console: list[str] = []
    try:
        control = await desk.new_page()
        collect_console(control, console)
        await control.goto(f"{node.url}/control/onair?token={node.token(Role.OPERATOR, ['onair'], 'Ops')}")
        await control.wait_for_function("() => document.getElementById('status').textContent === 'Connected'",
                                         timeout=30_000)
        # agenda times in the venue's zone, labelled, and the operator's own beside them
        await control.wait_for_function("() => document.getElementById('agenda-live').textContent !== '—'")
        agenda = await control.text_content("#agenda-live") or ""
        assert "Title onair-1" in agenda and " UTC" in agenda and "your time" in agenda, agenda
        # the slate by its shortcut: the operator's choice, so a new speaker waits in the green room
        await control.keyboard.press("s")
        await control.wait_for_function("() => window.forumcastControl.slates === 1"
                                        " && window.forumcastControl.program.slate", timeout=20_000)
        assert await control.locator("#message").is_hidden()

        speak = await home.new_page()
        collect_console(speak, console)
        await speak.goto(f"{node.url}/speak/onair?token={node.token(Role.SPEAKER, ['onair'], SPEAKER)}")
        await speak.wait_for_function(_playing("#preview"), timeout=20_000)
        # before going live: the return feed plays the program and the network check has figures
        await speak.wait_for_function(_playing("#return-video"), timeout=30_000)
        await speak.wait_for_function(
            "() => ['good', 'fair', 'poor'].includes(window.forumcastSpeak.network.state)", timeout=30_000)
        assert "round trip" in (await speak.text_content("#net-detail") or "")
        # the schedule marks the speaker's own session, with the countdown
        mine = speak.locator("#schedule li.mine", has_text="Title onair-1")
        await mine.wait_for(timeout=20_000)
        assert "Your talk" in (await speak.text_content("#countdown") or "")
        assert await speak.evaluate(_air("offline"))

        await speak.click("#go-live")
        await speak.wait_for_function(_air("green-room"), timeout=30_000)
        assert "Green room" in (await speak.text_content("#air-state") or "")

        # the operator: the speaker's tile plays; click: preview; TAKE
        tile = control.locator(".tile", has_text=SPEAKER)
        await tile.wait_for(timeout=30_000)
        await control.wait_for_function(
            f"() => {{ const v = [...document.querySelectorAll('.tile')].find((t) => t.textContent.includes("
            f"'{SPEAKER}')); return v && v.querySelector('video').videoWidth > 0; }}", timeout=30_000)
        await tile.click()
        await speak.wait_for_function(_air("preview"), timeout=20_000)
        await control.wait_for_function("() => !document.getElementById('take').disabled", timeout=20_000)
        await control.click("#take")
        await speak.wait_for_function(_air("on-air"), timeout=20_000)
        assert "ON AIR" in (await speak.text_content("#air-state") or "")
        assert "on air" in (await speak.text_content("#status") or "").lower()

        # a guest watches the speaker, with the session's title; the control page counts them
        watch = await guest.new_page()
        collect_console(watch, console)
        await watch.goto(f"{node.url}/watch/onair?token={node.token(Role.VIEWER, ['onair'], 'Guest')}")
        await watch.wait_for_function(_playing("#program-video"), timeout=30_000)
        await _advances(watch, "#program-video", 5)
        assert await watch.text_content("#session-title") == "Title onair-1"
        await watch.wait_for_function(f"() => document.getElementById('program').textContent === '{SPEAKER}'",
                                      timeout=20_000)
        await control.wait_for_function("() => Number(document.getElementById('viewers').textContent) >= 1",
                                        timeout=20_000)
        # the speaker's return feed follows the program
        await _advances(speak, "#return-video", 2)

        # backstage: the speaker asks (markup stays text), the operator answers; guests see neither
        await speak.fill("#backstage-text", MARKUP)
        await speak.click("#backstage-form button")
        item = control.locator("#backstage-list li", has_text="bold")
        await item.wait_for(timeout=20_000)
        assert await item.locator(".text").inner_text() == MARKUP
        assert await control.evaluate("document.querySelector('#backstage-list b, #backstage-list img') === null")
        assert "backstage-fresh" in (await control.get_attribute("#backstage", "class") or "")  # catches the eye
        await control.fill("#backstage-text", "You are on in 2 minutes")
        await control.click("#backstage-form button")
        await speak.locator("#backstage-list li", has_text="You are on in 2 minutes").wait_for(timeout=20_000)
        assert "backstage-fresh" in (await speak.get_attribute("#backstage", "class") or "")
        assert await speak.evaluate("window.pwned === undefined")
        assert "bold" not in (await watch.text_content("main") or "")

        # layouts: nothing over any picture
        await _no_overlap(speak, "#preview")
        await _no_overlap(speak, "#return-video")
        await _no_overlap(control, "#program-video")
        await _no_overlap(control, "#preview-video")
        await speak.screenshot(path=str(shots / "speak-on-air-1280x800.png"), full_page=True)
        await control.screenshot(path=str(shots / "control-take-1280x800.png"), full_page=True)
        await speak.set_viewport_size({"width": 390, "height": 844})
        await _no_overlap(speak, "#preview")
        await _no_overlap(speak, "#return-video")
        await speak.screenshot(path=str(shots / "speak-on-air-390x844.png"), full_page=True)

        # the control page in Chinese
        await control.click("#lang-switch")
        assert await control.text_content("#take") == "切换"
        assert "观看人数" in (await control.text_content("header") or "")
        assert "直播中" in (await control.text_content(".tile.on-air .badge") or "")
        await control.screenshot(path=str(shots / "control-zh-1280x800.png"), full_page=True)

        # back to the slate by the shortcut: the speaker is off air (still in the operators' preview)
        await control.keyboard.press("s")
        await speak.wait_for_function(_air("preview"), timeout=20_000)
        print(f"screenshots: {shots}")
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        for context in (desk, home, guest):
            await context.close()
        node.cleanup()


# the answer is not applied (so ICE never starts) until the test sets window.webrtcHealed
WEBRTC_NEVER_CONNECTS = """
const apply = RTCPeerConnection.prototype.setRemoteDescription;
RTCPeerConnection.prototype.setRemoteDescription = function (answer) {
  return window.webrtcHealed ? apply.call(this, answer) : Promise.resolve();
};
window.forumcastUpgradeMs = 3000;
"""
WEBRTC_BLOCKED = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"


async def test_the_watch_page_falls_back_to_hls_when_webrtc_cannot_connect(
        server: ServerProcess, browser: Any, shots: Path) -> None:
    console: list[str] = []
    for switch, reason, size in ((WEBRTC_NEVER_CONNECTS, "timeout", (1280, 800)),
                                 (WEBRTC_BLOCKED, "blocked", (390, 844))):
        context = await browser.new_context(viewport={"width": size[0], "height": size[1]}, locale="en-US")
        try:
            await context.add_init_script(switch)  # the test switch: WebRTC fails in this page
            page = await context.new_page()
            collect_console(page, console)
            await page.goto(f"{server.url}/watch/{FORUM}?token={server.token(Role.VIEWER, [FORUM], 'Firewalled')}")
            await page.wait_for_function("() => window.forumcastWatch.mode === 'hls'", timeout=30_000)
            assert await page.evaluate("window.forumcastWatch.fallbackReason") == reason
            await page.wait_for_function(_playing("#program-video"), timeout=60_000)
            await _advances(page, "#program-video", 3)
            assert await page.evaluate("typeof window.Hls") == "function"  # the vendored hls.js, loaded on demand
            await page.wait_for_function(
                "() => document.getElementById('status').textContent === 'Watching over HLS'", timeout=20_000)
            assert "HLS" in (await page.text_content("#message") or "")
            await _no_overlap(page, "#program-video")
            path = shots / f"watch-hls-{size[0]}x{size[1]}.png"
            await page.screenshot(path=str(path), full_page=True)
            print(f"screenshot: {path}")
            if reason == "timeout":  # the network heals: the page goes back to WebRTC by itself
                await page.evaluate("window.webrtcHealed = true")
                await page.wait_for_function("() => window.forumcastWatch.mode === 'webrtc'"
                                             " && window.forumcastWatch.upgrades === 1", timeout=60_000)
                await page.wait_for_function(
                    "() => document.getElementById('program-video').srcObject !== null"
                    " && document.getElementById('status').textContent === 'Live'", timeout=20_000)
                await _advances(page, "#program-video", 2)
        finally:
            await context.close()
    assert not [line for line in console if line.startswith("pageerror")], console


def _post(node: ServerProcess, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(f"{node.url}{path}", method="POST", data=json.dumps(body or {}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


async def test_the_status_wall_shows_restreams_recordings_and_their_alerts(
        browser: Any, shots: Path, tmp_path: Path) -> None:
    node = start_server(extra_env={"FORUMCAST_RECORD_SESSIONS": "false"})
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    operator = node.token(Role.OPERATOR, None, "Wall")
    try:
        page = await context.new_page()
        await page.goto(f"{node.url}/status?token={operator}")
        await page.wait_for_function("() => window.forumcastStatus.polls >= 1", timeout=20_000)
        card = page.locator(f"li.wall-forum[data-forum='{FORUM}']")
        assert await card.locator(".recording").get_attribute("data-state") == "idle"

        # a destination nobody listens at: it retries, and the wall raises the alert by itself
        added = _post(node, f"/api/forums/{FORUM}/restreams", operator,
                      {"name": "Nowhere TV", "url": "rtmp://127.0.0.1:9/live", "stream_key": "never-shown"})
        _post(node, f"/api/forums/{FORUM}/restreams/{added['id']}/start", operator)
        _post(node, f"/api/forums/{FORUM}/recording/start", operator)
        await card.locator("li.restream.state-retrying", has_text="Nowhere TV").wait_for(timeout=60_000)
        await card.locator(".alert", has_text="Destination retrying: Nowhere TV").wait_for(timeout=20_000)
        await card.locator(".recording[data-state='recording']").wait_for(timeout=60_000)
        assert await card.get_attribute("class") == "wall-forum alert"
        assert "never-shown" not in (await page.content())
        path = shots / "status-outputs-1280x800.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")

        _post(node, f"/api/forums/{FORUM}/restreams/{added['id']}/stop", operator)
        _post(node, f"/api/forums/{FORUM}/recording/stop", operator)
        await card.locator(".recording[data-state='finalized']").wait_for(timeout=60_000)
        await card.locator(".alert").wait_for(state="detached", timeout=20_000)
    finally:
        await context.close()
        node.cleanup()
