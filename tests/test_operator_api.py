"""The operator's side against a real node on loopback (in-process app,
real aiortc peers, real ffmpeg): REST refusals, the media library upload,
playouts, socket.io operator events seen by several operators, and the
program switch as viewers receive it (keyframe-aligned, sizes change from
A to B, no decode error, timestamps never go backwards; the slate covers a
dropped source and the source comes back)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ffmpeg
import pytest

from rooms.models import Role
from signaling.app_keys import HOSTS, LIBRARY
from streaming.ffmpeg_process import FfmpegProcess
from tests.eventually import eventually
from tests.operator_app import (
    DecodeErrors,
    Node,
    RecordingViewer,
    SioClient,
    SizedPublisher,
    make_video,
    running_node,
)

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"
SLATE_SIZE = (960, 540)
VENUE_SIZE = (320, 240)  # venue_encoder's picture


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for client in reversed(made):
        await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None,
               **kwargs: Any) -> tuple[int, Any]:
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json()


async def test_rest_refusals(node: Node, http: aiohttp.ClientSession) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    op = node.token(Role.OPERATOR, [FORUM])
    for role in (Role.VIEWER, Role.SPEAKER):
        status, body = await call(http, "POST", f"{base}/program", node.token(role), json={"slate": True})
        assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await call(http, "POST", f"{base}/program", json={"slate": True})
    assert status == 401 and body["error"]["code"] == "token_missing"
    status, body = await call(http, "POST", f"{node.url}/api/forums/main/program", op, json={"slate": True})
    assert status == 403  # the token opens "ai" only
    status, body = await call(http, "POST", f"{node.url}/api/forums/nope/program", op, json={"slate": True})
    assert status == 404
    status, body = await call(http, "POST", f"{base}/program", op, data=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid"
    status, body = await call(http, "POST", f"{base}/program", op, json={"source": "no-such-source"})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await call(http, "POST", f"{base}/program", op, json={"source": 42})
    assert status == 400
    status, body = await call(http, "POST", f"{base}/manual", op, json={"manual": "yes"})
    assert status == 400
    status, body = await call(http, "POST", f"{base}/playouts", op, json={"media": "nothing-here", "take": True})
    assert status == 404
    status, body = await call(http, "GET", f"{base}/sources", op)
    assert status == 200 and body["sources"] == [] and body["program"]["slate"] is True
    status, body = await call(http, "GET", f"{base}/ingest", node.token(Role.VIEWER))
    assert status == 403
    status, body = await call(http, "POST", f"{base}/program", op, json={"slate": True})
    assert status == 200 and body["slate"] is True


def venue_encoder(url: str) -> FfmpegProcess:
    """A venue encoder: H.264 baseline, 2 s GOP, AAC, in real time, over RTMP."""
    video = ffmpeg.input("testsrc=s=320x240:r=15", f="lavfi", re=None)
    audio = ffmpeg.input("sine=r=44100", f="lavfi", re=None)
    args = ffmpeg.output(video, audio, url, t=60, vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p",
                         g=30, bf=0, acodec="aac", f="flv", **{"profile:v": "baseline"}).get_args()
    return FfmpegProcess(args, name="venue-encoder", loglevel="error")


async def test_ingest_addresses_venue_feed_and_its_states(node: Node, http: aiohttp.ClientSession,
                                                           clients: list[Any]) -> None:
    op = node.token(Role.OPERATOR)
    status, ai = await call(http, "GET", f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)
    assert status == 200, ai
    assert ai["rtmp_url"].startswith("rtmp://127.0.0.1:") and ai["rtmp_url"].endswith(ai["stream_key"])
    assert ai["srt_url"].startswith("srt://127.0.0.1:") and ai["stream_key"] in ai["srt_url"]
    status, again = await call(http, "GET", f"{node.url}/api/forums/{FORUM}/ingest?reveal=1", op)
    assert again["rtmp_url"] == ai["rtmp_url"]
    status, sources = await call(http, "GET", f"{node.url}/api/forums/{FORUM}/sources", op)
    assert [s["kind"] for s in sources["sources"]] == ["venue"]
    venue = node.app[HOSTS].get(FORUM).venue
    assert venue.processes(), "the venue listeners run"
    # another forum gets another key and other ports
    status, main = await call(http, "GET", f"{node.url}/api/forums/main/ingest?reveal=true", op)
    assert main["stream_key"] != ai["stream_key"] and main["rtmp_url"] != ai["rtmp_url"]

    # a venue encoder publishes: the venue source goes live in the rooms, an operator takes it
    # and a viewer gets the venue's picture
    operator = SioClient()
    clients.append(operator)
    await operator.connect(node, op)
    await operator.call("join", {"forum_id": FORUM})
    await operator.call("cut_to_slate", {"forum_id": FORUM})  # attended: nothing goes on air by itself
    viewer = await _watch(node, clients)
    encoder = venue_encoder(ai["rtmp_url"])
    await encoder.start()
    try:
        await operator.next_push("sources", lambda p: any(s["id"] == ai["source_id"] and s["state"] == "live"
                                                          for s in p["sources"]), timeout=20)
        ack = await operator.call("take", {"forum_id": FORUM, "source_id": ai["source_id"]})
        assert ack["program"]["program"] == ai["source_id"]
        await viewer.wait_size(VENUE_SIZE, timeout=20)
    finally:
        await encoder.kill()  # the venue encoder dies without a word
    # the source is lost, the slate covers it on the same viewer connection ...
    await operator.next_push("sources", lambda p: any(s["id"] == ai["source_id"] and s["state"] == "lost"
                                                      for s in p["sources"]), timeout=20)
    lost_at = time.monotonic()
    await operator.next_push("program", lambda p: p["slate"] is True, timeout=10)
    await viewer.wait_size(SLATE_SIZE, timeout=10, after=lost_at)
    # ... and when the encoder comes back, so does its picture, by itself
    again = venue_encoder(ai["rtmp_url"])
    await again.start()
    try:
        back_at = time.monotonic()
        await operator.next_push("program", lambda p: p["program"] == ai["source_id"], timeout=30)
        await viewer.wait_size(VENUE_SIZE, timeout=20, after=back_at)
    finally:
        await again.stop(grace=2.0)
    pids = [process.pid for process in venue.processes() if process.pid is not None]
    assert pids
    await node.runner.cleanup()  # the node stops: every ffmpeg it started is reaped
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def upload_converted(http: aiohttp.ClientSession, base: str, token: str, form: aiohttp.FormData) -> Any:
    """Upload (202 + a job), follow the job to its end: the library item."""
    status, body = await call(http, "POST", f"{base}/media", token, data=form)
    assert status == 202, body
    job_id = body["job"]["id"]
    job: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal job
        _, job = await call(http, "GET", f"{base}/jobs/{job_id}", token)
        return job["state"] in ("done", "failed")

    await eventually(finished, timeout=60, what="the conversion job ends")
    assert job["state"] == "done", job
    _, library = await call(http, "GET", f"{base}/media", token)
    return next(i for i in library["media"] if i["id"] == job["media"])


async def test_upload_playout_take_and_stop(node: Node, http: aiohttp.ClientSession, tmp_path: Path,
                                            clients: list[Any]) -> None:
    base = f"{node.url}/api/forums/{FORUM}"
    op = node.token(Role.OPERATOR, [FORUM])
    video = make_video(tmp_path / "talk.mp4", 3, "320x240")
    data = video.read_bytes()

    # truncated: refused with a JSON error, the library unchanged
    form = aiohttp.FormData()
    form.add_field("file", data[: len(data) // 3], filename="talk.mp4", content_type="video/mp4")
    status, body = await call(http, "POST", f"{base}/media", op, data=form)
    assert status in (400, 415), body
    assert body["error"]["code"] in ("invalid", "unsupported_media_type")
    status, library = await call(http, "GET", f"{base}/media", op)
    assert library["media"] == []
    # not a video at all
    form = aiohttp.FormData()
    form.add_field("file", b"hello" * 1000, filename="talk.mp4", content_type="video/mp4")
    status, body = await call(http, "POST", f"{base}/media", op, data=form)
    assert status == 415
    # a viewer cannot upload
    form = aiohttp.FormData()
    form.add_field("file", data, filename="talk.mp4")
    status, body = await call(http, "POST", f"{base}/media", node.token(Role.VIEWER), data=form)
    assert status == 403
    status, library = await call(http, "GET", f"{base}/media", op)
    assert library["media"] == []

    form = aiohttp.FormData()
    form.add_field("file", data, filename="talk.mp4", content_type="video/mp4")
    item = await upload_converted(http, base, op, form)
    assert (item["width"], item["height"]) == (320, 240) and 2.5 < item["duration"] < 3.6
    form = aiohttp.FormData()
    form.add_field("file", data, filename="again.mp4", content_type="video/mp4")
    again = await upload_converted(http, base, op, form)
    assert again["id"] == item["id"]
    assert node.app[LIBRARY].normalizations == 1, "normalized once"

    other = SioClient()
    clients.append(other)
    await other.connect(node, node.token(Role.OPERATOR, [FORUM], "Other"))
    assert "forum" in await other.call("join", {"forum_id": FORUM})

    status, started = await call(http, "POST", f"{base}/playouts", op, json={"media": item["id"], "take": True})
    assert status == 201, started
    source_id = started["playout"]["source_id"]
    assert started["program"]["program"] == source_id
    pushed = await other.next_push("program", lambda p: p["program"] == source_id)
    assert pushed["source"]["kind"] == "recorded"
    await other.next_push("playouts", lambda p: [x["source_id"] for x in p["playouts"]] == [source_id])
    status, sources = await call(http, "GET", f"{base}/sources", op)
    assert [(s["id"], s["on_air"]) for s in sources["sources"]] == [(source_id, True)]

    status, body = await call(http, "POST", f"{base}/playouts/{source_id}/restart", op)
    assert status == 200 and body["playout"]["state"] == "playing"
    status, body = await call(http, "POST", f"{base}/playouts/{source_id}/restart", node.token(Role.VIEWER))
    assert status == 403
    status, body = await call(http, "DELETE", f"{base}/playouts/{source_id}", op)
    assert status == 200
    await other.next_push("program", lambda p: p["program"] is None and p["slate"])
    status, body = await call(http, "DELETE", f"{base}/playouts/{source_id}", op)
    assert status == 404

    # played to its end (3 s), a playout goes away by itself and the slate takes its place
    other.drain("playouts")
    other.drain("program")
    ack = await other.call("playout_start", {"forum_id": FORUM, "media": item["id"], "take": True})
    assert ack["program"]["program"] == ack["playout"]["source_id"], ack
    await other.next_push("playouts", lambda p: len(p["playouts"]) == 1)
    await other.next_push("playouts", lambda p: p["playouts"] == [], timeout=15)
    await other.next_push("program", lambda p: p["program"] is None and p["slate"], timeout=20)
    status, sources = await call(http, "GET", f"{base}/sources", op)
    assert sources["sources"] == []


async def test_operators_see_each_others_actions_and_bad_events_are_acked(node: Node,
                                                                          clients: list[Any]) -> None:
    ops = []
    for name in ("Ann", "Bo"):
        client = SioClient()
        clients.append(client)
        await client.connect(node, node.token(Role.OPERATOR, [FORUM], name))
        await client.call("join", {"forum_id": FORUM})
        ops.append(client)
    viewer = SioClient()
    clients.append(viewer)
    await viewer.connect(node, node.token(Role.VIEWER, [FORUM], "Guest"))
    await viewer.call("join", {"forum_id": FORUM})

    publisher = SizedPublisher(160, 120)
    speaker = SioClient()
    clients.append(publisher)
    clients.append(speaker)
    await speaker.connect(node, node.token(Role.SPEAKER, [FORUM], "Speaker"))
    await speaker.call("join", {"forum_id": FORUM})
    answer = await speaker.call("publish", {"forum_id": FORUM, "sdp": await publisher.offer()})
    await publisher.accept(answer["sdp"])
    source_id = answer["source_id"]
    await ops[1].next_push("sources", lambda p: any(s["id"] == source_id and s["state"] == "live"
                                                    for s in p["sources"]))

    assert (await ops[0].call("preview", {"forum_id": FORUM, "source_id": source_id}))["program"]["preview"] == source_id
    await ops[1].next_push("preview", lambda p: p["preview"] == source_id)
    ack = await ops[0].call("take", {"forum_id": FORUM})  # what is in preview
    assert ack["program"]["program"] == source_id
    seen = await ops[1].next_push("program", lambda p: p["program"] == source_id)
    assert seen["source"]["name"] == "Speaker"
    await viewer.next_push("program", lambda p: p["program"] == source_id)

    ack = await ops[1].call("cut_to_slate", {"forum_id": FORUM})
    assert ack["program"]["slate"] is True
    await ops[0].next_push("program", lambda p: p["slate"] is True)
    ack = await ops[1].call("set_manual", {"forum_id": FORUM, "manual": True})
    assert ack["program"]["manual"] is True
    await ops[0].next_push("program", lambda p: p["manual"] is True)

    # refusals: acked, and the connection and forum carry on
    assert (await viewer.call("take", {"forum_id": FORUM, "source_id": source_id}))["error"]["code"] == "forbidden"
    assert (await speaker.call("cut_to_slate", {"forum_id": FORUM}))["error"]["code"] == "forbidden"
    assert (await ops[0].call("take", {"forum_id": FORUM, "source_id": "nope"}))["error"]["code"] == "not_found"
    assert (await ops[0].call("take", {"forum_id": "nope"}))["error"]["code"] == "not_found"
    assert (await ops[0].call("take", "not an object"))["error"]["code"] == "invalid"
    assert (await ops[0].call("set_manual", {"forum_id": FORUM, "manual": 1}))["error"]["code"] == "invalid"
    assert (await ops[0].call("playout_start", {"forum_id": FORUM, "media": 7}))["error"]["code"] == "invalid"
    assert (await ops[0].call("playout_stop", {"forum_id": FORUM, "source_id": "x"}))["error"]["code"] == "not_found"
    ack = await ops[0].call("take", {"forum_id": FORUM, "source_id": source_id})
    assert ack["program"]["program"] == source_id


def _forward(a: int, b: int) -> bool:
    """b is a's RTP timestamp or later (mod 2^32)."""
    return ((b - a) & 0xFFFFFFFF) < 0x80000000


