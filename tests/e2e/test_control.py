"""The control page in a real chromium (Debian's, driven by Playwright):
two speakers publish (aiortc, different picture sizes), the operator
sees a live tile per source, clicks B's tile into preview and presses
TAKE; the rooms put B on air and the program monitor shows B's picture.
The venue's stream key is hidden until asked for; a venue source that is
still connecting can be previewed but TAKE stays disabled (and a
double-click take is refused with the reason).
A viewer's token gets a plain refusal. A screenshot goes to
$FORUMCAST_SCREENSHOTS (or the test's temp dir)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Role
from rooms.tokens import Grant
from signaling.app_keys import CONTROL, LIBRARY, ROOMS
from tests.e2e.chromium import CHROMIUM
from tests.eventually import eventually
from tests.operator_app import Node, SioClient, SizedPublisher, running_node

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FORUM = "ai"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium")
    async with running_node(tmp_path / "node") as running:
        yield running


@pytest.fixture
async def peers() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for peer in reversed(made):
        await peer.close()


async def _publish(node: Node, peers: list[Any], width: int, height: int, name: str) -> tuple[str, SioClient]:
    publisher = SizedPublisher(width, height)
    client = SioClient()
    peers.extend([publisher, client])
    await client.connect(node, node.token(Role.SPEAKER, [FORUM], name))
    await client.call("join", {"forum_id": FORUM})
    answer = await client.call("publish", {"forum_id": FORUM, "sdp": await publisher.offer()})
    await publisher.accept(answer["sdp"])
    return str(answer["source_id"]), client


OPERATOR_GRANT = Grant(role=Role.OPERATOR, forums=None, name="Test", subject="t", expires_at=time.time() + 3600)


async def _venue_tile(page: Any) -> str:
    """The venue source's tile (it appears once the page opened the listeners)."""
    handle = await page.wait_for_function(
        "() => { const s = window.forumcastControl.sources.find((x) => x.kind === 'venue');"
        " return s && document.querySelector(`.tile[data-source=\"${s.id}\"]`) ? s.id : null; }",
        timeout=15_000)
    return str(await handle.json_value())


def _tile_playing(source_id: str) -> str:
    return (f"() => {{ const v = document.querySelector('.tile[data-source=\"{source_id}\"] video');"
            " return v && v.videoWidth > 0; }")


