"""The load a node's heartbeat carries counts its ffmpeg children's CPU
(placement reads it: a node whose encoders fill the cores is full)."""

from __future__ import annotations

import os
import time

import pytest
from aiohttp import web

from signaling import procstat
from signaling.placement import MIN_WINDOW_S, NodeLoadMeter
from streaming.ffmpeg_process import FfmpegProcess
from tests.eventually import eventually

BUSY_CPU_S = 0.6  # CPU seconds the child must have spent between the two beats


def _busy_ffmpeg() -> FfmpegProcess:
    # a real encode with nothing to wait for: it uses whatever CPU it gets
    return FfmpegProcess(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-t", "600",
                          "-c:v", "libx264", "-preset", "ultrafast", "-threads", "1", "-f", "null", "-"],
                         name="busy-encode")


async def _spend(child: FfmpegProcess) -> tuple[float, float]:
    """Wait until the child has spent BUSY_CPU_S more CPU and the meter's
    shortest window has passed; (its CPU spent, at start)."""
    assert child.pid is not None
    pid = child.pid
    start, began = procstat.cpu_seconds(pid), time.monotonic()
    await eventually(lambda: procstat.cpu_seconds(pid) - start >= BUSY_CPU_S
                     and time.monotonic() - began > 2 * MIN_WINDOW_S, timeout=120,
                     what=f"ffmpeg to spend {BUSY_CPU_S} CPU seconds")
    return procstat.cpu_seconds(pid) - start, start


async def test_a_running_ffmpeg_childs_cpu_is_in_the_nodes_load() -> None:
    meter = NodeLoadMeter(web.Application())
    child = _busy_ffmpeg()
    await child.start()
    try:
        began = time.monotonic()
        meter()  # the beat before
        spent, _ = await _spend(child)
        load = meter()
        window = time.monotonic() - began  # at least the meter's own window
    finally:
        await child.stop(grace=0.5)
    # this process only waited: without the child's CPU the share would be near 0 (0.015 on the old
    # code); half of what the child spent is the bound: the beats' /proc reads and this test's own
    # are not the same instants, and a loaded machine spreads them (0.512 seen against 0.62)
    assert load["cpu"] >= 0.5 * spent / window, (load, spent, window)


async def test_an_ffmpeg_child_that_ended_between_two_beats_still_counts() -> None:
    meter = NodeLoadMeter(web.Application())
    began = time.monotonic()
    meter()
    child = _busy_ffmpeg()
    await child.start()
    spent, _ = await _spend(child)
    await child.stop(grace=0.5)  # reaped: its time is now in our cutime, not in a live process
    assert child.pid is not None and procstat.cpu_seconds(child.pid) == 0.0  # gone from /proc
    load = meter()
    window = time.monotonic() - began
    # the meter's window may start before `began` (at its creation): half the share is the bound
    assert load["cpu"] >= 0.5 * spent / window, (load, spent, window)


@pytest.mark.parametrize("children_lists", [True, False])
def test_the_tree_is_found_with_and_without_the_kernels_children_lists(
        children_lists: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.setattr(procstat, "_HAS_CHILDREN_LISTS", children_lists and procstat._HAS_CHILDREN_LISTS)
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        def grandchild() -> bool:  # sh's sleep: a child of our child
            return any((procstat._stat_fields(p) or ["", ""])[1] == str(shell.pid)
                       for p in procstat.descendants(os.getpid()))

        from tests.eventually import eventually_blocking

        eventually_blocking(grandchild, timeout=30, what="sh's sleep to start")
        assert shell.pid in procstat.descendants(os.getpid())
    finally:
        shell.kill()
        shell.wait()


async def test_metrics_give_the_nodes_cpu_with_its_ffmpeg_children() -> None:
    """/metrics' process_cpu_seconds_total is the Python process only; the
    node's figure counts the encoders it runs."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from signaling.metrics import NodeCpuCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(NodeCpuCollector())
    child = _busy_ffmpeg()
    await child.start()
    spent, at_start = await _spend(child)
    await child.stop(grace=0.5)
    samples = {s.name: s.value for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples["forumcast_node_cpu_seconds_total"] >= samples["process_cpu_seconds_total"] + spent + at_start - 0.05
