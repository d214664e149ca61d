"""The recorder on the real server: a recording survives a SIGKILL of the
server (the next start finalizes it up to the last complete segment), is
listed and downloads with HTTP ranges; unit pieces with real ffmpeg."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from recorder.recording import complete_segments
from rooms.models import Role
from tests.eventually import eventually_blocking
from tests.outputs.helpers import probe
from tests.server_process import ServerProcess, start_server

FORUM = "main"
SMALL_ENV = {
    "FORUMCAST_OUTPUT_WIDTH": "320", "FORUMCAST_OUTPUT_HEIGHT": "180", "FORUMCAST_OUTPUT_FPS": "15",
    "FORUMCAST_OUTPUT_VIDEO_KBPS": "300", "FORUMCAST_OUTPUT_AUDIO_KBPS": "64",
    "FORUMCAST_OUTPUT_PRESET": "ultrafast",
}


def request(server: ServerProcess, method: str, path: str, token: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(server.url + path, method=method, data=body,
                                 headers={"Authorization": f"Bearer {token}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.mark.slow
def test_sigkill_20_s_into_a_recording_then_restart_finalizes_it(tmp_path: Path) -> None:
    first = start_server(extra_env=SMALL_ENV)
    op = first.token(Role.OPERATOR, [FORUM])
    recordings = first.data_dir / "recordings" / FORUM
    second: ServerProcess | None = None
    try:
        status, body, _ = request(first, "POST", f"/api/forums/{FORUM}/recording/start", op)
        assert status == 201, body
        started = json.loads(body)
        assert started["state"] == "recording" and started["forum_id"] == FORUM
        directory = recordings / started["id"]
        # 20 s of program in complete segments (2 s each), then the server dies at once
        eventually_blocking(lambda: len(complete_segments(directory)) >= 10, timeout=180,
                            what="10 complete segments")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        second = start_server(extra_env=SMALL_ENV, secret=first.secret,
                              extra_args=["--data-dir", str(first.data_dir)])

        def finalized() -> dict[str, Any] | None:
            status, body, _ = request(second, "GET", "/api/recordings", op)  # type: ignore[arg-type]
            items = [r for r in json.loads(body)["recordings"] if r["id"] == started["id"]]
            return items[0] if items and items[0]["state"] == "finalized" else None

        item = eventually_blocking(finalized, timeout=120, what="the recording finalized after the restart")
        assert item["duration_s"] >= 20 - 2 and item["size"] > 0 and item["session"] == "manual"
        media = f"/api/recordings/{started['id']}/media"
        status, head, headers = request(second, "GET", media, op, headers={"Range": "bytes=0-99"})
        assert status == 206 and len(head) == 100 and headers["Content-Range"].endswith(f"/{item['size']}")
        status, whole, headers = request(second, "GET", media, op)
        assert status == 200 and len(whole) == item["size"] and headers["Content-Type"] == "video/mp4"
        assert whole.find(b"moov") < whole.find(b"mdat")  # +faststart
        target = tmp_path / "rec.mp4"
        target.write_bytes(whole)
        info = probe(target)
        assert info["video"][:3] == ("h264", 320, 180) and info["audio"] == ("aac", 48000)
        assert float(info["duration"]) >= 20 - 2  # type: ignore[arg-type]
        # another operator's forum is not listed; no token is refused
        other = second.token(Role.OPERATOR, ["entrepreneurs"])
        assert json.loads(request(second, "GET", "/api/recordings", other)[1])["recordings"] == []
        assert request(second, "GET", media, "")[0] == 401
    finally:
        if second is not None:
            second.stop()
        first.cleanup()


async def test_a_full_disk_stops_the_recording_with_an_alert(tmp_path: Path) -> None:
    from recorder.recorder import Recorder, RecorderError
    from tests.eventually import eventually
    from tests.outputs.helpers import slate_program

    async with slate_program() as (_, outputs):
        changes: list[dict[str, object]] = []
        recorder = Recorder(tmp_path / "rec", outputs, check_interval=0.2,
                            on_change=lambda i: changes.append(i.to_json()))
        try:
            recorder.min_free_bytes = 1 << 62  # no disk has that much free
            with pytest.raises(RecorderError) as refused:
                await recorder.start("main")
            assert refused.value.code == "disk_full" and outputs.forum("main").encoder is None
            recorder.min_free_bytes = 0
            info = await recorder.start("main", "keynote")
            directory = tmp_path / "rec" / "main" / info.id
            await eventually(lambda: len(complete_segments(directory)) >= 2, timeout=60, what="2 segments")
            recorder.min_free_bytes = 1 << 62  # the disk fills up while recording
            await eventually(lambda: info.state in ("finalized", "failed"), timeout=60, what="the recording stopped")
            assert info.alert == "the disk is full: recording stopped"
            assert info.state == "finalized" and info.duration_s >= 2  # what was recorded is kept
            assert recorder.active("main") is None and outputs.forum("main").encoder is None
            assert any(c["alert"] for c in changes)
        finally:
            await recorder.close()


async def test_a_recording_started_again_within_the_same_second_gets_a_name_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names are stamped to the second: a stop and a start within one
    answered 500 (the directory existed), and an iso recording of a source
    that reconnected within one would have written into the other's."""
    import recorder.recorder as recorder_module
    from recorder.recorder import Recorder, new_directory
    from tests.outputs.helpers import slate_program

    taken = [new_directory(tmp_path / "names", "main--manual--20261130T120000Z")[0] for _ in range(3)]
    assert taken == ["main--manual--20261130T120000Z", "main--manual--20261130T120000Z-2",
                     "main--manual--20261130T120000Z-3"]

    frozen = 1_796_040_000.0  # one second, whatever the machine's speed
    monkeypatch.setattr(recorder_module.time, "time", lambda: frozen)
    async with slate_program() as (_, outputs):
        recorder = Recorder(tmp_path / "rec", outputs)
        try:
            first = await recorder.start("main")
            await recorder.stop("main")
            second = await recorder.start("main")
            await recorder.stop("main")
            assert first.id != second.id and second.id == first.id + "-2"
            assert (tmp_path / "rec" / "main" / second.id).is_dir()
        finally:
            await recorder.close()


