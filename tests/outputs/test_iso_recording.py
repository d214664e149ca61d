"""Iso recordings (setting `record_iso`, off by default): each live
source of a recording forum is also written copy only, finalized to its
own MP4 and listed with its source; a source that joins later is
recorded from then on; the slate is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import ffmpeg
import pytest

from recorder.recorder import Recorder
from recorder.recording import complete_segments
from rooms.models import Role, SourceKind
from streaming.ffmpeg_process import FfmpegProcess
from streaming.forum_outputs import ProgramOutputs
from streaming.rtp_source import SourceFeed
from tests.eventually import eventually
from tests.outputs.helpers import SMALL, probe, program_bus, slate_feed
from tests.outputs.test_recorder import FORUM, SMALL_ENV
from tests.server_process import start_server


async def test_each_live_source_is_recorded_copy_only_next_to_the_program(tmp_path: Path) -> None:
    speaker, speaker_slate = await slate_feed("Speaker", "speaker-1", 640, 360)  # kind LIVE
    late, late_slate = await slate_feed("Late", "speaker-2", 480, 270)
    cover, cover_slate = await slate_feed("Slate", "slate", 320, 180)
    cover.kind = SourceKind.SLATE
    bus = program_bus()
    bus.switch_to(speaker)
    outputs = ProgramOutputs(lambda forum_id: bus, SMALL)
    feeds: list[SourceFeed] = [speaker, cover]
    off = Recorder(tmp_path / "off", outputs, min_free_bytes=0, feeds_of=lambda forum_id: feeds)
    recorder = Recorder(tmp_path / "rec", outputs, min_free_bytes=0, check_interval=0.2, iso=True,
                        feeds_of=lambda forum_id: feeds)
    try:
        assert off.iso is False  # off by default
        info = await recorder.start("main", "keynote")
        await eventually(lambda: len(recorder.recordings()) == 2, timeout=30, what="the speaker's iso recording")
        feeds.append(late)  # a source that joins during the session
        await eventually(lambda: len(recorder.recordings()) == 3, timeout=30, what="the late source's iso")
        root = tmp_path / "rec" / "main"
        await eventually(lambda: all(len(complete_segments(d)) >= 2 for d in root.iterdir()), timeout=90,
                         what="2 segments in every recording")
        stopped = await recorder.stop("main")
        assert stopped.id == info.id
    finally:
        await recorder.close()
        await outputs.close()
        for slate in (speaker_slate, late_slate, cover_slate):
            await slate.stop()
    listed = {r.source: r for r in recorder.recordings()}
    assert set(listed) == {"", "speaker-1", "speaker-2"}  # the program and the two live sources, not the slate
    for source, size in (("speaker-1", (640, 360)), ("speaker-2", (480, 270))):
        iso = listed[source]
        assert iso.state == "finalized" and iso.session == "keynote" and iso.duration_s >= 2
        assert iso.to_json()["source"] == source
        media = recorder.media_file(iso.id)
        assert media is not None
        found = probe(media)
        # copied: the source's own size and codecs, not the program's 320x180 AAC
        assert found["video"][:3] == ("h264", *size)  # type: ignore[index]
        assert found["audio"] == ("opus", 48000)
    assert listed[""].to_json()["source"] is None


@pytest.mark.slow
async def test_the_server_lists_a_venue_feeds_iso_recording_with_its_source(tmp_path: Path) -> None:
    """On the real server (record_iso on): a venue encoder publishes over
    RTMP, a recording starts and stops; GET /api/recordings lists the
    program (source null) and the venue's iso (its source id), whose MP4
    is the venue's own 320x240 picture, copied."""
    server = start_server(extra_env={**SMALL_ENV, "FORUMCAST_RECORD_ISO": "true"})
    op = server.token(Role.OPERATOR, [FORUM])
    headers = {"Authorization": f"Bearer {op}"}
    venue: FfmpegProcess | None = None
    try:
        async with aiohttp.ClientSession() as http:
            async def ingest() -> dict[str, Any]:
                async with http.get(f"{server.url}/api/forums/{FORUM}/ingest?reveal=true", headers=headers) as r:
                    body: dict[str, Any] = await r.json()
                    assert r.status == 200, body
                    return body

            url = (await ingest())["rtmp_url"]
            video = ffmpeg.input("testsrc=s=320x240:r=15", f="lavfi", re=None)
            audio = ffmpeg.input("sine=r=44100", f="lavfi", re=None)
            venue = FfmpegProcess(ffmpeg.output(video, audio, url, t=120, vcodec="libx264", preset="ultrafast",
                                                pix_fmt="yuv420p", g=30, bf=0, acodec="aac", f="flv",
                                                **{"profile:v": "baseline"}).get_args(),
                                  name="venue", loglevel="error")
            await venue.start()

            async def live() -> bool:
                return (await ingest())["state"] == "live"

            await eventually(live, timeout=60, what="the venue feed live")
            async with http.post(f"{server.url}/api/forums/{FORUM}/recording/start", headers=headers) as r:
                assert r.status == 201, await r.text()

            async def listed() -> list[dict[str, Any]]:
                async with http.get(f"{server.url}/api/recordings", headers=headers) as r:
                    items: list[dict[str, Any]] = (await r.json())["recordings"]
                    return items

            async def iso_with_segments() -> bool:
                isos = [i for i in await listed() if i["source"]]
                return bool(isos) and all(len(complete_segments(d)) >= 2
                                          for d in (server.data_dir / "recordings" / FORUM).glob("*--iso-*"))

            await eventually(iso_with_segments, timeout=90, what="the venue's iso recording with 2 segments")
            async with http.post(f"{server.url}/api/forums/{FORUM}/recording/stop", headers=headers) as r:
                assert r.status == 200, await r.text()
            items = await listed()
            program = [i for i in items if i["source"] is None]
            isos = [i for i in items if i["source"]]
            assert len(program) == 1 and len(isos) == 1, items
            iso = isos[0]
            assert iso["state"] == "finalized" and iso["forum_id"] == FORUM and iso["duration_s"] >= 2, iso
            async with http.get(f"{server.url}/api/recordings/{iso['id']}/media", headers=headers) as r:
                assert r.status == 200
                target = tmp_path / "iso.mp4"
                target.write_bytes(await r.read())
        found = probe(target)
        assert found["video"][:3] == ("h264", 320, 240)  # the venue's own picture (the program is 320x180)
        assert found["audio"] == ("opus", 48000)
    finally:
        if venue is not None:
            await venue.kill()
        server.cleanup()
