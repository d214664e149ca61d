"""`forumcast loadtest` against a real node with a real publisher (aiortc,
over WHIP): light viewers over WHEP, in worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rooms.models import Role
from streaming import rtp_count
from tests.aiortc_peers import TestPublisher
from tests.processes import free_port
from tests.server_process import ServerProcess

FORUM = "digital-economy"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def publisher(server: ServerProcess) -> AsyncIterator[TestPublisher]:
    peer = TestPublisher()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            response = await http.post(
                f"{server.url}/whip/{FORUM}", data=await peer.offer(),
                headers={"Authorization": f"Bearer {server.token(Role.SPEAKER, [FORUM])}",
                         "Content-Type": "application/sdp"})
            assert response.status == 201, await response.text()
            await peer.accept(await response.text())
        await asyncio.wait_for(peer.connected.wait(), 30)
        yield peer
    finally:
        await peer.close()


async def loadtest(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {key: value for key, value in os.environ.items() if key != "FORUMCAST_TOKEN"}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling.cli", "loadtest", *args, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_loadtest_ten_viewers_receive_and_report(server: ServerProcess, publisher: TestPublisher) -> None:
    code, out, err = await loadtest(
        "--url", server.url, "--forum", FORUM, "--viewers", "10", "--duration", "4", "--ramp", "2",
        "--workers", "2", "--mint", "--json", "--sample-every", "10",
        env={"FORUMCAST_TOKEN_SECRET": server.secret})  # --mint signs with the server's secret
    assert code == 0, f"exit {code}\n{out}\n{err}"
    report = json.loads(out)
    assert report["viewers"] == 10 and report["connected"] == 10 and report["receiving"] == 10
    assert len(report["per_viewer"]) == 10
    for viewer in report["per_viewer"]:
        assert viewer["ok"] and viewer["packets"] > 0 and viewer["kbps"] > 0, viewer
        assert viewer["join_ms"] > 0 and viewer["first_video_ms"] > 0, viewer
        assert 0.0 <= viewer["loss_ratio"] <= 1.0
    assert report["join_ms"]["p50"] is not None and report["first_video_ms"]["p95"] is not None
    assert report["srtp_checked"] > 0 and report["srtp_failures"] == 0
    assert report["server_pid"] == server.process.pid  # found from /proc: the local listener
    assert report["server_cpu_cores"] is not None and report["server_cpu_cores"] > 0
    assert report["server"]["packets_out"] >= report["received_packets"] * 0.5  # /metrics read with a minted admin token
    assert report["server"]["source_packets_received"] > 0
    # counted in C when the extension is built (scripts/test builds it), else by the Python fallback
    assert report["rx_path"] == ("C (streaming._rtp_rx, recvmmsg)" if rtp_count._rtp_rx is not None
                                 else "Python (streaming/rtp_count.py)")
    assert report["client_cpu_ms_per_1000_packets"] > 0


async def test_loadtest_python_receive_path_counts_and_verifies_too(server: ServerProcess,
                                                                     publisher: TestPublisher) -> None:
    """FORUMCAST_RX_PYTHON=1: the fallback a machine without a C compiler runs."""
    code, out, err = await loadtest(
        "--url", server.url, "--forum", FORUM, "--viewers", "4", "--duration", "3", "--ramp", "1",
        "--workers", "1", "--mint", "--json", "--sample-every", "10",
        env={"FORUMCAST_TOKEN_SECRET": server.secret, "FORUMCAST_RX_PYTHON": "1"})
    assert code == 0, f"exit {code}\n{out}\n{err}"
    report = json.loads(out)
    assert report["rx_path"] == "Python (streaming/rtp_count.py)"
    assert report["receiving"] == 4 and report["srtp_checked"] > 0 and report["srtp_failures"] == 0
    assert all(v["packets"] > 0 and v["first_video_ms"] > 0 for v in report["per_viewer"])


async def test_loadtest_refuses_bad_url_forum_and_token(server: ServerProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await loadtest("--url", dead, "--forum", FORUM, "--viewers", "1", "--duration", "1")
    assert code == 2 and "cannot reach" in err and "Traceback" not in err, err
    code, out, err = await loadtest("--url", "ftp://x", "--forum", FORUM)
    assert code == 2 and "not an http(s) URL" in err, err
    code, out, err = await loadtest("--url", server.url, "--forum", "no-such-forum", "--duration", "1")
    assert code == 2 and "has no forum 'no-such-forum'" in err, err
    code, out, err = await loadtest("--url", server.url, "--forum", FORUM, "--duration", "1",
                                    env={"FORUMCAST_TOKEN": "not-a-token"})
    assert code == 2 and "token" in err and "401" in err, err
    code, out, err = await loadtest("--url", server.url, "--forum", FORUM, "--duration", "1",
                                    env={"FORUMCAST_TOKEN": server.token(Role.VIEWER, ["open-source"])})
    assert code == 2 and "403 forbidden" in err, err
    code, out, err = await loadtest("--url", server.url, "--forum", FORUM, "--viewers", "0")
    assert code == 2 and "--viewers" in err, err
