"""A bounded fuzz of every edge: each HTTP route the app registers (read
from app.router, so a new route is covered without editing this file)
gets a fixed corpus of malformed bodies, path values and tokens; each
socket.io event the server handles gets garbage payloads.

The promise checked (docs/DESIGN.md "What we promise"): no input reaches a
5xx; every refusal of an API, WHIP or WHEP route is JSON with error.code;
every socket.io refusal is an ack with an error object and the connection
survives it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings, load_settings
from rooms.models import Role
from signaling.app import build_app
from signaling.app_keys import TOKENS

pytestmark = [pytest.mark.timeout(300)]

FORUM = "ai"
B = "fuzzb"  # a multipart boundary
MULTIPART = f"multipart/form-data; boundary={B}"


def _part(headers: bytes, content: bytes = b"x") -> bytes:
    return b"--" + B.encode() + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n--" + B.encode() + b"--\r\n"


# (content type, body): what a confused or hostile client sends
BODIES: list[tuple[str | None, bytes]] = [
    (None, b""),
    ("application/json", b""),
    ("application/json", b"{"),
    ("application/json", b"null"),
    ("application/json", b"[]"),
    ("application/json", b'"a string"'),
    ("application/json", b"1e999"),
    ("application/json", b'{"source": 1e309, "slate": "yes", "manual": "true", "expected_version": -1}'),
    ("application/json", b'{"source": 123456789012345678901234567890123456789, "expected_version": 1e400}'),
    ("application/json", b'{"source": ["a"], "media": {"x": 1}, "take": "yes", "extra": true}'),
    ("application/json", b'{"source": "a\\u0000b", "media": "../../../etc/passwd"}'),
    ("application/json", b'{"source": "\\ud800", "media": "\\udfff"}'),
    ("application/json", b'{"source": "' + b"x" * 5000 + b'"}'),
    ("application/json", b'{"a": ' * 2000 + b"1" + b"}" * 2000),  # deep nesting
    ("application/json", b"\xff\xfe{\x00}"),  # bad UTF-8
    ("application/json", b'{"slate": true}'),
    ("application/json", b'{"source": null}'),
    ("application/json", b'{"manual": true}'),
    ("application/json", b'{"media": "nope", "take": true}'),
    ("application/json; charset=latin-1", b'{"source": "\xe9"}'),
    ("text/plain", b"hello\x00world"),
    ("application/x-www-form-urlencoded", b"source=%00&slate=1&%ZZ=1"),
    ("application/sdp", b""),
    ("application/sdp", b"v=0\r\n"),
    ("application/sdp", b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\x00"),
    ("application/sdp", b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n" + b"a=x\r\n" * 10),
    ("application/sdp", b"\xff\xfe\xfd"),
    ("application/sdp", b"v=0\r\n" + b"a" * 70_000),
    (MULTIPART, b""),
    (MULTIPART, b"no boundary here"),
    ("multipart/form-data", b"--x\r\n\r\n--x--\r\n"),  # no boundary parameter
    (MULTIPART, _part(b'Content-Disposition: form-data; name="file"; filename="a\x00b.mp4"')),
    (MULTIPART, _part(b"Content-Disposition\x00: broken")),
    (MULTIPART, _part(b"Content-Disposition")),
    (MULTIPART, _part(b"Content-Disposition: form-data; name=\"file\"; filename*=bogus''%ZZ")),
    (MULTIPART, _part(b'Content-Disposition: form-data; name="file"; filename="../../etc/passwd"')),
    (MULTIPART, _part(b'Content-Disposition: form-data; name="file"\r\nContent-Encoding: gzip')),
    (MULTIPART, _part(b'Content-Disposition: form-data; name="file"\r\nContent-Transfer-Encoding: base64', b"!!!")),
    (MULTIPART, _part(b'Content-Disposition: form-data; name="other"')),
    (MULTIPART, _part(b"X-Long: " + b"h" * 9000)),
    (MULTIPART, _part(b'Content-Disposition: form-data; name="file"; filename="\xff\xfe.mp4"')),
]

# values put in a route's {placeholders}: the real forum, then what an attacker tries
PATH_VALUES = [FORUM, "nope", "..", "%2E%2E%2Fetc%2Fpasswd", "a%00b", "%FF%FE", "x" * 300, "main"]

JSON_PREFIXES = ("/api/", "/whip/", "/whep/", "/healthz")


def _is_json_route(path: str) -> bool:
    return path.startswith(JSON_PREFIXES)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from tests.processes import free_port_block

    return load_settings(env={}, data_dir=str(tmp_path), node_id="fuzz-node", ice_addresses="127.0.0.1",
                         rtmp_port=free_port_block(32), srt_port=free_port_block(32),
                         udp_port=free_port_block(0))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


def _routes(app: web.Application) -> list[tuple[str, str]]:
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or info.get("prefix")
        if template and route.method != "*":
            found.append((route.method, str(template)))
    return sorted(set(found))


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


def _tokens(app: web.Application) -> dict[str, str | None]:
    import time

    from config.settings import load_or_create_secret
    from rooms.tokens import TokenService
    from signaling.app_keys import SETTINGS

    tokens = app[TOKENS]
    # signed with the node's secret, but issued a day ago for an hour
    yesterday = TokenService(load_or_create_secret(app[SETTINGS]), now=lambda: time.time() - 86_400)
    return {
        "expired": "Bearer " + yesterday.issue(Role.ADMIN, None, "Fuzz Expired", ttl_seconds=3600),
        "none": None,
        "garbage": "Bearer not.a.jwt",
        "basic": "Basic dXNlcjpwYXNz",
        "viewer": "Bearer " + tokens.issue(Role.VIEWER, [FORUM], "Fuzz Viewer"),
        "speaker": "Bearer " + tokens.issue(Role.SPEAKER, [FORUM], "Fuzz Speaker"),
        "admin": "Bearer " + tokens.issue(Role.ADMIN, None, "Fuzz Admin"),
    }


async def _check(response: Any, method: str, path: str, what: str, problems: list[str]) -> None:
    body = await response.read()
    if response.status >= 500:
        problems.append(f"{method} {path} [{what}] -> {response.status}: {body[:200]!r}")
        return
    # the path the server saw: the client resolves '..' segments before sending
    if response.status >= 400 and _is_json_route(response.url.path) and method != "HEAD":
        try:
            import json

            error = json.loads(body)["error"]
            assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str)
        except Exception:
            problems.append(f"{method} {path} [{what}] -> {response.status} without a JSON error: {body[:200]!r}")


async def test_every_http_route_refuses_malformed_input_without_a_5xx(
        client: TestClient[web.Request, web.Application]) -> None:
    app = client.app
    assert app is not None
    routes = _routes(app)
    assert len(routes) >= 40, routes  # the enumeration found the app's routes
    problems: list[str] = []
    tokens = _tokens(app)
    sent = 0
    for method, template in routes:
        async with client.request(method, _fill(template, FORUM)) as response:
            if response.status == 503 and "/static/" in template:
                continue  # a file the deployment lacks (npm ci not run), whatever the input
        # the path's odd values, with an admin token and a JSON body
        for value in PATH_VALUES:
            path = _fill(template, value)
            headers = {"Authorization": str(tokens["admin"]), "Content-Type": "application/json"}
            async with client.request(method, path, data=b'{"source": null}', headers=headers) as response:
                await _check(response, method, path, f"path {value!r}", problems)
            sent += 1
        path = _fill(template, FORUM)
        for token_name, token in tokens.items():
            for content_type, body in BODIES:
                headers = {} if token is None else {"Authorization": token}
                if content_type is not None:
                    headers["Content-Type"] = content_type
                async with client.request(method, path, data=body, headers=headers) as response:
                    await _check(response, method, path, f"{token_name}, {content_type}, {body[:40]!r}", problems)
                sent += 1
        # header shapes no server should take (oversize ones: see the raw test below)
        for headers in ({"Authorization": "Bearer a.b.c~"}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer " + "A" * 8000}, {"Authorization": "bearer  x y z"}):
            async with client.request(method, path, headers=headers, data=b"") as response:
                await _check(response, method, path, f"headers {str(headers)[:40]}", problems)
            sent += 1
    assert not problems, f"{len(problems)} of {sent} requests:\n" + "\n".join(problems[:80])


GARBAGE: list[Any] = [
    None, 0, -1, 10**40, 1e308, True, "text", "", "\x00", "\udcff" * 3, [], [1, 2], {},
    {"forum_id": None}, {"forum_id": 5}, {"forum_id": "../../etc"}, {"forum_id": "nope"},
    {"forum_id": "x" * 500}, {"forum_id": FORUM, "sdp": 5}, {"forum_id": FORUM, "sdp": "v=0\x00"},
    {"forum_id": FORUM, "sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n"}, {"forum_id": FORUM, "source_id": ["a"]},
    {"forum_id": FORUM, "source_id": "a\x00b", "media": {"x": 1}, "take": "yes", "manual": "no"},
    {"forum_id": FORUM, "viewer_id": 1e999}, {"forum_id": FORUM, "expected_version": -5, "source_id": None},
    {"forum_id": FORUM, "media": "../../etc/passwd", "take": False},
    {"forum_id": FORUM, "source_id": "src-nope"},
]


async def test_every_socketio_event_acks_garbage_with_an_error(
        client: TestClient[web.Request, web.Application]) -> None:
    from signaling.app_keys import SIO

    app = client.app
    assert app is not None
    events = sorted(name for name in app[SIO].handlers["/"] if name not in ("connect", "disconnect", "*"))
    assert {"join", "publish", "watch", "take", "preview"} <= set(events), events
    events.append("no_such_event")
    url = str(client.make_url("/"))
    problems: list[str] = []
    for role, forums in ((Role.VIEWER, [FORUM]), (Role.ADMIN, None)):
        sio = socketio.AsyncClient(reconnection=False)
        token = app[TOKENS].issue(role, forums, f"Fuzz {role.value}")
        await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        try:
            for joined in (False, True):
                if joined:
                    ack = await sio.call("join", {"forum_id": FORUM}, timeout=20)
                    assert "participant" in ack, ack
                for event in events:
                    for payload in GARBAGE:
                        if event == "leave":
                            continue  # leave takes anything; it is checked by test_sio_server
                        ack = await sio.call(event, payload, timeout=20)
                        refused = isinstance(ack, dict) and isinstance(ack.get("error"), dict) \
                            and isinstance(ack["error"].get("code"), str)
                        if not isinstance(ack, dict) or (refused and ack["error"]["code"] == "internal"):
                            problems.append(f"{role.value} {event}({payload!r:.60}) -> {ack!r:.200}")
                        elif not isinstance(payload, dict) and not refused:
                            # only an object can be a request (extra fields in one are ignored)
                            problems.append(f"{role.value} {event}({payload!r:.60}) accepted: {ack!r:.100}")
                    # no payload at all, and two payloads
                    for args in ((), ({"forum_id": FORUM}, {"x": 1})):
                        ack = await sio.call(event, args, timeout=20) if args else await sio.call(event, timeout=20)
                        if not (isinstance(ack, dict) and "error" in ack) and event != "leave":
                            problems.append(f"{role.value} {event}{args!r:.60} -> {ack!r:.200}")
                assert sio.connected, f"the {role.value} connection did not survive"
            # and it still works
            ack = await sio.call("join", {"forum_id": FORUM}, timeout=20)
            assert "participant" in ack, ack
        finally:
            await sio.disconnect()
    assert not problems, "\n".join(problems[:80])


@pytest.mark.parametrize("header", [b"X-Junk: " + b"v" * 9000, b"Content-Length: 99999999999999999999",
                                    b"Authorization: Bearer \x00\x01", b"Content-Type: multipart/form-data; boundary="
                                    + b"b" * 9000])
async def test_headers_past_the_parser_limits_get_a_400(
        client: TestClient[web.Request, web.Application], header: bytes) -> None:
    # aiohttp's HTTP parser refuses these before any route runs; it must stay a 4xx
    import asyncio

    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"POST /api/forums/ai/media HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()
    assert status.split()[1:2] == [b"400"], status
