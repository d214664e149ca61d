"""Uploads of recorded talks against a real node on loopback: tus
resumable uploads (a speaker from their invite token), the size limit
checked from the headers, conversion as a job pushed to operators,
bounds on concurrent conversions, audio track choice over the API."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.models import Role
from signaling.app_keys import LIBRARY
from signaling.tus_uploads import TUS
from streaming.ffmpeg_process import ffmpeg_binary
from tests.eventually import eventually
from tests.operator_app import Node, SioClient, running_node
from tests.test_operator_api import bearer, call

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}


def interpretation_video(path: Path) -> Path:
    """A 3 s talk with two audio tracks: eng (default) and fra."""
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=3", "-f", "lavfi", "-i", "sine=f=440:d=3",
         "-f", "lavfi", "-i", "sine=f=880:d=3", "-map", "0:v", "-map", "1:a", "-map", "2:a",
         "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-g", "25", "-c:a", "aac",
         "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra",
         "-metadata:s:a:1", "title=Interpretation", str(path)],
        check=True, timeout=60)
    return path


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", max_upload_bytes=5 << 20,
                            max_conversions_per_token=1, max_conversions_per_forum=2) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def metadata(filename: str) -> str:
    return "filename " + base64.b64encode(filename.encode()).decode()


async def create(http: aiohttp.ClientSession, base: str, token: str, length: int,
                 filename: str = "talk.mp4") -> tuple[int, str]:
    headers = {**bearer(token), **TUS_HEADERS, "Upload-Length": str(length), "Upload-Metadata": metadata(filename)}
    async with http.post(f"{base}/uploads", headers=headers) as response:
        return response.status, response.headers.get("Location", "")


async def patch(http: aiohttp.ClientSession, url: str, token: str, offset: int, body: bytes) -> aiohttp.ClientResponse:
    headers = {**bearer(token), **TUS_HEADERS, "Upload-Offset": str(offset),
               "Content-Type": "application/offset+octet-stream"}
    async with http.patch(url, headers=headers, data=body) as response:
        await response.read()
        return response


async def test_a_speaker_uploads_resumably_and_operators_follow_the_conversion(
        node: Node, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    speaker = node.token(Role.SPEAKER, [FORUM], "Ana Speaker")
    op = node.token(Role.OPERATOR, [FORUM])
    operator = SioClient()
    try:
        await operator.connect(node, op)
        assert "forum" in await operator.call("join", {"forum_id": FORUM})
        data = interpretation_video(tmp_path / "talk.mkv").read_bytes()

        async with http.options(f"{base}/uploads") as response:
            assert response.status == 204 and response.headers["Tus-Version"] == "1.0.0"
            assert "creation" in response.headers["Tus-Extension"]
        status, location = await create(http, base, speaker, len(data))
        assert status == 201 and location.startswith(f"/api/forums/{FORUM}/uploads/")
        url = node.url + location

        half = len(data) // 2
        first = await patch(http, url, speaker, 0, data[:half])
        assert first.status == 204 and first.headers["Upload-Offset"] == str(half)
        # the connection broke; the client asks where to resume, and a wrong offset is refused
        async with http.head(url, headers={**bearer(speaker), **TUS_HEADERS}) as response:
            assert response.status == 200 and response.headers["Upload-Offset"] == str(half)
            assert response.headers["Upload-Length"] == str(len(data))
        assert (await patch(http, url, speaker, 0, data)).status == 409
        # another speaker cannot see or continue it
        other = node.token(Role.SPEAKER, [FORUM], "Bo")
        assert (await patch(http, url, other, half, data[half:])).status == 403
        last = await patch(http, url, speaker, half, data[half:])
        assert last.status == 204 and last.headers["Upload-Offset"] == str(len(data))
        job_id = last.headers["Forumcast-Job"]

        done = await operator.next_push("media_job", lambda j: j["id"] == job_id and j["state"] == "done", timeout=60)
        assert done["percent"] == 100 and done["processing"]["video"] == "copied"
        status, job = await call(http, "GET", f"{base}/jobs/{job_id}", speaker)  # the uploader follows it too
        assert status == 200 and job["state"] == "done"
        status, library = await call(http, "GET", f"{base}/media", op)
        item = next(i for i in library["media"] if i["id"] == done["media"])
        assert item["uploaded_by"] == "Ana Speaker"
        assert [(t["language"], t["title"]) for t in item["audio_tracks"]] == [("eng", None), ("fra", "Interpretation")]
        assert item["audio_track"] == 0 and item["processing"]["audio"] == ["converted", "converted"]
        assert "file" not in item and "content_hash" not in item  # no server paths in answers
        assert list(node.app[TUS].root.iterdir()) == []  # nothing left of the upload

        # the operator picks the interpretation; a speaker cannot
        status, body = await call(http, "POST", f"{base}/media/{item['id']}/audio", speaker, json={"audio_track": 1})
        assert status == 403
        status, body = await call(http, "POST", f"{base}/media/{item['id']}/audio", op, json={"audio_track": 5})
        assert status == 400 and body["error"]["code"] == "invalid"
        status, body = await call(http, "POST", f"{base}/media/{item['id']}/audio", op, json={"audio_track": 1})
        assert status == 200 and body["audio_track"] == 1
        # or plays the other language as a second source
        status, started = await call(http, "POST", f"{base}/playouts", op, json={"media": item["id"], "audio_track": 0})
        assert status == 201 and started["playout"]["audio_track"] == 0
        status, started = await call(http, "POST", f"{base}/playouts", op, json={"media": item["id"]})
        assert status == 201 and started["playout"]["audio_track"] == 1
    finally:
        await operator.close()


async def test_an_oversized_upload_is_refused_from_its_headers(node: Node, http: aiohttp.ClientSession) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    op = node.token(Role.OPERATOR, [FORUM])
    library = node.app[LIBRARY]
    status, _ = await create(http, base, op, 6 << 20)  # over the 5 MiB setting
    assert status == 413
    assert list(node.app[TUS].root.iterdir()) == []
    # multipart: the headers say 3 GiB; the answer comes before any body is sent
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write((f"POST /api/forums/{FORUM}/media HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {op}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      f"Content-Length: {3 << 30}\r\n\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
        assert status_line.split()[1] == b"413", status_line
    finally:
        writer.close()
    assert list(library.tmp_dir.iterdir()) == []


async def test_conversions_are_bounded_per_token_and_per_forum(node: Node, http: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    library = node.app[LIBRARY]
    data = interpretation_video(tmp_path / "talk.mkv").read_bytes()
    tokens = [node.token(Role.SPEAKER, [FORUM], name) for name in ("A", "B", "C")]
    ops = [node.token(Role.OPERATOR, [FORUM], f"op{n}") for n in range(2)]
    await library._running.acquire()  # the node is busy converting: jobs stay queued
    try:
        for n in range(2):
            form = aiohttp.FormData()
            form.add_field("file", data[: len(data) - n], filename="talk.mp4")  # distinct content
            status, body = await call(http, "POST", f"{base}/media", ops[n], data=form)
            assert status == 202, body
        status, body = await call(http, "POST", f"{base}/media", ops[0], data={"file": io.BytesIO(data)})
        assert status == 429 and "your uploads" in body["error"]["message"]
        status, _ = await create(http, base, tokens[2], len(data))  # a third token: the forum is full
        assert status == 429
        status, body = await call(http, "POST", f"{base}/uploads", tokens[2],
                                  headers={**TUS_HEADERS, "Upload-Length": str(len(data))})
        assert status == 429 and "this forum" in body["error"]["message"]
    finally:
        library._running.release()
    await eventually(lambda: all(j.finished for j in library.jobs(FORUM)), timeout=60, what="jobs finish")
    status, _ = await create(http, base, tokens[2], len(data))
    assert status == 201


async def test_tus_refusals_are_json(node: Node, http: aiohttp.ClientSession) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    speaker = node.token(Role.SPEAKER, [FORUM])
    viewer = node.token(Role.VIEWER, [FORUM])
    status, _ = await create(http, base, viewer, 100)
    assert status == 403
    cases: list[tuple[dict[str, str], int]] = [
        ({"Upload-Length": "100"}, 412),  # no Tus-Resumable
        ({**TUS_HEADERS}, 400),  # no Upload-Length
        ({**TUS_HEADERS, "Upload-Length": "-1"}, 400),
        ({**TUS_HEADERS, "Upload-Length": "100", "Upload-Metadata": "filename %%%"}, 400),
        ({**TUS_HEADERS, "Upload-Defer-Length": "1"}, 400),
        ({**TUS_HEADERS, "Upload-Length": "\u00b2"}, 400),  # a digit to str.isdigit(), not to int()
        ({**TUS_HEADERS, "Upload-Length": "100", "Upload-Metadata": "filename \u00e9t\u00e9"}, 400),
    ]
    for headers, expected in cases:
        status, body = await call(http, "POST", f"{base}/uploads", speaker, headers=headers)
        assert status == expected and "error" in body, (headers, body)
    status, location = await create(http, base, speaker, 100)
    url = node.url + location
    async with http.patch(url, headers={**bearer(speaker), **TUS_HEADERS, "Upload-Offset": "0"},
                          data=b"x") as response:
        assert response.status == 415
    response = await patch(http, url, speaker, 0, b"x" * 101)
    assert response.status == 413
    status, body = await call(http, "GET", f"{base}/uploads/nope", speaker)
    assert status == 404 and body["error"]["code"] == "not_found"
    response = await patch(http, url, speaker, 0, b"not a video " * 8 + b"1234")  # complete, but no video
    assert response.status == 415
    async with http.delete(url, headers={**bearer(speaker), **TUS_HEADERS}) as deleted:
        assert deleted.status == 404  # a refused upload is gone
    assert list(node.app[TUS].root.iterdir()) == [] and list(node.app[LIBRARY].tmp_dir.iterdir()) == []


async def test_malformed_requests_to_the_upload_routes_never_get_a_5xx(node: Node, http: aiohttp.ClientSession) -> None:
    base = f"/api/forums/{FORUM}"
    speaker = node.token(Role.SPEAKER, [FORUM], "Fuzz")
    status, location = await create(http, f"{node.url}{base}", speaker, 64)
    assert status == 201
    paths = [f"{base}/uploads", location, f"{base}/uploads/..%2F..", f"{base}/uploads/\u00e9", f"{base}/jobs/x",
             f"{base}/media/x/audio", f"{base}/media", f"/api/forums/nope/uploads"]
    headers_corpus: list[dict[str, str]] = [
        {}, TUS_HEADERS, {**TUS_HEADERS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        {**TUS_HEADERS, "Upload-Offset": "99999999999999999999", "Content-Type": "application/offset+octet-stream"},
        {**TUS_HEADERS, "Upload-Length": "1" * 30}, {**TUS_HEADERS, "Upload-Metadata": ",,, ,filename"},
        {**TUS_HEADERS, "Upload-Length": "10", "Upload-Metadata": "a" * 5000},
        {"Content-Type": "multipart/form-data; boundary="}, {"Content-Type": "application/json"},
    ]
    bodies = [b"", b"\x00" * 10, b"{", b'{"audio_track": true}', b"--x\r\nContent-Disposition: form-data\r\n\r\n"]
    for path in paths:
        for method in ("POST", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS"):
            for headers in headers_corpus:
                for body in bodies:
                    async with http.request(method, node.url + path, data=body,
                                            headers={**bearer(speaker), **headers}) as response:
                        await response.read()
                        assert response.status < 500, (method, path, headers, body[:20], response.status)


async def test_a_complete_upload_is_converted_after_a_restart(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    data = interpretation_video(tmp_path / "talk.mkv").read_bytes()
    async with running_node(tmp_path / "node") as first:
        library = first.app[LIBRARY]
        await library._running.acquire()  # busy: the job waits while the server stops
        speaker = first.token(Role.SPEAKER, [FORUM], "Ana")
        status, location = await create(http, f"{first.url}/api/forums/{FORUM}", speaker, len(data))
        assert status == 201
        response = await patch(http, first.url + location, speaker, 0, data)
        assert response.status == 204 and library.items(FORUM) == []
    async with running_node(tmp_path / "node") as second:
        library = second.app[LIBRARY]
        await eventually(lambda: library.items(FORUM), timeout=60, what="the upload converted after the restart")
        [item] = library.items(FORUM)
        assert item.uploaded_by == "Ana"
        await eventually(lambda: list(second.app[TUS].root.iterdir()) == [], timeout=10, what="nothing left")
