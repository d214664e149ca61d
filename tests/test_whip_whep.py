"""WHIP and WHEP against the real server process: ffmpeg's WHIP muxer
publishes into a forum, a WHEP viewer (an aiortc peer) decodes its video
and audio, every kind of bad request is refused with the documented
status and JSON code while the live stream carries on, and DELETE on the
Location ends the publish."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import imageio_ffmpeg
import pytest
import socketio

from rooms.models import Role
from tests.aiortc_peers import TestPublisher
from tests.eventually import eventually
from tests.server_process import ServerProcess, start_server
from tests.signaling_peers import ViewerPeer, candidate_addresses

pytestmark = pytest.mark.timeout(180)

FORUM = "digital-economy"
SDP = "application/sdp"
LOCATION_RE = re.compile(r"location=(\S+?),")  # ffmpeg -loglevel verbose: "ICE STUN ok, ... location=URL, ..."


class FfmpegWhip:
    """ffmpeg's WHIP muxer publishing a test picture and tone; its stderr is
    drained by one task, which also finds the session Location."""

    def __init__(self, url: str, token: str, seconds: float = 90, as_in_issue_14: bool = False) -> None:
        # as_in_issue_14: the command of issue 14 item 1 (x264's default preset, GOP 30)
        speed = [] if as_in_issue_14 else ["-preset", "ultrafast"]
        self.args = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "verbose",
            "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds),  # a bound, in case the test never stops it
            "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", *speed, "-bf", "0",
            "-g", "30" if as_in_issue_14 else "60",
            "-c:a", "libopus", "-ac", "2",  # the WHIP muxer wants stereo Opus
            "-f", "whip", "-authorization", token, url,
        ]
        self.location: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tail: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tail = (self.tail + [line])[-40:]
            found = LOCATION_RE.search(line)
            if found and not self.location.done():
                self.location.set_result(found.group(1))
        if not self.location.done():
            self.location.set_exception(RuntimeError("ffmpeg ended before ICE:\n" + "\n".join(self.tail)))

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5)
        if not self.location.done():
            self.location.cancel()


class Observer:
    """A socket.io viewer of the forum that collects the server's pushes."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.queues: dict[str, asyncio.Queue[Any]] = {
            e: asyncio.Queue() for e in ("program", "sources", "viewers")}
        for event, queue in self.queues.items():
            self.sio.on(event, self._put(queue))

    @staticmethod
    def _put(queue: asyncio.Queue[Any]) -> Any:
        async def put(data: Any) -> None:
            queue.put_nowait(data)
        return put

    async def join(self, server: ServerProcess, forum: str, role: Role = Role.VIEWER) -> dict[str, Any]:
        token = server.token(role, [forum], "Observer")
        await self.sio.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        ack: dict[str, Any] = await self.sio.call("join", {"forum_id": forum}, timeout=10)
        return ack

    async def next(self, event: str, predicate: Any, timeout: float = 20.0) -> Any:
        async def find() -> Any:
            while True:
                data = await self.queues[event].get()
                if predicate(data):
                    return data
        return await asyncio.wait_for(find(), timeout)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    body = await response.json(content_type=None)
    assert response.status == status, (response.status, body)
    assert response.content_type == "application/json"
    assert body["error"]["code"] == code and body["error"]["message"], body
    return dict(body)


