"""An audio-only speaker in a real chromium's watch page (issue 14 item 5):
ffmpeg's WHIP muxer publishes Opus only; the guest's page used to stay at
readyState 0 ("Connecting to the live stream…") with no sound."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import ffmpeg
import pytest

from rooms.models import Role
from streaming.ffmpeg_process import FfmpegProcess
from tests.e2e.test_browser import FORUM, VIDEO, collect_console, server  # noqa: F401 (fixture)
from tests.eventually import eventually
from tests.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def sources(server: ServerProcess) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{server.url}/api/forums/{FORUM}", timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return list(body.get("sources", []))


async def test_an_audio_only_speaker_plays_in_the_watch_page(server: ServerProcess, browser: Any) -> None:
    token = server.token(Role.SPEAKER, [FORUM], "Audio Only Speaker")
    args = ffmpeg.output(ffmpeg.input("sine=f=440:r=48000", f="lavfi", re=None), f"{server.url}/whip/{FORUM}",
                         t=120, acodec="libopus", ac=2, f="whip", authorization=token).get_args()
    encoder = FfmpegProcess(args, name="whip-audio-only", loglevel="error")
    await encoder.start()
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    try:
        def live() -> bool:
            return any(s["name"] == "Audio Only Speaker" and s["state"] == "live" for s in sources(server))

        await eventually(lambda: asyncio.to_thread(live), timeout=40, what="the audio-only source live")
        watch = await context.new_page()
        collect_console(watch, console)
        await watch.goto(f"{server.url}/watch/{FORUM}?token={server.token(Role.VIEWER, [FORUM], 'Guest')}")
        await watch.wait_for_function(
            "() => document.getElementById('program').textContent.includes('Audio Only Speaker')", timeout=30_000)
        await watch.wait_for_function(f"() => {VIDEO}.readyState >= 2", timeout=30_000)
        start = await watch.evaluate(f"{VIDEO}.currentTime")
        await watch.wait_for_function(f"() => {VIDEO}.currentTime > {start} + 2", timeout=30_000)
        await watch.click("#unmute")  # a muted element pulls no audio: nothing to measure
        # the speaker's tone is heard (before: the slate's silence went on), the picture is the slate's
        heard = """async () => {
            const stats = await window.forumcastWatch.pc.getStats();
            let energy = 0, frames = 0;
            for (const s of stats.values()) {
                if (s.type === 'inbound-rtp' && s.kind === 'audio') energy = s.totalAudioEnergy || 0;
                if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
            }
            return energy > 0.01 && frames > 10; }"""  # the tone, not silence
        await eventually(lambda: watch.evaluate(heard), timeout=30, what="the tone and the picture decoded")
        assert not [line for line in console if line.startswith("pageerror")], console
    finally:
        await context.close()
        await encoder.stop(grace=1.0)