async def test_operator_takes_a_source_from_the_control_page(node: Node, browser: Any, peers: list[Any],
                                                             tmp_path: Path) -> None:
    a, speaker_a = await _publish(node, peers, 320, 240, "Speaker A")
    # the unattended forum follows its newest live speaker; an operator's take of A
    # is a choice that stands, so B (live later) waits for the control page's TAKE
    await speaker_a.next_push("program", lambda p: p["program"] == a, timeout=20)
    operator = SioClient()
    peers.append(operator)
    await operator.connect(node, node.token(Role.OPERATOR, [FORUM], "Desk"))
    assert (await operator.call("take", {"forum_id": FORUM, "source_id": a}))["program"]["program"] == a
    b, _ = await _publish(node, peers, 240, 160, "Speaker B")
    console: list[str] = []
    context = await browser.new_context(viewport={"width": 1400, "height": 900},
                                        permissions=["camera", "microphone"])
    page = await context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        await page.goto(f"{node.url}/control/{FORUM}?token={node.token(Role.OPERATOR, [FORUM], 'Op')}")
        for source in (a, b):
            try:
                await page.wait_for_function(_tile_playing(source), timeout=30_000)
            except Exception:
                raise AssertionError(f"tile {source} not playing: {await page.text_content('#message')!r} "
                                     f"{await page.inner_html('#tiles')} {console}") from None
        # opening the page opens the venue listeners (the venue source appears, connecting)
        # but the stream key stays hidden until the operator asks for it
        venue = await _venue_tile(page)
        key = (await node.app[CONTROL].ingest(FORUM, OPERATOR_GRANT, reveal=True))["stream_key"]
        assert await page.is_hidden("#ingest")
        assert key not in (await page.content())
        await page.click("#ingest-show")
        await page.wait_for_function("() => !document.getElementById('ingest').hidden", timeout=15_000)
        assert (await page.text_content("#ingest-rtmp") or "").startswith("rtmp://127.0.0.1:")
        assert key in (await page.text_content("#ingest-rtmp") or "")
        await page.click("#ingest-show")
        assert await page.is_hidden("#ingest") and key not in (await page.content())
        # a source that is not live cannot go on air: in preview, TAKE stays disabled and says why
        await page.click(f'.tile[data-source="{venue}"]')
        await page.wait_for_function(f"() => window.forumcastControl.program.preview === '{venue}'",
                                     timeout=10_000)
        assert not await page.is_enabled("#take")
        assert "only a live source" in (await page.get_attribute("#take", "title") or "")
        await page.keyboard.press("Enter")  # the shortcut is refused the same way: nothing taken
        await page.dblclick(f'.tile[data-source="{venue}"]')  # a double-click asks; the server says why not
        await page.wait_for_function("() => /live source/.test(document.getElementById('message').textContent)",
                                     timeout=10_000)
        assert (await node.app[ROOMS].program(FORUM)).program == a
        await page.click(f'.tile[data-source="{b}"]')
        await page.wait_for_function(f"() => window.forumcastControl.program.preview === '{b}'", timeout=10_000)
        assert await page.is_enabled("#take")
        await page.click("#take")
        await page.wait_for_function(f"() => window.forumcastControl.program.program === '{b}'", timeout=10_000)
        program = await node.app[ROOMS].program(FORUM)
        assert program.program == b and not program.slate
        await page.wait_for_function("() => document.getElementById('program-video').videoWidth === 240",
                                     timeout=15_000)
        assert await page.get_attribute(f'.tile[data-source="{b}"]', "class") == "tile on-air"
        # A was on air (the unattended forum followed its first speaker): it moves to preview
        await page.wait_for_function(f"() => window.forumcastControl.program.preview === '{a}'", timeout=10_000)
        assert await page.get_attribute(f'.tile[data-source="{a}"]', "class") == "tile in-preview"
        assert "ON AIR" in (await page.text_content(f'.tile[data-source="{b}"] .badge') or "")
        folder = Path(os.environ.get("FORUMCAST_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(folder / "control.png"))
        # a viewer's invite cannot run the mixer
        viewer_page = await context.new_page()
        await viewer_page.goto(f"{node.url}/control/{FORUM}?token={node.token(Role.VIEWER, [FORUM])}")
        await viewer_page.wait_for_function("() => window.forumcastControl.fatal === true", timeout=15_000)
        assert "operator" in (await viewer_page.text_content("#message") or "")
    finally:
        await context.close()
    assert not [line for line in console if line.startswith("pageerror")], console


async def test_operator_uploads_from_the_control_page_and_picks_the_language(node: Node, browser: Any,
                                                                            tmp_path: Path) -> None:
    """tus-js-client on the page against the tus routes: the upload's
    conversion shows as a job, the item arrives with its two audio
    tracks, and choosing the interpretation reaches the library."""
    from tests.test_media_uploads import interpretation_video

    video = interpretation_video(tmp_path / "talk.mkv")
    console: list[str] = []
    context = await browser.new_context()
    page = await context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        await page.goto(f"{node.url}/control/{FORUM}?token={node.token(Role.OPERATOR, [FORUM], 'Op')}")
        await page.wait_for_function("() => typeof window.tus === 'object' && window.tus.isSupported")
        await page.set_input_files("#upload-file", str(video))
        await page.click("#upload button[type=submit]")
        try:
            await page.wait_for_selector("#media li select.audio-track", timeout=60_000)
        except Exception:
            raise AssertionError(f"no item: {await page.text_content('#upload-status')!r} "
                                 f"{await page.text_content('#message')!r} {console}") from None
        library = node.app[LIBRARY]
        [item] = library.items(FORUM)
        assert [t["language"] for t in item.audio_tracks] == ["eng", "fra"] and item.audio_track == 0
        assert "copied" in (await page.text_content("#media li") or "")
        await page.select_option("#media li select.audio-track", "1")
        await page.wait_for_function(
            "() => document.querySelector('#media li select.audio-track').value === '1'", timeout=10_000)

        async def chosen() -> bool:
            return library.get(item.id).audio_track == 1

        await eventually(chosen, timeout=15, what="the operator's track choice reaches the library")
    finally:
        await context.close()
    assert not [line for line in console if line.startswith("pageerror")], console


async def test_a_speaker_sends_a_recording_from_the_speak_page(node: Node, browser: Any, tmp_path: Path) -> None:
    """The invite link's page uploads over tus with the speaker's token and
    follows the conversion to its end (a voice-only file: a card is added)."""
    from tests.streaming.recorded_inputs import RecordedInputs

    voice = RecordedInputs(tmp_path / "inputs")("voice.m4a")
    console: list[str] = []
    context = await browser.new_context(permissions=["camera", "microphone"])
    page = await context.new_page()
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        await page.goto(f"{node.url}/speak/{FORUM}?token={node.token(Role.SPEAKER, [FORUM], 'Ana')}")
        await page.wait_for_function("() => typeof window.tus === 'object'")
        await page.set_input_files("#recording-file", str(voice))
        await page.click("#send-recording button[type=submit]")
        await page.wait_for_function(
            "() => document.getElementById('recording-status').textContent.includes('ready')", timeout=60_000)
        [item] = node.app[LIBRARY].items(FORUM)
        assert item.uploaded_by == "Ana" and item.processing["video_mode"] == "card"
    finally:
        await context.close()
    assert not console, console