async def _publish(node: Node, clients: list[Any], width: int, height: int, name: str) -> tuple[SizedPublisher, str]:
    publisher = SizedPublisher(width, height)
    client = SioClient()
    clients.append(publisher)
    clients.append(client)
    await client.connect(node, node.token(Role.SPEAKER, [FORUM], name))
    await client.call("join", {"forum_id": FORUM})
    answer = await client.call("publish", {"forum_id": FORUM, "sdp": await publisher.offer()})
    assert "sdp" in answer, answer
    await publisher.accept(answer["sdp"])
    return publisher, answer["source_id"]


async def _watch(node: Node, clients: list[Any]) -> RecordingViewer:
    viewer = RecordingViewer()
    client = SioClient()
    clients.append(viewer)
    clients.append(client)
    await client.connect(node, node.token(Role.VIEWER, [FORUM], "Guest"))
    await client.call("join", {"forum_id": FORUM})
    answer = await client.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()})
    assert "sdp" in answer, answer
    await viewer.accept(answer["sdp"])
    return viewer


async def test_take_moves_three_viewers_from_a_to_b(node: Node, clients: list[Any]) -> None:
    op = SioClient()
    clients.append(op)
    await op.connect(node, node.token(Role.OPERATOR, [FORUM]))
    await op.call("join", {"forum_id": FORUM})
    _, a = await _publish(node, clients, 320, 240, "A")
    _, b = await _publish(node, clients, 240, 160, "B")
    await op.next_push("sources", lambda p: {x["id"] for x in p["sources"] if x["state"] == "live"} >= {a, b})
    assert (await op.call("take", {"forum_id": FORUM, "source_id": a}))["program"]["program"] == a
    with DecodeErrors() as errors:
        viewers = [await _watch(node, clients) for _ in range(3)]
        for viewer in viewers:
            await viewer.wait_size((320, 240), timeout=20)
        took = time.monotonic()
        assert (await op.call("take", {"forum_id": FORUM, "source_id": b}))["program"]["program"] == b
        for viewer in viewers:  # B reaches every viewer (how fast: python -m bench.switch)
            frame = await viewer.wait_size((240, 160), timeout=30, after=took)
            enough = viewer.frames.index(frame) + 10

            def has_enough(_: int, v: RecordingViewer = viewer, k: int = enough) -> bool:
                return len(v.frames) >= k

            await viewer.video_frames.wait_until(has_enough, 30)
    for viewer in viewers:
        sizes = [(f.width, f.height) for f in viewer.frames]
        first_b = sizes.index((240, 160))
        assert set(sizes[:first_b]) <= {(320, 240), SLATE_SIZE}
        assert set(sizes[first_b:]) == {(240, 160)}, "once on B, every frame is B's"
        pts = [f.pts for f in viewer.frames]
        assert all(_forward(x, y) for x, y in zip(pts, pts[1:])), "timestamps went backwards"
    assert errors.messages == []


