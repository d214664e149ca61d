"""Sources whose media browsers cannot take as sent, against a real node on
loopback (in-process app, real ffmpeg encoders over RTMP through the key
gate, real aiortc viewers that decode): issue 14 items 4 and 5."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ffmpeg
import pytest
from aiortc.mediastreams import MediaStreamError

from rooms.models import Role
from signaling.app_keys import HOSTS
from streaming.ffmpeg_process import FfmpegProcess
from tests import aiortc_faults
from tests.aiortc_peers import rtp_header
from tests.eventually import eventually
from tests.operator_app import Node, RecordingViewer, SioClient, running_node

pytestmark = pytest.mark.timeout(180)

FORUM = "ai"
SIZE = (640, 360)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node") as running:
        yield running


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for client in reversed(made):
        await client.close()


async def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def x264_encoder(url: str, *, profile: str, bframes: int, audio: bool = True) -> FfmpegProcess:
    """A venue encoder as x264 users set it up: 640x360 at 30 fps, 1 s
    GOP, AAC, over RTMP (veryfast: x264's ultrafast writes main, not high)."""
    streams = [ffmpeg.input(f"testsrc2=s={SIZE[0]}x{SIZE[1]}:r=30", f="lavfi", re=None)]
    if audio:
        streams.append(ffmpeg.input("sine=r=48000", f="lavfi", re=None))
    args = ffmpeg.output(*streams, url, t=90, vcodec="libx264", preset="veryfast", pix_fmt="yuv420p", g=30,
                         bf=bframes, f="flv", **{"profile:v": profile}, **({"acodec": "aac"} if audio else {}),
                         ).get_args()
    return FfmpegProcess(args, name=f"venue-{profile}-bf{bframes}", loglevel="error")


class VideoHeaders:
    """The RTP headers of what the server sends one viewer's video (read
    off the viewer's socket before SRTP: the header is in the clear)."""

    def __init__(self) -> None:
        self.timestamps: list[int] = []
        self.backwards = 0
        self.payload_types: set[int] = set()  # the answer's H.264 (not RTX, not Opus)

    def see(self, data: bytes) -> bool:
        header = rtp_header(data)
        if header is not None and header[0] in self.payload_types:
            ts = header[2]
            if self.timestamps and 0 < ((self.timestamps[-1] - ts) & 0xFFFFFFFF) < 0x80000000:
                self.backwards += 1
            if not self.timestamps or ts != self.timestamps[-1]:
                self.timestamps.append(ts)
        return True

    @property
    def frames(self) -> int:
        return len(set(self.timestamps))


def answer_profiles(answer: str) -> list[str]:
    """The H.264 profile-level-ids an answer names."""
    return re.findall(r"profile-level-id=([0-9a-fA-F]{6})", answer)


async def watch(node: Node, clients: list[Any]) -> tuple[RecordingViewer, VideoHeaders, str]:
    viewer = RecordingViewer()
    client = SioClient()
    clients += [viewer, client]
    await client.connect(node, node.token(Role.VIEWER, [FORUM], "Guest"))
    await client.call("join", {"forum_id": FORUM})
    answer = await client.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()})
    assert "sdp" in answer, answer
    headers = VideoHeaders()
    headers.payload_types = {int(pt) for pt in re.findall(r"a=rtpmap:(\d+) H264/90000", answer["sdp"])}
    assert headers.payload_types
    video = next(t for t in viewer.pc.getTransceivers() if t.kind == "video")
    aiortc_faults.filter_incoming(video.receiver.transport, headers.see)
    await viewer.accept(answer["sdp"])
    return viewer, headers, answer["sdp"]


async def test_a_venue_feed_with_b_frames_plays_at_viewers(node: Node, clients: list[Any]) -> None:
    """x264 -profile:v high -bf 3 over RTMP: transcoded once at ingest;
    the viewer decodes nearly every frame and timestamps never go back
    (copied, they stepped back 36 times in 73 frames and Chromium decoded
    14 of 327 frames)."""
    op = node.token(Role.OPERATOR, [FORUM])
    ingest = await get_json(f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)
    viewer, headers, _ = await watch(node, clients)
    encoder = x264_encoder(ingest["rtmp_url"], profile="high", bframes=3)
    await encoder.start()
    try:
        first = await viewer.wait_size(SIZE, timeout=40)
        mark_sent = headers.frames
        mark_decoded = sum(1 for f in viewer.frames if f.at >= first.at)
        await eventually(lambda: headers.frames - mark_sent >= 90, timeout=40, what="90 more frames sent")
        sent = headers.frames - mark_sent

        def decoded() -> int:
            return sum(1 for f in viewer.frames if f.at >= first.at and (f.width, f.height) == SIZE) - mark_decoded

        await eventually(lambda: decoded() >= 0.8 * sent, timeout=20,
                         what=f"80% of {sent} sent frames decoded (last {decoded()})")
        assert headers.backwards == 0

        venue = node.app[HOSTS].get(FORUM).venue
        assert venue.transcoders_started == 1  # one encode for the feed, whoever watches
        forum = await get_json(f"{node.url}/api/forums/{FORUM}")
        media = next(s for s in forum["sources"] if s["id"] == ingest["source_id"])["media"]
        assert media["handling"] == "transcode" and "B-frames" in media["reason"], media
        assert media["profile"] == "high" and media["b_frames"] is True
        assert media["sent_profile_level_id"].startswith("42")
        listed = await get_json(f"{node.url}/api/forums/{FORUM}/sources", op)
        assert next(s for s in listed["sources"] if s["id"] == ingest["source_id"])["media"] == media
        _, _, answer = await watch(node, clients)
        assert answer_profiles(answer) == [media["sent_profile_level_id"]]
    finally:
        await encoder.stop(grace=2.0)


