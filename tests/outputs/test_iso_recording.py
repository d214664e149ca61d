"""Iso recordings (setting `record_iso`, off by default): each live
source of a recording forum is also written copy only, finalized to its
own MP4 and listed with its source; a source that joins later is
recorded from then on; the slate is not."""

from __future__ import annotations

from pathlib import Path

from recorder.recorder import Recorder
from recorder.recording import complete_segments
from rooms.models import SourceKind
from streaming.forum_outputs import ProgramOutputs
from streaming.rtp_source import SourceFeed
from tests.eventually import eventually
from tests.outputs.helpers import SMALL, probe, program_bus, slate_feed


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
