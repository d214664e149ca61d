"""VenueIngest: a real ffmpeg publishes RTMP and SRT on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import ffmpeg
import pytest
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from rooms.models import SourceState
from streaming.ffmpeg_process import FfmpegProcess
from streaming.h264_sps import parse_sps, sps_from_rtp
from streaming.rtmp_gate import RtmpCommandReader, RtmpKeyGate, _amf0_values
from streaming.rtp_udp_ingest import OPUS_PAYLOAD_TYPE, h264_nal_types
from streaming.venue_ingest import VenueIngest
from tests.eventually import eventually
from tests.processes import free_port

pytestmark = pytest.mark.timeout(90)
KEY = "forum7-Key_0123456789"


class Sink:
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.keyframe = asyncio.Event()

    def push(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        if 7 in h264_nal_types(packet.payload):
            self.keyframe.set()


class Venue:
    def __init__(self) -> None:
        self.video, self.audio = Sink(), Sink()
        self.states: list[SourceState] = []
        self.changed = asyncio.Event()
        self.ingest = VenueIngest(
            "forum7", free_port(), free_port(socket.SOCK_DGRAM), KEY, self.video, self.audio,
            on_state=self.on_state,
        )

    def on_state(self, state: SourceState) -> None:
        self.states.append(state)
        self.changed.set()

    async def reach(self, state: SourceState, timeout: float = 20) -> None:
        async def wait() -> None:
            while self.ingest.state != state.value:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def venue() -> Venue:
    venue = Venue()
    await venue.ingest.start()
    yield venue
    pids = [p.pid for p in venue.ingest.processes()]
    await venue.ingest.stop()
    assert venue.ingest.state == "ended"
    for pid in pids:  # every ffmpeg child reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def publisher(url: str, container: str, *, audio: bool = True) -> FfmpegProcess:
    """A venue encoder: H.264 baseline 2 s GOP + AAC, in real time."""
    streams = [ffmpeg.input("testsrc=s=320x240:r=15", f="lavfi", re=None)]
    if audio:
        streams.append(ffmpeg.input("sine=r=44100", f="lavfi", re=None))
    args = ffmpeg.output(
        *streams, url, t=60, vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p",
        g=30, bf=0, f=container, **{"profile:v": "baseline"}, **({"acodec": "aac"} if audio else {}),
    ).get_args()
    return FfmpegProcess(args, name=f"publisher-{container}", loglevel="error")


async def test_rtmp_publish_reconnect_and_state_changes(venue: Venue) -> None:
    urls = venue.ingest.urls("127.0.0.1")
    assert urls["rtmp_url"] == f"rtmp://127.0.0.1:{venue.ingest.rtmp_port}/live/{KEY}"
    assert urls["srt_url"].startswith(f"srt://127.0.0.1:{venue.ingest.srt_port}?") and KEY in urls["srt_url"]

    first = publisher(urls["rtmp_url"], "flv")
    await first.start()
    await venue.reach(SourceState.LIVE)
    await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    assert venue.ingest.protocol == "rtmp"
    await first.stop(grace=2.0)  # the encoder goes away
    await venue.reach(SourceState.LOST)
    count = len(venue.video.packets)

    venue.video.keyframe.clear()
    second = publisher(urls["rtmp_url"], "flv")
    await second.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    finally:
        await second.stop(grace=2.0)
    assert venue.states[:3] == [SourceState.LIVE, SourceState.LOST, SourceState.LIVE]
    assert len(venue.video.packets) > count and len(venue.audio.packets) > 20

    # one continuous stream for viewers, across the reconnect
    video = venue.video.packets
    assert len({p.ssrc for p in video}) == 1
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(video, video[1:]))
    # the copied H.264 carries SPS/PPS before each IDR (FLV keeps them only in its header)
    types = [t for p in video[count:] for t in h264_nal_types(p.payload)]
    assert types.index(7) < types.index(5) and 8 in types
    assert {p.payload_type for p in venue.audio.packets} == {OPUS_PAYLOAD_TYPE}
    assert venue.ingest.gate.accepted == 2 and venue.ingest.gate.refused == 0
    assert venue.ingest.profile_level_id is not None and venue.ingest.profile_level_id.startswith("42")


async def test_wrong_rtmp_key_is_refused_then_the_right_one_plays(venue: Venue) -> None:
    port = venue.ingest.rtmp_port
    intruder = publisher(f"rtmp://127.0.0.1:{port}/live/not-the-key-123", "flv")
    await intruder.start()
    code = await asyncio.wait_for(intruder.wait(), 20)
    assert code != 0  # the intruder was disconnected
    assert venue.ingest.gate.refused == 1 and venue.ingest.gate.accepted == 0
    assert venue.video.packets == [] and venue.ingest.state == "connecting"

    good = publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], "flv", audio=False)  # video only is fine
    await good.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
        assert venue.audio.packets == []
        # a second encoder with the right key cannot take over a live feed
        second = publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], "flv")
        await second.start()
        assert await asyncio.wait_for(second.wait(), 20) != 0
        assert venue.ingest.gate.refused == 2 and venue.ingest.state == "live"
    finally:
        await good.stop(grace=2.0)
    assert venue.states[0] == SourceState.LIVE and venue.ingest.gate.accepted == 1


async def test_srt_passphrase_and_a_killed_encoder_that_comes_back(venue: Venue) -> None:
    port = venue.ingest.srt_port
    intruder = publisher(f"srt://127.0.0.1:{port}?passphrase=wrong-passphrase&pbkeylen=16", "mpegts")
    await intruder.start()
    assert await asyncio.wait_for(intruder.wait(), 20) != 0
    assert any("passphrase" in line.lower() or "reject" in line.lower() for line in intruder.stderr_tail)
    assert venue.video.packets == [] and venue.ingest.state == "connecting"

    url = venue.ingest.urls("127.0.0.1")["srt_url"]
    crashing = publisher(url, "mpegts")
    await crashing.start()
    await venue.reach(SourceState.LIVE)
    await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    assert venue.ingest.protocol == "srt"
    assert crashing.pid is not None
    os.kill(crashing.pid, signal.SIGKILL)  # no goodbye: SRT only notices the silence
    await crashing.wait()
    await venue.reach(SourceState.LOST)
    count = len(venue.video.packets)

    venue.video.keyframe.clear()
    back = publisher(url, "mpegts")
    await back.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    finally:
        await back.stop(grace=2.0)
    await venue.reach(SourceState.LOST)
    assert venue.states == [SourceState.LIVE, SourceState.LOST, SourceState.LIVE, SourceState.LOST]
    assert len(venue.video.packets) > count and len(venue.audio.packets) > 10
    video = venue.video.packets
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(video, video[1:]))


async def test_the_key_gate_listens_on_the_configured_host() -> None:
    """ingest_host decides where venue encoders may connect (127.0.0.2 is
    still loopback, so the test stays on this machine)."""
    port = free_port()
    gate = RtmpKeyGate(port, "k" * 16, lambda: free_port(), host="127.0.0.2")
    await gate.start()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.2", port), 5)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    finally:
        await gate.stop()


def test_stream_keys_must_make_a_passphrase() -> None:
    with pytest.raises(RoomError) as refused:
        VenueIngest("f", 1, 2, "short", Sink(), Sink())
    assert refused.value.code == "invalid"


def test_command_reader_finds_the_stream_name_across_chunks() -> None:
    def amf_string(text: str) -> bytes:
        return b"\x02" + len(text).to_bytes(2, "big") + text.encode()

    body = amf_string("publish") + b"\x00" + (5.0).hex().encode()[:0] + bytes(8) + b"\x05" + amf_string("k" * 200) + amf_string("live")
    # one message over two 128-byte chunks on chunk stream 8: fmt 0 then fmt 3
    header = bytes([0x08]) + (0).to_bytes(3, "big") + len(body).to_bytes(3, "big") + bytes([20]) + (1).to_bytes(4, "little")
    stream = bytes([3]) + bytes(1536) + bytes(1536) + header + body[:128] + bytes([0xC8]) + body[128:]
    reader = RtmpCommandReader()
    found = []
    for i in range(0, len(stream), 100):  # arriving in pieces
        found += reader.feed(stream[i:i + 100])
    assert found == [("publish", [0.0, None, "k" * 200, "live"])]
    assert _amf0_values(b"\x03\x00\x03app" + amf_string("live") + b"\x00\x00\x09") == [{"app": "live"}]


def x264_publisher(url: str, *, profile: str, bframes: int, seconds: int = 30) -> FfmpegProcess:
    """A venue encoder as x264 users configure it: `profile`, `bframes`,
    30 fps, 1 s GOP, AAC (preset veryfast: with ultrafast x264 drops
    8x8 transforms and writes main instead of high)."""
    video = ffmpeg.input("testsrc2=s=640x360:r=30", f="lavfi", re=None)
    audio = ffmpeg.input("sine=r=48000", f="lavfi", re=None)
    args = ffmpeg.output(
        video, audio, url, t=seconds, vcodec="libx264", preset="veryfast", pix_fmt="yuv420p", g=30,
        bf=bframes, acodec="aac", f="flv", **{"profile:v": profile},
    ).get_args()
    return FfmpegProcess(args, name=f"x264-{profile}-bf{bframes}", loglevel="error")


def backwards_steps(packets: list[RtpPacket]) -> int:
    """How often a packet's RTP timestamp is older than the one before."""
    return sum(1 for a, b in zip(packets, packets[1:])
               if 0 < ((a.timestamp - b.timestamp) & 0xFFFFFFFF) < 0x80000000)


