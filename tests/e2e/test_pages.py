"""The pages people use, in a real chromium (Debian's, driven by
Playwright, never downloaded): the EN/ZH language switch every page
shares, the lobby's agenda in the guest's and the venue's time zones, the
watch page's chat and Q&A reaching the control page, and the layouts at
1280x800 and 390x844 with nothing covering the video. Screenshots go to
$FORUMCAST_SCREENSHOTS (or the test's temp dir); each test prints where."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rooms.models import Role
from tests.e2e.test_browser import FORUM, browser, collect_console, server, shots  # noqa: F401 (fixtures)
from tests.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FORUM_ZH = "青少年数字素养论坛"


async def test_a_page_in_chinese_shows_the_chinese_name_and_labels(
        server: ServerProcess, browser: Any, shots: Path) -> None:
    # the invite's language decides first; the choice is then remembered
    token = server.token(Role.VIEWER, [FORUM], "访客", language="zh")
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    console: list[str] = []
    try:
        page = await context.new_page()
        collect_console(page, console)
        await page.goto(f"{server.url}/watch/{FORUM}?token={token}")
        await page.wait_for_function("() => document.getElementById('lang-switch') !== null")
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"
        heading = await page.text_content("#forum-name") or ""
        assert heading.startswith(FORUM_ZH), heading
        assert "在线观看" in (await page.text_content(".bar") or "")
        assert (await page.text_content("#lang-switch")) == "English"
        await page.screenshot(path=str(shots / "watch-zh.png"))

        # switch to English: labels and the name follow, and the choice outlives a reload
        await page.click("#lang-switch")
        assert (await page.text_content("#forum-name") or "").startswith("Youth and Digital Literacy Forum")
        assert "Watching online" in (await page.text_content(".bar") or "")
        await page.reload()
        await page.wait_for_function("() => document.getElementById('lang-switch') !== null")
        assert (await page.text_content("#forum-name") or "").startswith("Youth")

        # a browser in Chinese with no language in its invite gets Chinese on the speak page
        zh_context = await browser.new_context(locale="zh-CN")
        try:
            speak = await zh_context.new_page()
            collect_console(speak, console)
            await speak.goto(f"{server.url}/speak/{FORUM}?token={server.token(Role.SPEAKER, [FORUM], 'S')}")
            await speak.wait_for_function("() => document.getElementById('lang-switch') !== null")
            assert (await speak.text_content("#forum-name") or "").startswith(FORUM_ZH)
            assert (await speak.text_content("#go-live")) == "开始直播"
        finally:
            await zh_context.close()
        print(f"screenshots: {shots}")
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        await context.close()


def _clock(iso: str, zone: str) -> str:
    return dt.datetime.fromisoformat(iso).astimezone(ZoneInfo(zone)).strftime("%H:%M")


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
async def test_the_lobby_shows_times_in_the_guests_zone_and_the_venues(
        server: ServerProcess, browser: Any, shots: Path, zone: str) -> None:
    event = server.get_json("/api/forums")["event"]
    venue = event["timezone"]
    assert venue == "Asia/Shanghai"  # the sample event
    session = server.get_json(f"/api/forums/{FORUM}")["sessions"][0]
    mine = f"{_clock(session['start'], zone)}–{_clock(session['end'], zone)}"
    theirs = f"{_clock(session['start'], venue)}–{_clock(session['end'], venue)}"
    assert mine != theirs  # the zones differ, or the test proves nothing
    # an invite to two forums: those first, with links; the rest listed without links
    token = server.token(Role.VIEWER, [FORUM, "ai"], "Guest")
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id=zone, locale="en-US")
    console: list[str] = []
    try:
        page = await context.new_page()
        collect_console(page, console)
        await page.goto(f"{server.url}/lobby?token={token}")
        row = page.locator(f"li.session[data-session='{session['id']}']")
        await row.wait_for()
        text = await row.inner_text()
        assert mine in text and theirs in text and "Shanghai" in text, text
        assert await page.evaluate("window.forumcastLobby.guestZone") == zone

        first = await page.eval_on_selector_all("#forums li", "els => els.map(e => e.dataset.forum)")
        assert sorted(first) == sorted([FORUM, "ai"])
        links = await page.eval_on_selector_all("#forums a.watch-link", "els => els.map(e => e.getAttribute('href'))")
        assert f"/watch/{FORUM}?token={token}" in links
        assert await page.eval_on_selector_all("#other-forums li", "els => els.length") >= 1
        assert await page.eval_on_selector_all("#other-forums a", "els => els.length") == 0

        # a guest starts watching: the lobby's count for that forum follows by itself
        watch = await context.new_page()
        await watch.goto(f"{server.url}/watch/{FORUM}?token={server.token(Role.VIEWER, [FORUM], 'W')}")
        await page.wait_for_function(
            f"() => Number(document.querySelector(\"#forums li[data-forum='{FORUM}'] .viewers\")"
            ".dataset.viewers) >= 1", timeout=30_000)
        path = shots / f"lobby-{zone.replace('/', '-')}.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        await context.close()