async def test_dropped_program_source_is_covered_by_the_slate_and_returns(node: Node, clients: list[Any]) -> None:
    op = SioClient()
    clients.append(op)
    await op.connect(node, node.token(Role.OPERATOR, [FORUM]))
    await op.call("join", {"forum_id": FORUM})
    publisher, a = await _publish(node, clients, 320, 240, "A")
    await op.next_push("sources", lambda p: any(x["id"] == a and x["state"] == "live" for x in p["sources"]))
    await op.call("take", {"forum_id": FORUM, "source_id": a})
    viewer = await _watch(node, clients)
    await viewer.wait_size((320, 240), timeout=20)

    publisher.sized.flowing.clear()  # the encoder freezes: no more video
    await op.next_push("sources", lambda p: any(x["id"] == a and x["state"] == "lost" for x in p["sources"]))
    lost_at = time.monotonic()
    pushed = await op.next_push("program", lambda p: p["slate"] is True, timeout=20)
    assert pushed["program"] is None
    # the slate covers the same viewer connection (how soon: the grace, slate_grace_ms)
    await viewer.wait_size(SLATE_SIZE, timeout=20, after=lost_at)

    publisher.sized.flowing.set()
    back_at = time.monotonic()
    await op.next_push("program", lambda p: p["program"] == a, timeout=30)
    await viewer.wait_size((320, 240), timeout=30, after=back_at)