async def test_a_high_profile_feed_with_b_frames_is_transcoded_once_at_ingest(venue: Venue) -> None:
    """Issue 14 item 4: x264 -profile:v high -bf 3 used to be copied, with
    RTP timestamps stepping backwards at every B-frame."""
    encoder = x264_publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], profile="high", bframes=3)
    await encoder.start()
    try:
        await venue.reach(SourceState.LIVE)
        await eventually(lambda: len({p.timestamp for p in venue.video.packets}) >= 60, timeout=30,
                         what="60 frames of the encoded feed")
        media = venue.ingest.media
        assert media is not None and media.handling == "transcode", media
        assert "B-frames" in media.reason and media.profile == "high" and media.b_frames is True
        assert (media.width, media.height, media.frame_rate) == (640, 360, 30.0)
        assert venue.ingest.transcoders_started == 1
        assert len(venue.ingest.processes()) == 3  # two listeners and the one encode
        encoded = list(venue.video.packets)
        assert backwards_steps(encoded) == 0
        types = [t for p in encoded for t in h264_nal_types(p.payload)]
        assert types[0] == 7  # viewers start at the encode's SPS
        sps = parse_sps(next(sps_from_rtp(p.payload) for p in encoded if sps_from_rtp(p.payload)))
        assert sps.profile_idc == 66 and sps.reorder_frames == 0
        assert venue.ingest.media.sent_profile_level_id == sps.profile_level_id

        # the encode dies: the copy goes on (flagged) rather than no picture at all
        transcoder = venue.ingest.legs["rtmp"].transcoder
        assert transcoder is not None and transcoder.process is not None and transcoder.process.pid is not None
        os.kill(transcoder.process.pid, signal.SIGKILL)
        await eventually(lambda: venue.ingest.media is not None and venue.ingest.media.handling == "flagged",
                         timeout=20, what="the source flagged after its encode died")
        assert "the ingest encode failed" in venue.ingest.media.reason
        count = len(venue.video.packets)
        await eventually(lambda: len(venue.video.packets) > count + 30, timeout=20, what="the copy forwarded")
        assert len(venue.ingest.processes()) == 2
    finally:
        await encoder.stop(grace=2.0)


async def test_a_baseline_feed_is_copied_without_an_encoder(venue: Venue) -> None:
    encoder = x264_publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], profile="baseline", bframes=0)
    await encoder.start()
    try:
        await venue.reach(SourceState.LIVE)
        await eventually(lambda: len({p.timestamp for p in venue.video.packets}) >= 30, timeout=30,
                         what="30 frames of the copied feed")
        media = venue.ingest.media
        assert media is not None and media.handling == "copy" and media.reason == "", media
        assert media.profile == "constrained baseline" and media.b_frames is False
        assert media.sent_profile_level_id == media.profile_level_id == venue.ingest.profile_level_id
        assert venue.ingest.transcoders_started == 0 and len(venue.ingest.processes()) == 2
    finally:
        await encoder.stop(grace=2.0)
    assert backwards_steps(venue.video.packets) == 0
