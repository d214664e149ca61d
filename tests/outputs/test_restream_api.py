"""The restream API on a whole node: operator token required, clear
errors, a destination added at run time goes live on a real RTMP
listener, its status is pushed over socket.io; the key never comes back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from tests.eventually import eventually
from tests.operator_app import Node, SioClient, running_node
from tests.outputs.helpers import probe
from tests.outputs.platforms import Platform

pytestmark = pytest.mark.timeout(240)
FORUM = "ai"
KEY = "api-key-5f1e2d3c4b5a-secret"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as running:
        yield running


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None,
               **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        text = await response.text()
        return response.status, (await response.json() if text else None)


async def test_refusals(node: Node) -> None:
    base = f"{node.url}/api/forums/{FORUM}/restreams"
    op = node.token(Role.OPERATOR, [FORUM])
    async with aiohttp.ClientSession() as http:
        assert (await call(http, "GET", base))[0] == 401
        assert (await call(http, "GET", base, node.token(Role.VIEWER, [FORUM])))[0] == 403
        assert (await call(http, "GET", base, node.token(Role.OPERATOR, ["other-forum"])))[0] == 403
        for body in ({}, {"name": "x", "url": "rtmp://h/app"}, {"name": "x", "url": "http://h/app", "stream_key": "k"},
                     {"name": "x", "url": "rtmp://h/app?k=1", "stream_key": "k"}, {"name": "", "url": "rtmp://h/a",
                                                                                   "stream_key": "k"}):
            status, answer = await call(http, "POST", base, op, json=body)
            assert status == 400 and answer["error"]["code"] == "invalid", body
        status, answer = await call(http, "POST", base, op, data=b"not json")
        assert status == 400 and answer["error"]["code"] == "invalid"
        for method, path in (("DELETE", "/nope"), ("POST", "/nope/start"), ("POST", "/nope/stop")):
            status, answer = await call(http, method, base + path, op)
            assert status == 404 and answer["error"]["code"] == "not_found"
        assert (await call(http, "GET", f"{node.url}/api/forums/no-such/restreams", op))[0] == 404


@pytest.mark.slow
async def test_add_start_live_push_stop_delete(node: Node, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    platform = Platform("api", tmp_path, KEY)
    target = await platform.start()
    base = f"{node.url}/api/forums/{FORUM}/restreams"
    op = node.token(Role.OPERATOR, [FORUM])
    operator = SioClient()
    guest = SioClient()  # restream states are the operators' business: a guest hears none
    answers: list[Any] = []
    async with aiohttp.ClientSession() as http:
        try:
            await operator.connect(node, op)
            await operator.call("join", {"forum_id": FORUM})
            await guest.connect(node, node.token(Role.VIEWER, [FORUM]))
            await guest.call("join", {"forum_id": FORUM})
            status, created = await call(http, "POST", base, op,
                                         json={"name": "Platform", "url": platform.url, "stream_key": KEY})
            assert status == 201 and created["state"] == "idle"
            answers.append(created)
            rid = created["id"]
            status, started = await call(http, "POST", f"{base}/{rid}/start", op)
            assert status == 200 and started["state"] in ("connecting", "live")
            answers.append(started)

            async def live() -> bool:
                status, body = await call(http, "GET", base, op)
                answers.append(body)
                return any(r["state"] == "live" and r["uptime_s"] >= 3 for r in body["restreams"])

            await eventually(live, timeout=120, interval=0.5, what="the destination live for 3 s")
            push = await operator.next_push("restreams", lambda p: any(r["state"] == "live" for r in p["restreams"]))
            answers.append(push)
            assert "url" not in push["restreams"][0]
            assert guest.pushes["restreams"].empty()
            status, stopped = await call(http, "POST", f"{base}/{rid}/stop", op)
            assert status == 200 and stopped["state"] == "stopped"
            answers.append(stopped)
            status, _ = await call(http, "DELETE", f"{base}/{rid}", op)
            assert status == 204
            status, body = await call(http, "GET", base, op)
            assert body["restreams"] == []
        finally:
            await operator.sio.disconnect()
            await guest.sio.disconnect()
            await platform.stop()
    info = probe(target)
    assert info["video"][:3] == ("h264", 320, 180) and info["audio"] == ("aac", 48000)
    ours = [r.getMessage() for r in caplog.records if "(platform-" not in r.getMessage()]
    assert KEY not in "\n".join(ours) + repr(answers)
