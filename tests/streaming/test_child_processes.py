"""Children never outlive the server: the parent-death signal, and a
starting server ending the strays a dead one left (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streaming.child_processes import ChildRegistry, start_ticks
from tests.eventually import eventually_blocking

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_an_ffmpeg_child_dies_when_its_server_is_sigkilled(tmp_path: Path) -> None:
    """A stand-in server runs an endless ffmpeg through FfmpegProcess and
    is SIGKILLed: the ffmpeg must not be re-parented and keep running."""
    script = textwrap.dedent(f"""
        import asyncio, ffmpeg, sys
        from streaming.ffmpeg_process import FfmpegProcess
        async def main():
            args = ffmpeg.input("testsrc=s=64x48:r=5", f="lavfi", re=None).output("-", f="null").get_args()
            process = FfmpegProcess(args, name="endless")
            await process.start()
            print(process.pid, flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
    """)
    server = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    child = 0
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        assert _running(child)
        assert os.getpgid(child) == child  # its own process group
        server.kill()
        server.wait()
        eventually_blocking(lambda: not _running(child), timeout=10, what="the orphaned ffmpeg to die")
    finally:
        if child and _running(child):
            os.kill(child, signal.SIGKILL)  # the unfixed code left it behind: do not leak it
        if server.poll() is None:
            server.kill()
            server.wait()


def _stray(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A process that ignores its parent's death (as an old server's child would)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], process_group=0)


def _write_entry(directory: Path, pid: int, ticks: int | None, server_pid: int, server_ticks: int | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{pid}.json").write_text(json.dumps(
        {"pid": pid, "ticks": ticks, "name": "venue-x", "server_pid": server_pid, "server_ticks": server_ticks}))


def _dead_server() -> tuple[int, int | None]:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = start_ticks(gone.pid)
    gone.wait()
    return gone.pid, ticks


def test_a_starting_server_ends_the_strays_of_a_dead_one(tmp_path: Path) -> None:
    directory = tmp_path / "children"
    stray = _stray(tmp_path)
    try:
        server_pid, server_ticks = _dead_server()
        _write_entry(directory, stray.pid, start_ticks(stray.pid), server_pid, server_ticks)
        assert ChildRegistry(directory).reap_strays() == [stray.pid]
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert list(directory.glob("*.json")) == []
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_a_recycled_pid_or_a_live_servers_child_is_never_killed(tmp_path: Path) -> None:
    directory = tmp_path / "children"
    other = _stray(tmp_path)
    try:
        server_pid, server_ticks = _dead_server()
        # the pid now names another process (its start time differs): not ours to kill
        _write_entry(directory, other.pid, (start_ticks(other.pid) or 0) - 1, server_pid, server_ticks)
        assert ChildRegistry(directory).reap_strays() == []
        assert other.poll() is None and list(directory.glob("*.json")) == []
        # a child of a server that still runs (here: the test process itself) is left alone
        me = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            _write_entry(directory, other.pid, start_ticks(other.pid), me.pid, start_ticks(me.pid))
            assert ChildRegistry(directory).reap_strays() == []
            assert other.poll() is None and len(list(directory.glob("*.json"))) == 1
        finally:
            me.kill()
            me.wait()
    finally:
        other.kill()
        other.wait()


async def test_ffmpeg_children_are_recorded_while_they_run(tmp_path: Path) -> None:
    import ffmpeg

    from streaming.child_processes import install
    from streaming.ffmpeg_process import FfmpegProcess

    registry = ChildRegistry(tmp_path / "children")
    install(registry)
    try:
        args = ffmpeg.input("testsrc=s=64x48:r=5", f="lavfi", re=None).output("-", f="null").get_args()
        process = FfmpegProcess(args, name="recorded")
        await process.start()
        assert process.pid is not None
        entry = json.loads((tmp_path / "children" / f"{process.pid}.json").read_text())
        assert entry["name"] == "recorded" and entry["ticks"] == start_ticks(process.pid)
        await process.stop()
        assert list((tmp_path / "children").glob("*.json")) == []
    finally:
        install(None)


def test_a_start_removes_the_private_files_of_dead_runs_only(tmp_path: Path) -> None:
    from streaming.child_processes import remove_dead_runs, run_id

    server_pid, server_ticks = _dead_server()
    dead = tmp_path / f"{server_pid}-{server_ticks}"
    live = tmp_path / run_id()
    other = tmp_path / "not-a-run"
    for directory in (dead, live, other):
        directory.mkdir()
        (directory / "srt.ffconcat").write_text("option passphrase x")
    assert remove_dead_runs(tmp_path) == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir()


async def test_children_get_no_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's environment holds the token secret (FORUMCAST_TOKEN_SECRET),
    the Redis URL and restream keys (key_env): an ffmpeg child inherited
    them all."""
    import ffmpeg

    from streaming.ffmpeg_process import FfmpegProcess

    monkeypatch.setenv("FORUMCAST_TOKEN_SECRET", "t" * 40)
    monkeypatch.setenv("FORUMCAST_REDIS_URL", "redis://:pw-in-url@127.0.0.1/0")
    monkeypatch.setenv("YOUTUBE_STREAM_KEY", "yt-key-123")
    args = ffmpeg.input("testsrc=s=64x48:r=5", f="lavfi", re=None).output("-", f="null").get_args()
    process = FfmpegProcess(args, name="env")
    await process.start()
    try:
        assert process.pid is not None
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
    finally:
        await process.stop()
    for secret in (b"t" * 40, b"pw-in-url", b"yt-key-123"):
        assert secret not in environ
    assert b"PATH=" in environ
