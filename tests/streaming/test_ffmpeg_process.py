"""FfmpegProcess and Supervisor against the real ffmpeg binary."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import av
import ffmpeg
import pytest

from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor, _reap_leftovers

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    """True when the pid no longer exists: a zombie still does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _endless_args(path: Path) -> list[str]:
    return (
        ffmpeg.input("testsrc=s=64x48:r=10", f="lavfi", re=None)
        .output(str(path), vcodec="libx264", preset="ultrafast", f="matroska")
        .overwrite_output()
        .get_args()
    )


def _failing_args() -> list[str]:
    return ffmpeg.input("/nonexistent/forumcast.mp4").output("-", f="null").get_args()


async def test_graceful_stop_writes_the_trailer_and_reaps(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    writing = asyncio.Event()
    states: list[str] = []
    process = FfmpegProcess(
        _endless_args(path), name="writer", loglevel="info", on_state=states.append,
        on_line=lambda line: writing.set() if "Output #0" in line else None,
    )
    await process.start()
    await asyncio.wait_for(writing.wait(), 10)
    await asyncio.sleep(0.5)  # let it write some frames; the time is the point here
    await asyncio.gather(process.stop(), process.stop())  # concurrent and idempotent
    await process.stop()
    assert process.returncode == 0  # 'q' finished it, not a signal
    assert states == ["running", "stopping", "stopped"]
    assert process.pid is not None and _gone(process.pid)
    with av.open(str(path)) as container:  # the trailer is there: a duration is known
        assert container.duration is not None and container.duration > 0


async def test_exit_code_and_stderr_are_reported() -> None:
    process = FfmpegProcess(_failing_args(), name="missing-input", loglevel="error")
    await process.start()
    code = await asyncio.wait_for(process.wait(), 10)
    result = process.result()
    assert code != 0 and result.returncode == code and not result.stopped
    assert process.state == "exited"
    assert any("No such file" in line for line in result.stderr_tail)
    assert "No such file" in result.describe()
    await process.stop()  # stopping an exited child is harmless
    assert process.state == "exited"


async def test_supervisor_backs_off_while_failing_and_stop_reaps() -> None:
    exits: list[FfmpegExit] = []
    enough = asyncio.Event()
    pids: list[int] = []

    def on_exit(result: FfmpegExit) -> None:
        exits.append(result)
        if len(exits) >= 4:
            enough.set()

    supervisor = Supervisor(
        _failing_args, name="crashing", loglevel="error",
        policy=RestartPolicy(initial=0.1, factor=2.0, maximum=0.4, stable_after=5.0),
        on_start=lambda process: pids.append(process.pid or 0), on_exit=on_exit,
    )
    await supervisor.start()
    await asyncio.wait_for(enough.wait(), 20)
    await supervisor.stop()
    assert supervisor.state == "stopped"
    assert supervisor.delays[:3] == [0.1, 0.2, 0.4]
    assert all(delay <= 0.4 for delay in supervisor.delays)
    assert all(not result.ok and not result.stopped for result in exits[:4])
    assert len(pids) == supervisor.starts >= 4
    assert all(_gone(pid) for pid in pids)


async def test_supervisor_restarts_at_once_after_a_stable_run() -> None:
    two = asyncio.Event()
    exits: list[FfmpegExit] = []

    def on_exit(result: FfmpegExit) -> None:
        exits.append(result)
        if len(exits) >= 2:
            two.set()

    args = ffmpeg.input("anullsrc", f="lavfi", re=None).output("-", f="null", t=1.0).get_args()  # -re bursts 0.5 s, then paces
    supervisor = Supervisor(
        lambda: args, name="short-run", loglevel="error",
        policy=RestartPolicy(initial=5.0, stable_after=0.2), on_exit=on_exit,
    )
    await supervisor.start()
    await asyncio.wait_for(two.wait(), 15)
    await supervisor.stop()
    assert exits[0].ok and exits[0].runtime >= 0.2
    assert supervisor.delays[0] == 0.0  # no 5 s backoff after a stable run


async def test_stop_kills_a_running_child_and_leftovers_are_reaped(tmp_path: Path) -> None:
    started = asyncio.Event()
    processes: list[FfmpegProcess] = []

    def on_start(process: FfmpegProcess) -> None:
        processes.append(process)
        started.set()

    supervisor = Supervisor(
        lambda: _endless_args(tmp_path / "a.mkv"), name="endless", stop_grace=2.0, on_start=on_start,
    )
    await supervisor.start()
    await asyncio.wait_for(started.wait(), 10)
    await supervisor.stop()
    await supervisor.stop()
    assert processes[0].pid is not None and _gone(processes[0].pid)
    assert supervisor.last_exit is not None and supervisor.last_exit.stopped

    # a child nobody stopped (its loop went away) is killed at interpreter exit
    orphan = FfmpegProcess(_endless_args(tmp_path / "b.mkv"), name="orphan")
    await orphan.start()
    assert orphan.pid is not None and not _gone(orphan.pid)
    _reap_leftovers()
    await asyncio.wait_for(orphan.exited.wait(), 20)
    assert _gone(orphan.pid)


async def test_a_missing_binary_is_reported_and_backed_off() -> None:
    exits: list[FfmpegExit] = []
    two = asyncio.Event()

    def on_exit(result: FfmpegExit) -> None:
        exits.append(result)
        if len(exits) == 2:
            two.set()

    supervisor = Supervisor(_failing_args, name="no-binary", ffmpeg="/nonexistent/ffmpeg",
                            policy=RestartPolicy(initial=0.05), on_exit=on_exit)
    await supervisor.start()
    await asyncio.wait_for(two.wait(), 20)
    await supervisor.stop()
    assert supervisor.starts == 0 and exits[0].returncode == -1
    assert "nonexistent" in exits[0].describe() and supervisor.delays[:2] == [0.05, 0.1]


async def test_kill_is_immediate_and_counts_as_stopped(tmp_path: Path) -> None:
    states: list[str] = []
    process = FfmpegProcess(_endless_args(tmp_path / "k.mkv"), name="killed", on_state=states.append)
    await process.start()
    await asyncio.gather(process.kill(), process.stop())
    assert states == ["running", "stopping", "stopped"] and process.result().stopped
    assert process.pid is not None and _gone(process.pid)


def test_a_child_left_running_when_the_loop_ends_dies_with_the_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "leave_it.py"
    script.write_text(
        "import asyncio, sys\n"
        "from streaming.ffmpeg_process import FfmpegProcess\n"
        "async def main():\n"
        "    process = FfmpegProcess(sys.argv[1:], name='left')\n"
        "    await process.start()\n"
        "    print(process.pid, flush=True)\n"  # and return without stop()
        "asyncio.run(main())\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(script), *_endless_args(tmp_path / "left.mkv")],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert _gone(int(done.stdout.split()[0]))
