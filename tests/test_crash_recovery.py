"""The real server with venue feeds: what a SIGKILL leaves behind, and what
any local user can read of the stream keys.

Each test runs `python -m signaling.cli serve` (tests/server_process.py)
with the venue ports of forum "main" on free loopback ports, asks for the
ingest addresses as an operator and publishes with real ffmpeg encoders
over RTMP and SRT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ffmpeg
import pytest
import socketio

from rooms.models import Role
from streaming.ffmpeg_process import FfmpegProcess
from tests.eventually import eventually, eventually_blocking
from tests.processes import free_port
from tests.server_process import ServerProcess, start_server

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

FORUM = "main"  # the event's first forum: its venue ports are rtmp_port + 1 and srt_port + 1


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()
            and (fields := _stat(int(entry))) is not None and fields[1] == str(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _strays(groups: set[int], marks: list[str]) -> list[str]:
    """Running processes in one of `groups` (process groups) or whose
    command line names one of `marks`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        fields = _stat(int(entry))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        line = _cmdline(int(entry))
        if int(fields[2]) in groups or any(mark in line for mark in marks):
            found.append(f"{entry}: {line[:200]}")
    return found


def _encoder(url: str, container: str) -> FfmpegProcess:
    """A venue encoder: H.264 baseline, 2 s GOP, AAC, in real time."""
    video = ffmpeg.input("testsrc=s=320x240:r=15", f="lavfi", re=None)
    audio = ffmpeg.input("sine=r=44100", f="lavfi", re=None)
    args = ffmpeg.output(video, audio, url, t=120, vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p",
                         g=30, bf=0, acodec="aac", f=container, **{"profile:v": "baseline"}).get_args()
    return FfmpegProcess(args, name=f"encoder-{container}", loglevel="error")


