"""The pages people use, in a real chromium (Debian's, driven by
Playwright, never downloaded): the EN/ZH language switch every page
shares, the lobby's agenda in the guest's and the venue's time zones, the
watch page's chat and Q&A reaching the control page, and the layouts at
1280x800 and 390x844 with nothing covering the video. Screenshots go to
$FORUMCAST_SCREENSHOTS (or the test's temp dir); each test prints where."""

from __future__ import annotations

import datetime as dt
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rooms.models import Role
from tests.e2e.test_browser import FORUM, collect_console, server, shots  # noqa: F401 (fixtures)
from tests.server_process import ServerProcess, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FORUM_ZH = "青少年数字素养论坛"
CJK = re.compile(r"[\u4e00-\u9fff]")


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
        assert "在线观看" in (await page.text_content("main") or "")
        assert (await page.text_content("#lang-switch")) == "English"
        await page.screenshot(path=str(shots / "watch-zh.png"))

        # the status pill, set by the page's state (not the template), is in Chinese too
        await page.wait_for_function("() => document.getElementById('status').dataset.i18n !== 'watch.connecting'")
        state_key = await page.evaluate("document.getElementById('status').dataset.i18n")
        assert CJK.search(await page.text_content("#status") or ""), state_key

        # switch to English: labels, the name and the state pill follow, and the choice outlives a reload
        await page.click("#lang-switch")
        assert (await page.text_content("#forum-name") or "").startswith("Youth and Digital Literacy Forum")
        pill = await page.text_content("#status") or ""
        assert pill and not CJK.search(pill), (state_key, pill)  # it stayed Chinese before
        assert "Watching online" in (await page.text_content("main") or "")
        await page.reload()
        await page.wait_for_function("() => document.getElementById('lang-switch') !== null")
        assert (await page.text_content("#forum-name") or "").startswith("Youth")

        # the lobby follows the remembered choice (English now); in Chinese it names forums in Chinese
        lobby = await context.new_page()
        await lobby.goto(f"{server.url}/lobby?token={token}")
        await lobby.locator(f"#forums li[data-forum='{FORUM}']", has_text="Youth and Digital").wait_for()
        await lobby.click("#lang-switch")
        await lobby.locator(f"#forums li[data-forum='{FORUM}']", has_text=FORUM_ZH).wait_for()
        assert "议程" in (await lobby.text_content("main") or "")

        # a browser in Chinese with no language in its invite gets Chinese on the speak page
        zh_context = await browser.new_context(locale="zh-CN")
        try:
            speak = await zh_context.new_page()
            collect_console(speak, console)
            await speak.goto(f"{server.url}/speak/{FORUM}?token={server.token(Role.SPEAKER, [FORUM], 'S')}")
            await speak.wait_for_function("() => document.getElementById('lang-switch') !== null")
            assert (await speak.text_content("#forum-name") or "").startswith(FORUM_ZH)
            assert (await speak.text_content("#go-live")) == "开始直播"
            # the camera preview with nothing over it, at 1280x800 and on a phone
            await speak.wait_for_function("() => document.getElementById('preview').videoWidth > 0", timeout=20_000)
            for width, height in ((1280, 800), (390, 844)):
                await speak.set_viewport_size({"width": width, "height": height})
                await _no_overlap(speak, "#preview")
                path = shots / f"speak-zh-{width}x{height}.png"
                await speak.screenshot(path=str(path), full_page=True)
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


# every visible element's box against the video's: none may overlap the picture
OVERLAPS = """(videoSelector) => {
  const video = document.querySelector(videoSelector);
  const v = video.getBoundingClientRect();
  const found = [];
  for (const node of document.body.querySelectorAll('*')) {
    if (node === video || node.contains(video) || video.contains(node)) continue;
    const style = getComputedStyle(node);
    if (style.display === 'none' || style.visibility === 'hidden' || Number(style.opacity) === 0) continue;
    const r = node.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const w = Math.min(r.right, v.right) - Math.max(r.left, v.left);
    const h = Math.min(r.bottom, v.bottom) - Math.max(r.top, v.top);
    if (w > 0.5 && h > 0.5) found.push(`${node.tagName.toLowerCase()}#${node.id}.${node.className} ${Math.round(w)}x${Math.round(h)}`);
  }
  return {video: [v.width, v.height], found};
}"""

MARKUP = '<b>bold</b> & <img src=x onerror="window.pwned=1">'


async def _no_overlap(page: Any, video: str) -> None:
    result = await page.evaluate(OVERLAPS, video)
    assert result["video"][0] > 100 and result["video"][1] > 50, result
    assert result["found"] == [], result