async def test_a_baseline_venue_feed_is_copied(node: Node, clients: list[Any]) -> None:
    op = node.token(Role.OPERATOR, [FORUM])
    ingest = await get_json(f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)
    operator = SioClient()
    clients.append(operator)
    await operator.connect(node, op)
    await operator.call("join", {"forum_id": FORUM})
    viewer, headers, _ = await watch(node, clients)
    encoder = x264_encoder(ingest["rtmp_url"], profile="baseline", bframes=0)
    await encoder.start()
    try:
        pushed = await operator.next_push(
            "sources", lambda p: any(s["id"] == ingest["source_id"] and s["media"] for s in p["sources"]),
            timeout=40)
        media = next(s for s in pushed["sources"] if s["id"] == ingest["source_id"])["media"]
        assert media["handling"] == "copy" and media["reason"] == "", media
        assert media["sent_profile_level_id"] == media["profile_level_id"]
        assert media["profile_level_id"].startswith("42") and media["b_frames"] is False
        await viewer.wait_size(SIZE, timeout=40)
        venue = node.app[HOSTS].get(FORUM).venue
        assert venue.transcoders_started == 0 and len(venue.processes()) == 2  # the two listeners only
        assert headers.backwards == 0
        # a viewer joining now is told the profile it gets (aiortc alone answers 42e01f)
        _, _, answer = await watch(node, clients)
        assert answer_profiles(answer) == [media["profile_level_id"]]
    finally:
        await encoder.stop(grace=2.0)


# --- item 5: a source without video, or without audio ---------------------------------

SLATE_SIZE = (960, 540)  # forum_host.SLATE_SIZE: the forum's slate picture


class ListeningViewer(RecordingViewer):
    """Also keeps (time, loudest sample) of every decoded audio frame."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: list[tuple[float, int]] = []

    async def _read(self, track: Any, counter: Any) -> None:  # type: ignore[override]
        if track.kind == "video":
            await super()._read(track, counter)
            return
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.audio.append((time.monotonic(), int(abs(frame.to_ndarray()).max())))
                await counter.bump()

    def video_since(self, at: float) -> list[Any]:
        return [f for f in self.frames if f.at >= at]

    def audio_since(self, at: float) -> list[int]:
        return [loudest for when, loudest in self.audio if when >= at]


def whip_encoder(url: str, token: str, *, video: bool, audio: bool) -> FfmpegProcess:
    """ffmpeg's WHIP muxer with only the tracks asked for."""
    streams = []
    if video:
        streams.append(ffmpeg.input("testsrc2=s=320x240:r=30", f="lavfi", re=None))
    if audio:
        streams.append(ffmpeg.input("sine=f=440:r=48000", f="lavfi", re=None))
    options: dict[str, Any] = {"t": 90, "f": "whip", "authorization": token}
    if video:
        options.update(vcodec="libx264", preset="ultrafast", tune="zerolatency", g=30, bf=0,
                       **{"profile:v": "baseline"})
    if audio:
        options.update(acodec="libopus", ac=2)  # the WHIP muxer wants stereo Opus
    return FfmpegProcess(ffmpeg.output(*streams, url, **options).get_args(), name="whip-encoder", loglevel="error")


async def on_air_with(node: Node, clients: list[Any], encoder: FfmpegProcess) -> tuple[ListeningViewer, float, Any]:
    """A viewer watches the forum's slate; `encoder` publishes and goes on
    air by itself. Returns the viewer, when the program changed, and the
    source's record."""
    observer = SioClient()
    clients.append(observer)
    await observer.connect(node, node.token(Role.OPERATOR, [FORUM]))
    await observer.call("join", {"forum_id": FORUM})
    viewer = ListeningViewer()
    client = SioClient()
    clients += [viewer, client]
    await client.connect(node, node.token(Role.VIEWER, [FORUM], "Guest"))
    await client.call("join", {"forum_id": FORUM})
    answer = await client.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()})
    await viewer.accept(answer["sdp"])
    await viewer.wait_size(SLATE_SIZE, timeout=40)  # the slate, before anyone speaks
    await encoder.start()
    program = await observer.next_push("program", lambda p: p["program"] is not None, timeout=40)
    return viewer, time.monotonic(), program["source"]