# --- issue 14 item 12: operator details -------------------------------------------------


async def test_ingest_keys_are_hidden_until_asked_for(node: Node, http: aiohttp.ClientSession) -> None:
    """The stream key is a secret: the answer holds it (and the URLs that
    hold it) only with ?reveal=true."""
    op = node.token(Role.OPERATOR)
    base = f"{node.url}/api/forums/{FORUM}/ingest"
    status, hidden = await call(http, "GET", base, op)
    assert status == 200, hidden
    assert hidden["keys_hidden"] is True
    assert (hidden["stream_key"], hidden["rtmp_url"], hidden["srt_url"]) == (None, None, None)
    assert hidden["rtmp_server"].startswith("rtmp://127.0.0.1:") and hidden["source_id"]
    status, shown = await call(http, "GET", f"{base}?reveal=true", op)
    assert status == 200 and shown["keys_hidden"] is False and shown["stream_key"]
    assert shown["stream_key"] not in str(hidden)
    assert shown["rtmp_url"].endswith(shown["stream_key"]) and shown["stream_key"] in shown["srt_url"]
    status, body = await call(http, "GET", f"{base}?reveal=maybe", op)
    assert status == 400 and body["error"]["code"] == "invalid"


async def test_every_program_change_answers_the_program_after_it(node: Node, http: aiohttp.ClientSession,
                                                                 clients: list[Any]) -> None:
    """REST answers and socket.io acks carry the program as it is after the
    change, with `source` repeating the on-air source (docs/protocol.md)."""
    op_token = node.token(Role.OPERATOR, [FORUM], "Ann")
    op = SioClient()
    clients.append(op)
    await op.connect(node, op_token)
    await op.call("join", {"forum_id": FORUM})
    await op.call("cut_to_slate", {"forum_id": FORUM})  # attended: nothing goes on air by itself
    _, a = await _publish(node, clients, 160, 120, "Speaker A")
    await op.next_push("sources", lambda p: any(x["id"] == a and x["state"] == "live" for x in p["sources"]))
    base = f"{node.url}/api/forums/{FORUM}"

    status, body = await call(http, "POST", f"{base}/program", op_token, json={"source": a})
    assert status == 200 and body["program"] == a
    assert body["source"] is not None and (body["source"]["id"], body["source"]["name"]) == (a, "Speaker A")
    for method, path, payload in (("POST", "/preview", {"source": a}), ("POST", "/manual", {"manual": True}),
                                  ("POST", "/manual", {"manual": False})):
        status, body = await call(http, method, base + path, op_token, json=payload)
        assert status == 200 and body["program"] == a and body["source"]["name"] == "Speaker A", (path, body)
    for event, payload in (("take", {"source_id": a}), ("preview", {"source_id": None}),
                           ("set_manual", {"manual": False})):
        ack = await op.call(event, {"forum_id": FORUM, **payload})
        assert ack["program"]["program"] == a and ack["program"]["source"]["name"] == "Speaker A", (event, ack)
    ack = await op.call("cut_to_slate", {"forum_id": FORUM})
    assert ack["program"]["slate"] is True and ack["program"]["source"] is None