def _left_recording(root: Path, writer: str) -> Path:
    """A recording as a node left it: meta "recording" by `writer`, one complete real segment."""
    import subprocess
    import time

    from config.settings import ffmpeg_path, Settings

    directory = root / FORUM / f"{FORUM}--manual--20261201T000000Z"
    directory.mkdir(parents=True)
    subprocess.run([ffmpeg_path(Settings()), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc=size=160x120:rate=15", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
                    "-f", "mpegts", str(directory / "seg-000-00000.ts")], check=True, timeout=120)
    (directory / "index-000.csv").write_text("seg-000-00000.ts,0.000000,2.000000\n")
    (directory / "meta.json").write_text(json.dumps({
        "id": directory.name, "forum_id": FORUM, "session": "manual", "started_at": time.time(),
        "state": "recording", "runs": 1, "writer": writer}))
    return directory


async def test_a_recording_another_live_node_writes_is_not_finalized_at_start(tmp_path: Path) -> None:
    """serve --workers: every worker shares the data dir; a worker that
    starts (or restarts) finalized the recordings the others were writing."""
    import subprocess

    from recorder.recorder import Recorder
    from streaming.child_processes import start_ticks
    from streaming.forum_outputs import ProgramOutputs
    from streaming.forum_outputs import OutputProfile

    outputs = ProgramOutputs(lambda forum_id: None, OutputProfile())  # type: ignore[arg-type,return-value]
    other = subprocess.Popen(["sleep", "600"])  # the other node, alive
    try:
        directory = _left_recording(tmp_path / "rec", f"{other.pid}-{start_ticks(other.pid)}")
        recorder = Recorder(tmp_path / "rec", outputs, min_free_bytes=0)
        assert await recorder.recover() == []
        assert json.loads((directory / "meta.json").read_text())["state"] == "recording"
        assert complete_segments(directory)  # its segments untouched
    finally:
        other.kill()
        other.wait()
    recovered = await recorder.recover()  # its writer is gone now: left unfinished
    assert [info.state for info in recovered] == ["finalized"]
    assert (directory / f"{directory.name}.mp4").stat().st_size > 0


async def test_nodes_starting_at_once_finalize_a_left_recording_once(tmp_path: Path) -> None:
    import asyncio

    from recorder.recorder import Recorder
    from streaming.forum_outputs import ProgramOutputs
    from streaming.forum_outputs import OutputProfile

    outputs = ProgramOutputs(lambda forum_id: None, OutputProfile())  # type: ignore[arg-type,return-value]
    directory = _left_recording(tmp_path / "rec", "999999999-1")  # a dead run
    recorders = [Recorder(tmp_path / "rec", outputs, min_free_bytes=0) for _ in range(3)]
    results = await asyncio.gather(*(r.recover() for r in recorders))
    assert sorted(len(found) for found in results) == [0, 0, 1], results
    assert json.loads((directory / "meta.json").read_text())["state"] == "finalized"
    assert probe(directory / f"{directory.name}.mp4")