async def test_an_audio_only_whip_speaker_goes_on_air_with_a_picture(node: Node, clients: list[Any]) -> None:
    """Issue 14 item 5: ffmpeg WHIP with Opus only went on air with no
    video at all, and the watch page never started playing."""
    encoder = whip_encoder(f"{node.url}/whip/{FORUM}", node.token(Role.SPEAKER, [FORUM], "Dr. Audio Only"),
                           video=False, audio=True)
    try:
        viewer, on_air, source = await on_air_with(node, clients, encoder)
        # the picture goes on (the slate's), and the speaker is heard
        await eventually(lambda: len(viewer.video_since(on_air + 1.0)) >= 10, timeout=30,
                         what="picture frames while the audio-only speaker is on air")
        assert {(f.width, f.height) for f in viewer.video_since(on_air)} == {SLATE_SIZE}
        await eventually(lambda: sum(1 for loud in viewer.audio_since(on_air + 1.0) if loud > 1000) >= 25,
                         timeout=30, what="the speaker's tone")
        async def said_no_video() -> bool:
            media = await media_of(node, source["id"])
            return media is not None and media["video_codec"] is None and media["audio"] is True

        await eventually(said_no_video, timeout=20, what="the source's media saying it has no video")
    finally:
        await encoder.stop(grace=1.0)


async def test_a_video_only_whip_publisher_gets_silence(node: Node, clients: list[Any]) -> None:
    encoder = whip_encoder(f"{node.url}/whip/{FORUM}", node.token(Role.SPEAKER, [FORUM], "Silent Camera"),
                           video=True, audio=False)
    try:
        viewer, on_air, _ = await on_air_with(node, clients, encoder)
        await viewer.wait_size((320, 240), timeout=30, after=on_air)
        cut = next(f.at for f in viewer.frames if (f.width, f.height) == (320, 240))
        # audio keeps coming after the cut: the slate's silence
        await eventually(lambda: len(viewer.audio_since(cut + 0.5)) >= 50, timeout=30,
                         what="audio frames while the video-only publisher is on air")
        assert max(viewer.audio_since(cut + 0.5)) < 100  # silence
    finally:
        await encoder.stop(grace=1.0)


async def media_of(node: Node, source_id: str) -> Any:
    """The source's `media` in /api/forums/{id} (None until reported)."""
    forum = await get_json(f"{node.url}/api/forums/{FORUM}")
    return next((s["media"] for s in forum["sources"] if s["id"] == source_id), None)


async def test_a_venue_feed_without_audio_gets_silence(node: Node, clients: list[Any]) -> None:
    """The same kind as item 5 on the venue path: the venue's audio track
    never flows, so the slate's silence stands in for it."""
    op = node.token(Role.OPERATOR, [FORUM])
    ingest = await get_json(f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)
    encoder = x264_encoder(ingest["rtmp_url"], profile="baseline", bframes=0, audio=False)
    try:
        viewer, on_air, _ = await on_air_with(node, clients, encoder)
        await viewer.wait_size(SIZE, timeout=40, after=on_air)
        cut = next(f.at for f in viewer.frames if (f.width, f.height) == SIZE)
        await eventually(lambda: len(viewer.audio_since(cut + 0.5)) >= 50, timeout=30,
                         what="audio frames while the venue feed without audio is on air")
        assert max(viewer.audio_since(cut + 0.5)) < 100

        async def said_no_audio() -> bool:
            media = await media_of(node, ingest["source_id"])
            return media is not None and media["audio"] is False and media["handling"] == "copy"

        await eventually(said_no_audio, timeout=20, what="the venue source's media saying it has no audio")
    finally:
        await encoder.stop(grace=1.0)


async def test_a_venue_feed_without_video_goes_on_air_with_a_picture(node: Node, clients: list[Any]) -> None:
    """An audio-only venue encoder (a radio desk): before, ffmpeg refused
    the leg ("matches no streams") and the feed never went live."""
    op = node.token(Role.OPERATOR, [FORUM])
    ingest = await get_json(f"{node.url}/api/forums/{FORUM}/ingest?reveal=true", op)
    args = ffmpeg.output(ffmpeg.input("sine=f=440:r=48000", f="lavfi", re=None), ingest["rtmp_url"], t=90,
                         acodec="aac", f="flv").get_args()
    encoder = FfmpegProcess(args, name="venue-audio-only", loglevel="error")
    try:
        viewer, on_air, source = await on_air_with(node, clients, encoder)
        assert source["id"] == ingest["source_id"]
        await eventually(lambda: len(viewer.video_since(on_air + 1.0)) >= 10, timeout=30,
                         what="picture frames while the audio-only venue feed is on air")
        assert {(f.width, f.height) for f in viewer.video_since(on_air)} == {SLATE_SIZE}
        await eventually(lambda: sum(1 for loud in viewer.audio_since(on_air + 1.0) if loud > 1000) >= 25,
                         timeout=30, what="the venue's tone")

        async def said_no_video() -> bool:
            media = await media_of(node, ingest["source_id"])
            return media is not None and media["video_codec"] is None and media["audio"] is True

        await eventually(said_no_video, timeout=20, what="the venue source's media saying it has no video")
    finally:
        await encoder.stop(grace=1.0)