async def test_chat_and_questions_go_from_the_watch_page_to_the_control_page(
        server: ServerProcess, browser: Any, shots: Path) -> None:
    operator = server.token(Role.OPERATOR, [FORUM], "Ops")
    desk = await browser.new_context(viewport={"width": 1280, "height": 800})
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    laptop = await browser.new_context(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    try:
        control = await desk.new_page()
        collect_console(control, console)
        await control.goto(f"{server.url}/control/{FORUM}?token={operator}")
        await control.wait_for_function("() => document.getElementById('status').textContent === 'Connected'",
                                        timeout=30_000)
        watchers = []
        for context, name in ((phone, "Phone guest"), (laptop, "Laptop guest")):
            page = await context.new_page()
            collect_console(page, console)
            await page.goto(f"{server.url}/watch/{FORUM}?token={server.token(Role.VIEWER, [FORUM], name)}")
            await page.wait_for_function("() => window.forumcastWatch.joined", timeout=30_000)
            watchers.append(page)
        mobile, other = watchers

        # a chat message with markup: shown as the text it is, everywhere
        await mobile.fill("#say-text", MARKUP)
        await mobile.click("#say button")
        for page, selector in ((control, "#qa-chat"), (other, "#chat"), (mobile, "#chat")):
            item = page.locator(f"{selector} li", has_text="bold")
            await item.wait_for(timeout=20_000)
            assert await item.locator(".text").inner_text() == MARKUP
            assert await page.evaluate(f"document.querySelector('{selector} b, {selector} img') === null")
            assert await page.evaluate("window.pwned === undefined")

        # a question goes to the operators' queue only
        await mobile.fill("#ask-text", "Will the slides be shared?")
        await mobile.click("#ask button")
        queued = control.locator("#qa-queue li", has_text="slides")
        await queued.wait_for(timeout=20_000)
        await mobile.wait_for_function("() => document.getElementById('ask-status').textContent.length > 0")
        for page in watchers:
            assert await page.locator("#questions li").count() == 0

        # approved: on every watch page; marked answered there too; dismissed: gone from all
        await queued.get_by_role("button", name="Approve").click()
        for page in watchers:
            await page.locator("#questions li", has_text="slides").wait_for(timeout=20_000)
        await queued.get_by_role("button", name="Answered").click()
        for page in watchers:
            await page.locator("#questions li.answered", has_text="slides").wait_for(timeout=20_000)

        # layouts: the picture plays with nothing over it, on the phone and the desk
        for page in (mobile, other):
            await page.wait_for_function("() => document.getElementById('program-video').videoWidth > 0",
                                         timeout=30_000)
        await _no_overlap(mobile, "#program-video")
        await _no_overlap(other, "#program-video")
        await _no_overlap(control, "#program-video")
        await _no_overlap(control, "#preview-video")
        width = await mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the phone page scrolls sideways ({width} px)"
        # the sample event is in the past: the page says so instead of "starting soon"
        await mobile.wait_for_function("() => window.forumcastWatch.forumState === 'ended'", timeout=20_000)
        assert "ended" in (await mobile.text_content("#forum-state") or "")
        for page, name in ((mobile, "watch-390x844.png"), (other, "watch-1280x800.png"),
                           (control, "control-1280x800.png")):
            await page.screenshot(path=str(shots / name), full_page=True)
        print(f"screenshots: {shots}")

        await queued.get_by_role("button", name="Dismiss").click()
        for page in watchers:
            await page.wait_for_function(
                "() => !document.getElementById('questions').textContent.includes('slides')", timeout=20_000)
        await queued.wait_for(state="detached", timeout=20_000)

        # over the rate limit: the guest is told why and when to try again
        for i in range(12):
            await other.fill("#say-text", f"message {i}")
            await other.click("#say button")
            await other.wait_for_function(
                "() => document.getElementById('say-text').value === ''"
                " || document.getElementById('say-status').textContent !== ''", timeout=20_000)
            if await other.text_content("#say-status"):
                break
        refusal = await other.text_content("#say-status") or ""
        assert "a minute" in refusal and "try again in" in refusal, refusal
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        for context in (desk, phone, laptop):
            await context.close()


async def test_the_status_wall_shows_every_forum_and_follows_a_speaker(
        server: ServerProcess, browser: Any, shots: Path) -> None:
    for token, code in ((None, 401), (server.token(Role.VIEWER, None, "Guest"), 403)):
        request = urllib.request.Request(f"{server.url}/api/status")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == code and b'"error"' in refused.value.read()
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    try:
        page = await context.new_page()
        collect_console(page, console)
        await page.goto(f"{server.url}/status?token={server.token(Role.OPERATOR, None, 'Wall')}")
        await page.wait_for_function("() => window.forumcastStatus.polls >= 1", timeout=20_000)
        cards = await page.locator("#wall li.wall-forum").count()
        assert cards == len(server.get_json("/api/forums")["forums"])

        # a speaker goes live: the wall shows the source live and on air, with what the node receives
        speak = await context.new_page()
        collect_console(speak, console)
        await speak.goto(f"{server.url}/speak/{FORUM}?token={server.token(Role.SPEAKER, [FORUM], 'Wall Speaker')}")
        await speak.wait_for_function("() => !document.getElementById('go-live').disabled", timeout=20_000)
        await speak.click("#go-live")
        card = page.locator(f"li.wall-forum[data-forum='{FORUM}']")
        await card.locator("li.source.state-live", has_text="Wall Speaker").locator(".track", has_text="kb/s") \
            .first.wait_for(timeout=30_000)
        await card.locator(".on-air", has_text="Wall Speaker").wait_for(timeout=30_000)
        path = shots / "status-1280x800.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        await speak.click("#stop")
        await card.locator("li.source", has_text="Wall Speaker").wait_for(state="detached", timeout=30_000)

        # a viewer's token gets a plain refusal, not an empty wall
        refused_page = await context.new_page()
        await refused_page.goto(f"{server.url}/status?token={server.token(Role.VIEWER, None, 'Guest')}")
        await refused_page.wait_for_function("() => !document.getElementById('message').hidden", timeout=20_000)
        assert "operator" in (await refused_page.text_content("#message") or "")
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        await context.close()


def _agenda_now(tmp_path: Path) -> Path:
    """An event file whose forums are, now: not started, on a break, live."""
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)

    def at(minutes: int) -> str:
        return (now + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")

    days = sorted({(now + dt.timedelta(minutes=m)).date().isoformat() for m in (-180, 0, 180)})

    def forum(forum_id: str, sessions: list[tuple[str, int, int]]) -> str:
        text = (f'[[forums]]\nid = "{forum_id}"\nkind = "sub"\nname = {{ en = "{forum_id}", zh = "{forum_id}" }}\n'
                f'room = {{ en = "Room", zh = "会议室" }}\ncapacity = 50\n')
        for session_id, start, end in sessions:
            text += (f'\n[[forums.sessions]]\nid = "{session_id}"\nstart = "{at(start)}"\nend = "{at(end)}"\n'
                     f'title = {{ en = "Title {session_id}", zh = "标题 {session_id}" }}\nspeakers = ["ada"]\n')
        return text + "\n"

    path = tmp_path / "now.toml"
    path.write_text(
        f'[event]\nid = "now"\nname = {{ en = "Now", zh = "现在" }}\ntimezone = "UTC"\n'
        f'days = [{", ".join(days)}]\npublic = false\n\n'
        '[[speakers]]\nid = "ada"\nname = { en = "Ada Lovelace", zh = "阿达" }\n'
        'affiliation = { en = "Engines", zh = "引擎" }\nmode = "live"\n\n'
        + forum("soon", [("soon-1", 120, 180)])
        + forum("pause", [("pause-1", -120, -60), ("pause-2", 60, 120)])
        + forum("onair", [("onair-1", -10, 50)]),
        encoding="utf-8")
    return path


async def test_the_watch_page_says_not_started_on_a_break_or_live(browser: Any, shots: Path, tmp_path: Path) -> None:
    node = start_server(extra_args=["--event", str(_agenda_now(tmp_path))])
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        token = node.token(Role.VIEWER, None, "Guest")
        page = await context.new_page()
        state = "() => window.forumcastWatch.forumState"
        await page.goto(f"{node.url}/watch/soon?token={token}")
        await page.wait_for_function(f"{state} === 'not_started'", timeout=20_000)
        first = await page.text_content("#forum-state") or ""
        assert "starts in 01:5" in first or "starts in 02:00" in first, first
        await page.wait_for_function(  # the countdown runs
            f"() => document.getElementById('forum-state').textContent !== {first!r}", timeout=10_000)
        assert await page.text_content("#session-next") == "Title soon-1"

        await page.goto(f"{node.url}/watch/pause?token={token}")
        await page.wait_for_function(f"{state} === 'break'", timeout=20_000)
        text = await page.text_content("#forum-state") or ""
        assert "break" in text and "Title pause-2" in text, text

        await page.goto(f"{node.url}/watch/onair?token={token}")
        await page.wait_for_function(f"{state} === 'live'", timeout=20_000)
        assert await page.locator("#forum-state").is_hidden()
        assert await page.text_content("#session-title") == "Title onair-1"
        assert await page.text_content("#session-speakers") == "Ada Lovelace"
        path = shots / "watch-live-session.png"
        await page.screenshot(path=str(path))
        print(f"screenshot: {path}")
    finally:
        await context.close()
        node.cleanup()
