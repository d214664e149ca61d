from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings, load_settings
from rooms.agenda import AgendaClock
from rooms.errors import RoomError
from rooms.memory_store import MemoryStore
from signaling.app import build_app
from rooms.service import RoomService
from rooms.store import instance_name
from signaling.app_keys import AGENDA, EVENT, ROOMS, SETTINGS, STORE, TOKENS
from tests.processes import free_port_block

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
AT_14_10 = dt.datetime(2026, 11, 8, 14, 10, tzinfo=SHANGHAI)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # record_sessions off: at 14:10 recorded sessions are live, and an encoder per forum is not what these tests check (it made each teardown 40-58 s)
    # udp_port: a free one, not the default 7882 (tests run side by side)
    return load_settings(env={}, data_dir=str(tmp_path), node_id="api-node", ice_addresses="127.0.0.1",
                         record_sessions="false", udp_port=free_port_block(0))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(settings)
    app[AGENDA] = AgendaClock(app[EVENT], now=lambda: AT_14_10)

    async def boom(request: web.Request) -> web.Response:
        raise ZeroDivisionError("a bug")

    async def refuse(request: web.Request) -> web.Response:
        raise RoomError("forbidden", "operators only")

    app.router.add_get("/api/boom", boom)
    app.router.add_get("/refuse", refuse)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def test_build_app_registers_the_services(settings: Settings) -> None:
    app = build_app(settings)
    assert app[SETTINGS] is settings
    assert app[EVENT].id == "internet-summit-2026"
    token = app[TOKENS].issue("viewer", ["ai"], "G")
    assert app[TOKENS].verify(token).forums == frozenset({"ai"})
    assert (settings.data_dir / "token_secret").is_file()


async def test_store_lives_in_a_cleanup_context(client: TestClient[web.Request, web.Application]) -> None:
    store = client.app[STORE]  # type: ignore[index]
    assert isinstance(store, MemoryStore) and instance_name(store.node_id) == "api-node"
    rooms = client.app[ROOMS]  # type: ignore[index]
    assert isinstance(rooms, RoomService) and rooms.store is store and rooms.node_id == store.node_id


@pytest.mark.redis
async def test_redis_url_selects_the_shared_store(tmp_path: Path, redis_url: str) -> None:
    from signaling.redis_store import RedisStore

    settings = load_settings(env={}, data_dir=str(tmp_path), node_id="redis-node", redis_url=redis_url,
                             ice_addresses="127.0.0.1", udp_port=free_port_block(0))
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as test_client:
        store = test_client.app[STORE]  # type: ignore[index]
        # liveness is keyed by this run's instance of the name (redis-node@...)
        assert isinstance(store, RedisStore) and instance_name(store.node_id) == "redis-node"
        response = await test_client.get("/healthz")
        assert (await response.json())["node_id"] == "redis-node"
        assert store.node_id in {node.node_id for node in await store.nodes()}


async def test_healthz(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "node_id": "api-node"}


async def test_the_favicon_every_browser_asks_for_is_served(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/favicon.ico")  # was a 404 in every page's console
    assert response.status == 200 and response.headers["Content-Type"] == "image/svg+xml"
    assert (await response.text()).startswith("<svg")


async def test_forums_list_with_live_and_next(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/api/forums")
    assert response.status == 200
    body = await response.json()
    assert body["event"]["id"] == "internet-summit-2026" and body["event"]["public"] is False
    assert body["event"]["days"] == ["2026-11-08", "2026-11-09"]
    forums = {forum["id"]: forum for forum in body["forums"]}
    assert len(forums) == 21
    ai = forums["ai"]
    assert ai["name"] == {"en": "Artificial Intelligence Forum", "zh": "人工智能论坛"}
    assert ai["kind"] == "sub" and ai["capacity"] == 1500 and ai["room"]["en"]
    assert ai["live"]["id"] == "ai-keynote" and ai["next"]["id"] == "ai-talk"
    assert ai["live"]["start"] == "2026-11-08T14:00:00+08:00"
    assert forums["main"]["live"] is None and forums["main"]["next"] is None  # the morning is over
    assert forums["digital-economy"]["live"] is None and forums["digital-economy"]["next"] is not None


async def test_one_forum_with_sessions_and_speakers(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/api/forums/main")
    assert response.status == 200
    body = await response.json()
    assert [s["id"] for s in body["sessions"]] == ["opening-ceremony", "keynote-1", "keynote-2", "achievements"]
    speakers = {s["id"]: s for s in body["speakers"]}
    assert speakers["sofia-lindqvist"]["mode"] == "recorded"
    assert speakers["zhang-min"]["name"]["zh"] == "张敏"
    assert "video" not in speakers["sofia-lindqvist"]  # no server paths leak
    assert {r["id"] for r in body["restreams"]} == {"webcast", "video-site"}
    assert all("url" not in r and "key_env" not in r for r in body["restreams"])


async def test_unknown_forum_is_json_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/api/forums/atlantis")
    assert response.status == 404
    assert await response.json() == {
        "error": {"code": "not_found", "message": "there is no forum 'atlantis' in this event"}
    }


async def test_api_errors_are_json(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"

    response = await client.post("/api/forums", json={})
    assert response.status == 405
    body = await response.json()
    assert body["error"] == {"code": "method_not_allowed", "message": "POST is not allowed on /api/forums"}
    assert "GET" in response.headers["Allow"]

    response = await client.get("/api/boom")
    assert response.status == 500
    body = await response.json()
    assert body["error"]["code"] == "internal"
    assert "ZeroDivisionError" not in await response.text() and "a bug" not in await response.text()


async def test_room_errors_are_json_everywhere(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/refuse")
    assert response.status == 403
    assert await response.json() == {"error": {"code": "forbidden", "message": "operators only"}}


async def test_public_event_override(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=str(tmp_path), public_event="true")
    assert build_app(settings)[EVENT].public is True