async def test_a_source_that_is_not_live_cannot_be_taken(node: Node, http: aiohttp.ClientSession,
                                                         clients: list[Any]) -> None:
    """A venue source still connecting (its listeners run, no encoder yet):
    it may be previewed, but every way of taking it is a 409 that says why,
    and the program does not move."""
    op_token = node.token(Role.OPERATOR)
    base = f"{node.url}/api/forums/{FORUM}"
    status, ingest = await call(http, "GET", f"{base}/ingest", op_token)
    assert status == 200, ingest
    venue = ingest["source_id"]
    status, sources = await call(http, "GET", f"{base}/sources", op_token)
    assert [(s["id"], s["state"]) for s in sources["sources"]] == [(venue, "connecting")]
    status, body = await call(http, "POST", f"{base}/preview", op_token, json={"source": venue})
    assert status == 200 and body["preview"] == venue
    version = body["version"]
    for payload in ({"source": venue}, {"source": None}, {"source": None, "expected_version": version}):
        status, body = await call(http, "POST", f"{base}/program", op_token, json=payload)
        assert status == 409, (payload, status, body)
        assert body["error"]["code"] == "conflict" and "connecting" in body["error"]["message"], body
        assert "live" in body["error"]["message"], body
    op = SioClient()
    clients.append(op)
    await op.connect(node, op_token)
    for payload in ({"source_id": venue}, {}):
        ack = await op.call("take", {"forum_id": FORUM, **payload})
        assert ack["error"]["code"] == "conflict" and "connecting" in ack["error"]["message"], ack
    status, after = await call(http, "GET", f"{base}/sources", op_token)
    assert after["program"]["slate"] is True and after["program"]["version"] == version
    # the other actions on a source in the wrong state: clear errors, never a 500
    status, body = await call(http, "DELETE", f"{base}/playouts/{venue}", op_token)
    assert status == 404 and body["error"]["code"] == "not_found", body
    status, body = await call(http, "POST", f"{base}/playouts/{venue}/restart", op_token)
    assert status == 404 and body["error"]["code"] == "not_found", body