async def chunked(head: str, padding: int) -> AsyncIterator[bytes]:
    """A body sent with Transfer-Encoding: chunked, `padding` bytes past `head`."""
    yield head.encode()
    for _ in range(padding // 1000):
        yield b"a=x-pad:" + b"y" * 990 + b"\r\n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_ffmpeg_publishes_a_whep_viewer_decodes_and_bad_requests_change_nothing(
        server: ServerProcess, http: aiohttp.ClientSession) -> None:
    speaker = server.token(Role.SPEAKER, [FORUM], "OBS in Hall B")
    viewer_token = server.token(Role.VIEWER, [FORUM], "Guest")
    observer = Observer()
    ffmpeg = FfmpegWhip(f"{server.url}/whip/{FORUM}", speaker)
    viewer = ViewerPeer()
    try:
        await observer.join(server, FORUM)
        await ffmpeg.start()
        location = await asyncio.wait_for(asyncio.shield(ffmpeg.location), 30)
        assert re.fullmatch(rf"{re.escape(server.url)}/whip/{FORUM}/[0-9a-f]{{32}}", location), location

        # the encoder's source goes live and (until the switcher) on air
        program = await observer.next("program", lambda p: p["program"] is not None)
        source_id = program["program"]
        assert program["source"]["name"] == "OBS in Hall B" and program["source"]["kind"] == "live"

        # a WHEP viewer gets the program, decodable, with sound
        response = await http.post(f"{server.url}/whep/{FORUM}", data=await viewer.offer(),
                                   headers={**bearer(viewer_token), "Content-Type": SDP})
        answer = await response.text()
        assert response.status == 201, answer
        assert response.content_type == SDP
        whep_location = response.headers["Location"]
        assert re.fullmatch(rf"/whep/{FORUM}/[0-9a-f]{{32}}", whep_location)
        assert set(candidate_addresses(answer)) == {"127.0.0.1"}
        await viewer.accept(answer)
        await viewer.wait_video(15, timeout=30)
        await viewer.wait_audio(15, timeout=30)
        await viewer.wait_frame_size((640, 360), timeout=20)  # ffmpeg's picture, not the slate

        # bad requests: each refused with its status and code
        whip = f"{server.url}/whip/{FORUM}"
        good_headers = {**bearer(speaker), "Content-Type": SDP}
        offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        response = await http.post(whip, data=offer, headers={"Content-Type": SDP})
        await expect_error(response, 401, "token_missing")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        await expect_error(await http.post(whip, data=offer, headers={
            **bearer(server.expired_token(Role.SPEAKER, [FORUM])), "Content-Type": SDP}), 401, "token_expired")
        await expect_error(await http.post(whip, data=offer, headers={
            "Authorization": "Basic dXNlcjpwYXNz", "Content-Type": SDP}), 401, "token_invalid")
        await expect_error(await http.post(whip, data=offer, headers={
            **bearer(viewer_token), "Content-Type": SDP}), 403, "forbidden")
        await expect_error(await http.post(f"{server.url}/whip/no-such-forum", data=offer, headers=good_headers),
                           404, "not_found")
        await expect_error(await http.post(whip, data=offer, headers={**bearer(speaker), "Content-Type": "text/plain"}),
                           415, "unsupported_media_type")
        await expect_error(await http.post(whip, data=offer + "a=x:" + "y" * 70_000 + "\r\n", headers=good_headers),
                           413, "too_large")
        await expect_error(await http.post(whip, data=chunked(offer, 70_000), headers=good_headers),
                           413, "too_large")  # no Content-Length: counted while read
        await expect_error(await http.post(whip, data="this is not sdp", headers=good_headers), 400, "invalid_sdp")
        await expect_error(await http.post(whip, data=offer, headers=good_headers), 400, "invalid_sdp")
        await expect_error(await http.patch(location, data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
                                            headers={**bearer(speaker), "Content-Type": "application/trickle-ice-sdpfrag"}),
                           405, "trickle_unsupported")
        await expect_error(await http.post(f"{server.url}/whep/{FORUM}", data=offer, headers={"Content-Type": SDP}),
                           401, "token_missing")
        await expect_error(await http.post(f"{server.url}/whep/{FORUM}", data=offer,
                                           headers={**bearer(viewer_token), "Content-Type": SDP}), 400, "invalid_sdp")
        await expect_error(await http.delete(f"{whip}/{'0' * 32}", headers=bearer(speaker)), 404, "not_found")
        preflight = await http.options(whip, headers={"Origin": "http://example.test",
                                                      "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in preflight.headers["Access-Control-Expose-Headers"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

        # ... and the live stream never stopped
        before = viewer.video_frames.value
        await viewer.wait_video(before + 30, timeout=20)
        assert ffmpeg.process is not None and ffmpeg.process.returncode is None

        # DELETE on the Location ends the publish: the source goes, the slate is back
        response = await http.delete(location, headers=bearer(speaker))
        assert response.status == 200, await response.text()
        await observer.next("sources", lambda s: all(x["id"] != source_id for x in s["sources"]))
        back = await observer.next("program", lambda p: p["program"] is None)
        assert back["source"] is None
        await expect_error(await http.delete(location, headers=bearer(speaker)), 404, "not_found")

        # the WHEP session ends the same way
        assert (await http.delete(server.url + whep_location)).status == 200
        await expect_error(await http.delete(server.url + whep_location), 404, "not_found")
        assert server.alive()
    finally:
        await viewer.close()
        await ffmpeg.stop()
        await observer.close()


async def test_a_whip_offer_of_h264_high_only_is_answered_and_forwarded(
        server: ServerProcess, http: aiohttp.ClientSession) -> None:
    """Issue 14 item 3: a WHIP offer whose only video codec is H.264
    profile-level-id=64001e (what hardware encoders and `-profile:v high`
    offer) got 400 unsupported_codec. forumcast forwards, never decodes:
    the answer mirrors the offered fmtp and a WHEP viewer gets the video.
    (An aiortc publisher whose offer is edited; it sends constrained
    baseline whatever it claims, which changes nothing for the server.)"""
    forum = "open-source"
    speaker = server.token(Role.SPEAKER, [forum], "High profile encoder")
    publisher = TestPublisher()
    viewer = ViewerPeer()
    try:
        offer = re.sub(r"profile-level-id=[0-9a-f]{6}", "profile-level-id=64001e", await publisher.offer())
        response = await http.post(f"{server.url}/whip/{forum}", data=offer,
                                   headers={**bearer(speaker), "Content-Type": SDP})
        answer = await response.text()
        assert response.status == 201, answer
        assert "profile-level-id=64001e" in answer and "packetization-mode=1" in answer
        await publisher.accept(answer.replace("profile-level-id=64001e", "profile-level-id=42e01f"))
        response = await http.post(f"{server.url}/whep/{forum}", data=await viewer.offer(),
                                   headers={**bearer(server.token(Role.VIEWER, [forum], "Guest")),
                                            "Content-Type": SDP})
        assert response.status == 201, await response.text()
        await viewer.accept(await response.text())
        await viewer.wait_frame_size((320, 240), timeout=30)  # the publisher's picture, not the slate
        location = server.url + response.headers["Location"]
        assert (await http.delete(location)).status == 200
    finally:
        await viewer.close()
        await publisher.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_ffmpeg_whip_stays_live_for_two_minutes(server: ServerProcess) -> None:
    """Issue 14 item 1: ffmpeg's WHIP muxer answers none of the server's
    consent checks and was cut off at ~30 s ("Consent to send expired";
    ffmpeg then failed with "Connection refused"). It now publishes its
    whole 2 minutes and ends by itself (its own DELETE, exit status 0)."""
    forum = "digital-economy"
    observer = Observer()
    ffmpeg = FfmpegWhip(f"{server.url}/whip/{forum}", server.token(Role.SPEAKER, [forum], "ffmpeg 2 min"),
                        seconds=120, as_in_issue_14=True)
    try:
        await observer.join(server, forum)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await ffmpeg.start()
        await asyncio.wait_for(asyncio.shield(ffmpeg.location), 30)
        await observer.next("sources", lambda s: any(
            x["name"] == "ffmpeg 2 min" and x["state"] == "live" for x in s["sources"]), timeout=30)
        assert ffmpeg.process is not None
        code = await asyncio.wait_for(ffmpeg.process.wait(), 240)
        elapsed = loop.time() - started
        assert code == 0, (code, elapsed, "\n".join(ffmpeg.tail))
        assert elapsed >= 115, elapsed  # -re: the whole 120 s were sent
    finally:
        await ffmpeg.stop()
        await observer.close()


async def test_an_encoder_that_goes_silent_is_ended_by_liveness() -> None:
    """The other half of item 1: a publisher that is no longer heard at
    all (frozen or unplugged: SIGSTOP) is ended after
    FORUMCAST_PUBLISHER_TIMEOUT_S, its source removed."""
    node = start_server(extra_env={"FORUMCAST_PUBLISHER_TIMEOUT_S": "3"})
    forum = "digital-economy"
    observer = Observer()
    ffmpeg = FfmpegWhip(f"{node.url}/whip/{forum}", node.token(Role.SPEAKER, [forum], "frozen"), seconds=60)
    try:
        await observer.join(node, forum)
        await ffmpeg.start()
        await asyncio.wait_for(asyncio.shield(ffmpeg.location), 30)
        await observer.next("sources", lambda s: any(x["name"] == "frozen" for x in s["sources"]), timeout=30)
        assert ffmpeg.process is not None
        ffmpeg.process.send_signal(signal.SIGSTOP)
        try:
            await observer.next("sources", lambda s: all(x["name"] != "frozen" for x in s["sources"]), timeout=45)
        finally:
            ffmpeg.process.send_signal(signal.SIGCONT)
    finally:
        await ffmpeg.stop()
        await observer.close()
        node.cleanup()


async def test_offers_are_not_refused_for_candidates_and_ice_failure_is_visible(
        http: aiohttp.ClientSession) -> None:
    """Issue 14 item 6, on a node with FORUMCAST_ICE_ADDRESSES=127.0.0.1:
    a WHIP offer whose host candidate is 127.0.0.2 was 400 invalid_sdp,
    and so was a WHEP offer with only mDNS names; both are answered now.
    A session whose client never completes ICE ends after
    FORUMCAST_ICE_TIMEOUT_S, and its resource says why (410 ice_failed);
    a socket.io viewer gets a media_ended event with the code."""
    node = start_server(extra_env={"FORUMCAST_ICE_TIMEOUT_S": "3"})
    forum = "open-source"
    publisher = TestPublisher()
    never = ViewerPeer()
    sio_viewer = ViewerPeer()
    observer = Observer()
    ended: asyncio.Queue[Any] = asyncio.Queue()
    observer.sio.on("media_ended", ended.put)
    speaker_socket = Observer()
    sio_publisher = TestPublisher()
    speaker_ended: asyncio.Queue[Any] = asyncio.Queue()
    speaker_socket.sio.on("media_ended", speaker_ended.put)
    try:
        speaker = node.token(Role.SPEAKER, [forum], "on 127.0.0.2")
        offer = await publisher.offer(addresses=("127.0.0.2",))
        response = await http.post(f"{node.url}/whip/{forum}", data=offer,
                                   headers={**bearer(speaker), "Content-Type": SDP})
        assert response.status == 201, await response.text()
        await publisher.accept(await response.text())
        await asyncio.wait_for(publisher.connected.wait(), 30)

        offer = re.sub(r"(a=candidate:\S+ \d+ udp \d+ )127\.0\.0\.1( \d+ typ host)",
                       r"\g<1>0e5a2d4c-2f1b-4bb7-9a43-6d7b9d1c0f11.local\g<2>", await never.offer())
        assert ".local" in offer and "127.0.0.1 " not in offer.split("a=candidate", 1)[1]
        viewer_token = node.token(Role.VIEWER, [forum], "Never connects")
        response = await http.post(f"{node.url}/whep/{forum}", data=offer,
                                   headers={**bearer(viewer_token), "Content-Type": SDP})
        assert response.status == 201, await response.text()
        location = node.url + response.headers["Location"]
        assert (await http.get(location)).status == 200  # the answer is never applied: no ICE

        async def gone() -> bool:
            return (await http.get(location)).status == 410
        await eventually(gone, timeout=30, what="the WHEP session ended by ICE failure")
        body = await expect_error(await http.get(location), 410, "ice_failed")
        assert "ICE" in body["error"]["message"]
        await expect_error(await http.patch(location, data="x", headers={"Content-Type": "application/trickle-ice-sdpfrag"}),
                           410, "ice_failed")
        await expect_error(await http.delete(location), 410, "ice_failed")

        await observer.join(node, forum)
        ack = await observer.sio.call("watch", {"forum_id": forum, "sdp": await sio_viewer.offer()}, timeout=10)
        assert "viewer_id" in ack, ack
        event = await asyncio.wait_for(ended.get(), 30)
        assert event["viewer_id"] == ack["viewer_id"] and event["error"]["code"] == "ice_failed", event

        await speaker_socket.join(node, forum, Role.SPEAKER)
        ack = await speaker_socket.sio.call("publish", {"forum_id": forum, "sdp": await sio_publisher.offer()},
                                            timeout=10)
        assert "source_id" in ack, ack
        event = await asyncio.wait_for(speaker_ended.get(), 30)
        assert event["source_id"] == ack["source_id"] and event["error"]["code"] == "ice_failed", event
        assert node.alive()
    finally:
        await publisher.close()
        await never.close()
        await sio_viewer.close()
        await sio_publisher.close()
        await observer.close()
        await speaker_socket.close()
        node.cleanup()


async def test_a_whep_player_that_vanishes_gives_its_seat_back(
        server: ServerProcess, http: aiohttp.ClientSession) -> None:
    """No DELETE: the player's peer closes (DTLS close_notify, as a tab
    closing or a crashed player's consent failure ends in), and the seat
    it held is free again."""
    forum = "open-source"
    observer = Observer()
    viewer = ViewerPeer()
    try:
        joined = await observer.join(server, forum, Role.OPERATOR)  # operators take no seat
        assert joined["viewers"]["viewers"] == 0
        token = server.token(Role.VIEWER, [forum], "Vanishing player")
        response = await http.post(f"{server.url}/whep/{forum}", data=await viewer.offer(),
                                   headers={**bearer(token), "Content-Type": SDP})
        assert response.status == 201, await response.text()
        await viewer.accept(await response.text())
        await observer.next("viewers", lambda v: v["viewers"] == 1)
        await viewer.wait_video(1)  # it plays (the forum's slate) ...
        await viewer.close()  # ... and goes away without a DELETE
        await observer.next("viewers", lambda v: v["viewers"] == 0, timeout=15)
        # the session resource says why it ended
        await expect_error(await http.delete(server.url + response.headers["Location"]), 410, "connection_lost")
    finally:
        await viewer.close()
        await observer.close()


async def test_whep_in_a_public_event_needs_no_token(http: aiohttp.ClientSession) -> None:
    public = start_server(extra_env={"FORUMCAST_PUBLIC_EVENT": "true"})
    viewer = ViewerPeer()
    try:
        offer = await viewer.offer()
        response = await http.post(f"{public.url}/whep/{FORUM}", data=offer, headers={"Content-Type": SDP})
        assert response.status == 201, await response.text()
        assert response.headers["Location"].startswith(f"/whep/{FORUM}/")
        # a token that is sent must still be valid
        await expect_error(await http.post(f"{public.url}/whep/{FORUM}", data=offer,
                                           headers={"Authorization": "Bearer nope", "Content-Type": SDP}),
                           401, "token_invalid")
        # publishing still needs a speaker
        await expect_error(await http.post(f"{public.url}/whip/{FORUM}", data="v=0\r\nm=video 9 x 96\r\n",
                                           headers={"Content-Type": SDP}), 401, "token_missing")
    finally:
        await viewer.close()
        public.cleanup()