class Node:
    """One run of the server on fixed venue ports, node id and data dir."""

    def __init__(self, rtmp: int, srt: int, node_id: str, redis_url: str = "", data_dir: Path | None = None,
                 secret: str | None = None) -> None:
        env = {"FORUMCAST_RTMP_PORT": str(rtmp - 1), "FORUMCAST_SRT_PORT": str(srt - 1),
               "FORUMCAST_NODE_ID": node_id}
        args = ["--redis", redis_url] if redis_url else []
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]  # the later --data-dir wins: the crashed run's
        self.server: ServerProcess = start_server(extra_env=env, extra_args=args, secret=secret)
        self.data_dir = data_dir or self.server.data_dir

    async def ingest(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        token = self.server.token(Role.OPERATOR, [FORUM])
        async with http.get(f"{self.server.url}/api/forums/{FORUM}/ingest?reveal=true",
                            headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.json()
            assert response.status == 200, body
            return body

    async def join(self, role: Role, clients: list[socketio.AsyncClient]) -> dict[str, Any]:
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        await client.connect(self.server.url, auth={"token": self.server.token(role, [FORUM])},
                             transports=["websocket"], wait_timeout=10)
        ack = await client.call("join", {"forum_id": FORUM}, timeout=20)
        assert "error" not in ack, ack
        return ack


@pytest.fixture
async def session() -> AsyncIterator[tuple[aiohttp.ClientSession, list[socketio.AsyncClient],
                                           list[FfmpegProcess], list[Node]]]:
    http = aiohttp.ClientSession()
    clients: list[socketio.AsyncClient] = []
    encoders: list[FfmpegProcess] = []
    nodes: list[Node] = []
    try:
        yield http, clients, encoders, nodes
    finally:
        for client in clients:
            if client.connected:
                await client.disconnect()
        for encoder in encoders:
            await encoder.kill()
        await http.close()
        for node in nodes:
            node.server.cleanup()


async def _publish_both(node: Node, http: aiohttp.ClientSession, encoders: list[FfmpegProcess]) -> dict[str, Any]:
    """An RTMP and an SRT encoder publish with the right key; the venue goes live."""
    ingest = await node.ingest(http)
    assert ingest["listening"] == {"rtmp": True, "srt": True}, ingest
    for url, container in ((ingest["rtmp_url"], "flv"), (ingest["srt_url"], "mpegts")):
        encoder = _encoder(url, container)
        encoders.append(encoder)
        await encoder.start()

    async def live() -> bool:
        return (await node.ingest(http))["state"] == "live"

    await eventually(live, timeout=40, what="the venue feed to go live")
    return ingest


async def test_server_children_and_log_never_show_venue_keys(session: Any) -> None:
    """Any local user reads /proc/<pid>/cmdline and may read the log: the
    venue key was in both (ffmpeg's RTMP URL and SRT passphrase, three INFO
    lines). With RTMP and SRT publishing with the right key, no child's
    argv, no log line and no other /api answer holds the key."""
    http, _, encoders, nodes = session
    node = Node(free_port(), free_port(socket.SOCK_DGRAM), "secrets-node")
    nodes.append(node)
    ingest = await _publish_both(node, http, encoders)
    key = ingest["stream_key"]
    assert key in ingest["srt_url"] and ingest["rtmp_url"].endswith(key)  # the operator gets it, by design
    children = _children(node.server.process.pid)
    assert len(children) >= 2  # the two venue legs' ffmpegs (and the slate encoder's, if still running)
    for pid in children:
        assert key not in _cmdline(pid), f"child {pid} shows the key: {_cmdline(pid)[:300]}"
    for path in ("/api/forums", f"/api/forums/{FORUM}"):
        async with http.get(node.server.url + path) as response:
            assert key not in await response.text()
    await encoders[0].kill()  # the encoder leaves: exits and reconnects are logged too
    node.server.stop()
    log = node.server.log_path.read_text(errors="replace")
    assert "publisher" in log and key not in log


@pytest.mark.parametrize("mode", ["memory", "redis"])
async def test_sigkill_mid_publish_leaves_nothing_behind(mode: str, session: Any,
                                                         request: pytest.FixtureRequest) -> None:
    """SIGKILL the server while RTMP and SRT encoders publish and 3 viewers
    watch, then start it again (same node id, data dir and ports): no child
    of the dead run is left (by parent, process group, command line), both
    venue listeners are up again and take a publisher, and the viewer count
    is right at once (Redis mode used to keep the 3 ghosts: reaping skipped
    the node's own id, which the restart reused)."""
    http, clients, encoders, nodes = session
    redis_url = request.getfixturevalue("redis_url") if mode == "redis" else ""
    rtmp, srt = free_port(), free_port(socket.SOCK_DGRAM)
    first = Node(rtmp, srt, f"crash-{mode}", redis_url)
    nodes.append(first)
    await _publish_both(first, http, encoders)
    for _ in range(3):
        await first.join(Role.VIEWER, clients)
    assert (await first.join(Role.OPERATOR, clients))["viewers"]["viewers"] == 3
    server_pid = first.server.process.pid
    children = _children(server_pid)
    groups = {int(fields[2]) for pid in children if (fields := _stat(pid)) is not None}
    assert children and groups

    os.kill(server_pid, signal.SIGKILL)
    first.server.process.wait()
    eventually_blocking(lambda: not any(_running(pid) for pid in children), timeout=20,
                        what="the dead server's children to end")
    assert _strays(groups - {os.getpgid(0)}, [str(first.data_dir)]) == []
    for client in clients:
        if client.connected:
            await client.disconnect()
    for encoder in encoders:
        await encoder.kill()  # their server vanished; fresh encoders reconnect below
    encoders.clear()

    again = Node(rtmp, srt, f"crash-{mode}", redis_url, data_dir=first.data_dir, secret=first.server.secret)
    nodes.append(again)
    # the crashed run's seats are free the moment the new run serves
    assert (await again.join(Role.OPERATOR, clients))["viewers"]["viewers"] == 0
    await _publish_both(again, http, encoders)  # both ports listen again and take a publisher
    # the dead run's private files (the SRT passphrase among them) are gone; the new run's are there
    runs = [entry.name for entry in (first.data_dir / "run" / "secrets").iterdir()]
    assert len(runs) == 1 and runs[0].startswith(f"{again.server.process.pid}-"), runs
    assert (await again.join(Role.VIEWER, clients))["viewers"]["viewers"] == 1


async def test_a_start_ends_the_stray_a_dead_run_left_on_the_srt_port(session: Any, tmp_path: Path) -> None:
    """Where the parent-death signal did not act (another kernel, a child
    that escaped), a crashed run's ffmpeg keeps the SRT port: the restarted
    server's SRT leg looped on "Address already in use" while /ingest handed
    out its address. The stray's pid file (written by the dead run) lets the
    starting server end it; the port then listens again."""
    import json
    import subprocess
    import sys

    from streaming.child_processes import start_ticks

    http, _, encoders, nodes = session
    rtmp, srt = free_port(), free_port(socket.SOCK_DGRAM)
    data_dir = tmp_path / "data"
    stray = subprocess.Popen(  # stands in for an orphaned ffmpeg holding the SRT port
        [sys.executable, "-c", "import socket, time\n"
         f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', {srt}))\n"
         "print('bound', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, process_group=0)
    try:
        assert stray.stdout is not None and stray.stdout.readline().strip() == b"bound"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])  # the crashed server
        dead_ticks = start_ticks(dead.pid)
        dead.wait()
        children = data_dir / "run" / "children"
        children.mkdir(parents=True)
        (children / f"{stray.pid}.json").write_text(json.dumps(
            {"pid": stray.pid, "ticks": start_ticks(stray.pid), "name": "venue-main-srt",
             "server_pid": dead.pid, "server_ticks": dead_ticks}))
        node = Node(rtmp, srt, "stray-node", data_dir=data_dir)
        nodes.append(node)
        assert stray.wait(timeout=20) == -signal.SIGKILL
        assert (await node.ingest(http))["listening"] == {"rtmp": True, "srt": True}
        assert list(children.glob("*.json")) and all(  # only the new run's children are recorded now
            json.loads(path.read_text())["server_pid"] == node.server.process.pid for path in children.glob("*.json"))
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
