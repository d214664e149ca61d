"""SupervisedProcess (serve --workers' workers and local Redis) with real
child processes: a first start that fails is an error, a child that dies
is restarted, a stop ends even a child that ignores SIGTERM; all reaped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from signaling.supervised_process import ChildStartError, SupervisedProcess
from streaming.child_processes import ChildRegistry, start_ticks
from streaming.ffmpeg_process import RestartPolicy
from tests.eventually import eventually

FAST = RestartPolicy(initial=0.05, maximum=0.2)


async def test_a_child_that_exits_before_it_is_ready_fails_the_start() -> None:
    async def never() -> bool:
        return False

    process = SupervisedProcess("quitter", ["sh", "-c", "exit 3"], ready=never, ready_timeout=60)
    with pytest.raises(ChildStartError) as failed:
        await process.start()
    assert failed.value.returncode == 3 and "quitter could not start" in str(failed.value)
    assert process.state == "failed" and process.pid is None
    await process.stop()  # nothing to stop: still fine
    assert process.state == "failed"


async def test_a_child_that_dies_is_restarted_and_the_stop_reaps_it(tmp_path: Path) -> None:
    registry = ChildRegistry(tmp_path / "pids")
    process = SupervisedProcess("sleeper", ["sleep", "600"], policy=FAST, registry=registry)
    await process.start()
    first = process.pid
    assert first is not None and (tmp_path / "pids" / f"{first}.json").exists()
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: process.pid not in (None, first) and process.state == "running",
                     what="a new child")
    second = process.pid
    assert second is not None and process.restarts == 1 and process.starts == 2
    assert not (tmp_path / "pids" / f"{first}.json").exists()  # the dead one's pid file went with it
    await process.stop()
    assert process.state == "stopped" and process.pid is None and start_ticks(second) is None
    assert list((tmp_path / "pids").iterdir()) == []


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    process = SupervisedProcess("stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                                stop_grace=0.5, policy=FAST)
    await process.start()
    pid = process.pid
    assert pid is not None
    await process.stop()
    assert start_ticks(pid) is None and process.state == "stopped"
    assert process.restarts == 0  # a stop is not a death to restart from
