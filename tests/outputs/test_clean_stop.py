"""Stopping a recording forum's outputs ends every ffmpeg by the end of
its input (exit code 0), never by SIGTERM or SIGKILL after its grace,
and the recording is finalized; also when the program is silent (a
node's shutdown closes the media plane first)."""

from __future__ import annotations

from pathlib import Path

from recorder.recorder import Recorder
from recorder.recording import complete_segments
from streaming.ffmpeg_process import FfmpegExit, Supervisor
from streaming.end_of_input import end_reader
from streaming.forum_outputs import ProgramOutputs
from streaming.hls_output import HlsOutput
from tests.eventually import eventually
from tests.outputs.helpers import SMALL, program_bus, slate_feed
from tests.outputs.platforms import Platform


def last_exit(supervisor: Supervisor | None) -> FfmpegExit:
    assert supervisor is not None and supervisor.last_exit is not None
    return supervisor.last_exit


async def test_stopping_a_recorded_forum_ends_each_ffmpeg_without_a_signal(tmp_path: Path) -> None:
    platform = Platform("plain", tmp_path, "key-1234")
    await platform.start()
    feed, slate = await slate_feed("Main Hall", "slate", 320, 180)
    bus = program_bus()
    bus.switch_to(feed)
    outputs = ProgramOutputs(lambda forum_id: bus, SMALL)
    forum = outputs.forum("main")
    recorder = Recorder(tmp_path / "rec", outputs, min_free_bytes=0)
    try:
        info = await recorder.start("main", "keynote")
        url = await forum.acquire("hls")
        hls = HlsOutput("main", tmp_path / "hls", url)
        await hls.start()
        restream = forum.add("Plain", platform.url, "key-1234")
        await forum.start(restream.id)
        encoder = forum.encoder
        assert encoder is not None
        directory = tmp_path / "rec" / "main" / info.id
        await eventually(lambda: len(complete_segments(directory)) >= 2, timeout=90, what="2 segments")
        await eventually(lambda: restream.state == "live", timeout=60, what="the destination live")
        push = restream._supervisor
        recording = recorder._active["main"].supervisor
        # as at a node's shutdown (the media plane closes first): the program goes silent,
        # and a reader blocked on a silent input never saw its 'q'
        await slate.stop()
        bus.switch_to(None)
        await end_reader(hls.supervisor.stop() if hls.supervisor else None, forum.release("hls"))
        await hls.stop()
        await forum.stop(restream.id)
        await recorder.stop("main")  # the last user: the encoder stops too
        assert forum.encoder is None and encoder.state == "stopped"
        for name, supervisor in (("encoder", encoder._supervisor), ("recorder", recording),
                                 ("hls", hls.supervisor), ("restream", push)):
            ended = last_exit(supervisor)
            # -15/-9: ended by SIGTERM/SIGKILL after the grace ran out
            assert ended.stopped and ended.returncode == 0, f"{name}: {ended.describe()}"
        assert info.state == "finalized" and info.duration_s >= 2
    finally:
        await recorder.close()
        await outputs.close()
        await slate.stop()
        await platform.stop()
