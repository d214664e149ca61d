"""`forumcast serve --workers N`: N real node processes and a real local
redis-server, supervised by the parent (signaling/node_workers.py).

- the workers form one cluster (each sees the other in /api/cluster), a
  forum gets one owner, placement answers a worker's URL;
- a SIGKILLed worker is restarted and back in the registry; a SIGKILLed
  redis-server is restarted and the workers come back in it;
- SIGTERM to the parent finalizes a recording in progress and leaves no
  process behind (workers, redis-server, their ffmpeg children);
- a worker that cannot start stops everything (exit 2); no redis-server
  on PATH is one clear line naming the package;
- `--demo --workers 2`: both workers run one agenda, its demo forum live.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from rooms.models import Role
from rooms.tokens import TokenService
from signaling import procstat
from signaling.node_workers import PassThrough, WorkersError, plan_workers, worker_command, worker_count
from streaming.child_processes import start_ticks
from tests.eventually import eventually_blocking
from tests.processes import free_port_block

REPO = Path(__file__).resolve().parent.parent
WORKER_LINE = re.compile(r"^worker (\S+): (\S+)")


@dataclass
class Workers:
    """A running `serve --workers` parent and what it printed."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    secret: str
    out_path: Path
    log_path: Path

    def token(self, role: Role, forums: list[str] | None = None) -> str:
        return TokenService(self.secret).issue(role, forums, "Test", ttl_seconds=3600)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def announced(self) -> dict[str, str]:
        """node id -> URL, from the parent's `worker ...` lines."""
        return {m.group(1): m.group(2) for line in self.output().splitlines() if (m := WORKER_LINE.match(line))}

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def get(self, i: int, path: str, role: Role | None = Role.ADMIN) -> Any:
        headers = {"Authorization": f"Bearer {self.token(role)}"} if role else {}
        request = urllib.request.Request(self.url(i) + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def post(self, i: int, path: str, body: dict[str, Any] | None = None, role: Role = Role.OPERATOR) -> Any:
        request = urllib.request.Request(self.url(i) + path, data=json.dumps(body or {}).encode(), method="POST",
                                         headers={
            "Authorization": f"Bearer {self.token(role)}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def children(self) -> dict[int, str]:
        """The parent's direct children: pid -> their command name."""
        found = {}
        for pid in procstat.descendants(self.process.pid):
            fields = procstat._stat_fields(pid)
            if fields is not None and fields[1] == str(self.process.pid):
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else ""
        return found

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid (from each child's --port)."""
        pids = {}
        for pid in self.children():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--port" in argv:
                pids[int(argv[argv.index(b"--port") + 1]) - self.port] = pid
        return pids

    def redis_pid(self) -> int | None:
        return next((pid for pid, name in self.children().items() if name.startswith("redis-server")), None)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_workers(tmp_path: Path, count: int = 2, args: list[str] | None = None,
                  env: dict[str, str] | None = None, wait: bool = True, port: int | None = None) -> Workers:
    data_dir = tmp_path / "data"
    port = port or free_port_block(count + 1)
    secret = secrets.token_urlsafe(48)
    environ = dict(os.environ)
    for name in [n for n in environ if n.startswith("FORUMCAST_")]:
        del environ[name]
    environ.update({
        "FORUMCAST_TOKEN_SECRET": secret,
        "FORUMCAST_ICE_ADDRESSES": "127.0.0.1",
        "FORUMCAST_NODE_ID": f"w{port}",
        "FORUMCAST_LEASE_TTL_MS": "3000",
        "FORUMCAST_NODE_MAX_CPU": "1000",  # a busy shared machine must not make a node "full"
        "FORUMCAST_RTMP_PORT": str(free_port_block(32)),
        "FORUMCAST_SRT_PORT": str(free_port_block(32)),
        # udp_port + i per worker: a free block, not the default 7882 (tests run side by side)
        "FORUMCAST_UDP_PORT": str(free_port_block(count + 1)),
        "FORUMCAST_OUTPUT_WIDTH": "320", "FORUMCAST_OUTPUT_HEIGHT": "180",
        "FORUMCAST_OUTPUT_PRESET": "ultrafast",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    })
    out_path, log_path = tmp_path / "workers.out", tmp_path / "workers.log"
    command = [sys.executable, "-m", "signaling.cli", "serve", "--workers", str(count), "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), *(args or [])]
    with out_path.open("wb") as out, log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=out, stderr=log)
    workers = Workers(process, data_dir, port, secret, out_path, log_path)
    if wait:
        try:
            eventually_blocking(lambda: _started(workers), timeout=240, interval=0.2,
                                what="the parent to print where the pages are")
        except BaseException:
            workers.stop()
            raise
    return workers


def _started(workers: Workers) -> bool:
    if workers.process.poll() is not None:
        raise RuntimeError(f"serve --workers exited with {workers.process.returncode}:\n{workers.log()}")
    return "pages:" in workers.output()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Workers]:
    # one shared ICE UDP port per worker (bound at the node's start: the same one twice would not start)
    workers = start_workers(tmp_path, env={"FORUMCAST_UDP_PORT": str(free_port_block(3))})
    yield workers
    workers.stop()


def _cluster_ids(workers: Workers, i: int) -> set[str]:
    return {node["node_id"] for node in workers.get(i, "/api/cluster")["nodes"]}


def _both_registered(workers: Workers) -> set[str]:
    """Both workers (by name) are in the registry as each sees it; their instance ids."""
    base = f"w{workers.port}"
    for i in (0, 1):
        try:
            ids = _cluster_ids(workers, i)
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            raise AssertionError(f"worker {i}: {error}") from None
        names = {node_id.split("@")[0] for node_id in ids}
        assert {f"{base}-0", f"{base}-1"} <= names, ids
    return ids


# --- unit: the plan -------------------------------------------------------------------------

def test_worker_i_gets_port_plus_i_its_udp_port_and_a_node_id_of_its_own(tmp_path: Path) -> None:
    settings = Settings(port=8080, udp_port=40000, node_id="hall", data_dir=tmp_path)
    plans = plan_workers(settings, 3)
    assert [(p.node_id, p.port, p.public_url, p.udp_port) for p in plans] == [
        ("hall-0", 8080, "http://127.0.0.1:8080", 40000),
        ("hall-1", 8081, "http://127.0.0.1:8081", 40001),
        ("hall-2", 8082, "http://127.0.0.1:8082", 40002),
    ]
    public = plan_workers(Settings(port=8080, public_url="https://live.example.org", data_dir=tmp_path), 2)
    assert [p.public_url for p in public] == ["https://live.example.org:8080", "https://live.example.org:8081"]
    assert plan_workers(Settings(node_id="n" * 64, data_dir=tmp_path), 12)[11].node_id == "n" * 61 + "-11"
    with pytest.raises(WorkersError, match="65535"):
        plan_workers(Settings(port=65535, data_dir=tmp_path), 2)


def test_worker_count_auto_is_one_per_core() -> None:
    assert worker_count("auto", cpu_count=6) == 6 and worker_count("0", cpu_count=3) == 3
    assert worker_count("4") == 4
    for bad in ("-1", "two", "1000"):
        with pytest.raises(WorkersError):
            worker_count(bad)


def test_no_secret_reaches_a_workers_argv(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://:hunter2-secret@127.0.0.1:6379/0", token_secret="s" * 40,
                        data_dir=tmp_path)
    command = " ".join(worker_command(settings, plan_workers(settings, 1)[0], PassThrough(None, None, "INFO", False)))
    assert "hunter2" not in command and "s" * 40 not in command and "redis://" not in command


# --- the real cluster ------------------------------------------------------------------------

def test_no_redis_server_on_path_is_one_line_naming_the_package(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    workers = start_workers(tmp_path, env={"PATH": str(empty)}, wait=False)
    assert workers.process.wait(timeout=60) == 2
    said = workers.log()
    assert "redis-server" in said and "apt-get install redis-server" in said and "Traceback" not in said
    assert workers.process.returncode == 2


@pytest.mark.slow
def test_workers_form_one_cluster_with_one_owner_per_forum_and_placement(cluster: Workers) -> None:
    announced = cluster.announced()
    assert list(announced.values()) == [cluster.url(0), cluster.url(1)], cluster.output()
    assert "/lobby" in cluster.output()
    udp = [int(port) for port in re.findall(r"ICE UDP port (\d+)", cluster.output())]
    assert len(udp) == 2 and udp[1] == udp[0] + 1, cluster.output()
    assert f"open UDP ports {udp[0]}-{udp[1]}" in cluster.output()
    ids = eventually_blocking(lambda: _both_registered(cluster), timeout=60, what="each worker to see both")
    forum = cluster.get(0, "/api/forums", role=None)["forums"][0]["id"]
    cluster.post(1, f"/api/forums/{forum}/manual", {"manual": True})  # an operator's command: the forum is needed
    owner = eventually_blocking(lambda: cluster.get(0, "/api/cluster")["owners"][forum], timeout=60,
                                what="the forum to get an owner")
    assert owner in ids and cluster.get(1, "/api/cluster")["owners"][forum] == owner
    hosted = [i for i in (0, 1) if forum in cluster.get(i, "/api/cluster")["hosted"]]
    assert len(hosted) == 1, hosted  # hosted once, by its owner
    placed = cluster.get(1, f"/api/forums/{forum}/placement", role=Role.VIEWER)
    assert placed["node_id"] == owner and placed["url"] == cluster.url(hosted[0])


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_back_in_the_registry(cluster: Workers) -> None:
    before = eventually_blocking(lambda: _both_registered(cluster), timeout=60, what="both registered")
    pid = cluster.worker_pids()[1]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        pids = cluster.worker_pids()
        assert 1 in pids and pids[1] != pid, pids
        ids = _both_registered(cluster)
        assert ids - before, ids  # a new instance of worker 1
        return True

    eventually_blocking(restarted, timeout=120, interval=0.2, what="worker 1 restarted and registered")
    assert cluster.process.poll() is None


@pytest.mark.slow
def test_a_killed_local_redis_is_restarted_and_the_workers_come_back(cluster: Workers) -> None:
    eventually_blocking(lambda: _both_registered(cluster), timeout=60, what="both registered")
    pid = cluster.redis_pid()
    assert pid is not None, cluster.children()
    os.kill(pid, signal.SIGKILL)
    eventually_blocking(lambda: (cluster.redis_pid() or pid) != pid, timeout=60, what="a new redis-server")
    eventually_blocking(lambda: _both_registered(cluster), timeout=60, what="both workers registered again")


@pytest.mark.slow
def test_sigterm_finalizes_a_recording_and_leaves_no_process(cluster: Workers) -> None:
    eventually_blocking(lambda: _both_registered(cluster), timeout=60, what="both registered")
    forum = cluster.get(0, "/api/forums", role=None)["forums"][0]["id"]
    started = cluster.post(0, f"/api/forums/{forum}/recording/start")
    recordings = cluster.data_dir / "recordings" / forum / started["id"]

    def a_segment() -> bool:
        index = list(recordings.glob("index-*.csv"))
        return bool(index) and any(line.strip() for line in index[0].read_text().splitlines())

    eventually_blocking(a_segment, timeout=120, what="a complete segment of the recording")
    tree = {pid: start_ticks(pid) for pid in procstat.descendants(cluster.process.pid)}
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in tree if Path(f"/proc/{pid}/comm").exists()}
    assert "redis-server" in names and any("ffmpeg" in n for n in names), names
    assert cluster.stop() == 0, cluster.log()
    left = [pid for pid, ticks in tree.items() if ticks is not None and start_ticks(pid) == ticks]
    assert not left, f"processes left: {left}"
    meta = json.loads((recordings / "meta.json").read_text())
    assert meta["state"] == "finalized", meta
    assert (recordings / f"{started['id']}.mp4").stat().st_size > 0
    assert not list((cluster.data_dir / "run" / "redis").iterdir())  # its socket and log removed


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_cluster(tmp_path: Path) -> None:
    port = free_port_block(3)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port + 1))  # worker 1's port is taken
    blocker.listen()
    workers: Workers | None = None
    try:
        workers = start_workers(tmp_path, wait=False, port=port)
        assert workers.process.wait(timeout=240) == 2, workers.log()
        assert f"w{workers.port}-1 could not start" in workers.log()
        assert not procstat.descendants(workers.process.pid)
    finally:
        blocker.close()
        if workers is not None:
            workers.stop()


@pytest.mark.slow
def test_demo_with_workers_runs_one_agenda_and_its_forums_are_hosted_once(tmp_path: Path) -> None:
    workers = start_workers(tmp_path, args=["--demo"])
    try:
        eventually_blocking(lambda: _both_registered(workers), timeout=60, what="both registered")

        def agenda(i: int) -> list[tuple[str, Any, Any]]:
            body = workers.get(i, "/api/forums", role=None)
            assert body["event"]["demo"] is True
            return [(f["id"], f["live"], f["next"]) for f in body["forums"]]

        assert agenda(0) == agenda(1)  # one moved agenda, not one per worker's start
        assert any(live for _, live, _ in agenda(0))  # a session is live now

        def hosted_once() -> list[str]:
            hosted = [workers.get(i, "/api/cluster")["hosted"] for i in (0, 1)]
            assert not set(hosted[0]) & set(hosted[1]), hosted
            return hosted[0] + hosted[1]

        # the recorded talk is due within two minutes: its forum is hosted now, by one worker
        eventually_blocking(hosted_once, timeout=120, what="the demo's forum hosted by one worker")
    finally:
        assert workers.stop() == 0, workers.log()


def test_demo_now_fixes_the_moved_agenda(tmp_path: Path) -> None:
    import datetime as dt

    from rooms.demo import demo_event
    from rooms.event_file import load_event
    from signaling.app import load_app_event

    moment = dt.datetime(2026, 12, 1, 9, 30, 15, tzinfo=dt.timezone.utc)
    settings = Settings(demo=True, demo_now=moment.timestamp(), data_dir=tmp_path)
    assert load_app_event(settings) == demo_event(load_event(settings.event_file), moment)


@pytest.mark.slow
def test_with_redis_given_no_local_one_and_a_sigkilled_parent_takes_its_workers(tmp_path: Path,
                                                                               redis_url: str) -> None:
    workers = start_workers(tmp_path, args=["--redis", redis_url])
    try:
        eventually_blocking(lambda: _both_registered(workers), timeout=60, what="both registered")
        assert workers.redis_pid() is None and "at redis://127.0.0.1" in workers.output()
        tree = {pid: start_ticks(pid) for pid in procstat.descendants(workers.process.pid)}
        assert len(workers.worker_pids()) == 2
        workers.process.kill()  # a crash of the parent: the parent-death signal ends the workers
        workers.process.wait()

        def all_gone() -> bool:  # a zombie waiting for init to reap it runs nothing
            alive = [pid for pid, ticks in tree.items() if start_ticks(pid) == ticks
                     and (procstat._stat_fields(pid) or ["Z"])[0] not in ("Z", "X")]
            assert not alive, alive
            return True

        eventually_blocking(all_gone, timeout=60, what="every worker and child of the SIGKILLed parent gone")
    finally:
        workers.stop()
