"""Slate: encoded once, looped in real time, continuous, IDR at each loop."""

from __future__ import annotations

import asyncio
import time

import av
import pytest
from aiortc.rtp import RtpPacket

from streaming.playout import AUDIO_CLOCK, VIDEO_CLOCK
from streaming.rtp_udp_ingest import h264_nal_types
from streaming.slate import _CJK_FONT, Slate, SlateLoop, drawable_title, encode_slate
from tests.eventually import eventually
from tests.machine_time import RunQueueWait

pytestmark = pytest.mark.timeout(60)


class Sink:
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.arrivals: list[float] = []

    def push(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        self.arrivals.append(time.monotonic())


def _decode_first_picture(loop: SlateLoop) -> av.VideoFrame:
    """Depacketize and decode the loop's first frame (tests only)."""
    from aiortc.codecs.h264 import h264_depayload

    first = next(u for u in loop.units if u.kind == "video")
    annexb = b""
    fragment = b""
    for payload in first.payloads:
        if payload[0] & 0x1F == 28:  # FU-A: rebuild the NAL
            if payload[1] & 0x80:
                fragment = bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
            fragment += payload[2:]
            if payload[1] & 0x40:
                annexb += b"\x00\x00\x00\x01" + fragment
        else:
            annexb += h264_depayload(payload)
    codec = av.CodecContext.create("h264", "r")
    frames = codec.decode(av.Packet(annexb)) + codec.decode(None)
    return frames[0]


async def test_slate_loops_with_continuous_timestamps_and_an_idr_per_loop() -> None:
    loop = await encode_slate("Forum 7: Ocean Policy", width=640, height=360, fps=15, seconds=2.0)
    assert sum(u.kind == "video" for u in loop.units) == 30
    assert sum(u.kind == "audio" for u in loop.units) == 100  # 2 s of 20 ms Opus

    picture = _decode_first_picture(loop).to_ndarray(format="gray")
    assert picture.shape == (360, 640)
    assert picture.max() > 200 and picture.min() < 80  # white title drawn on the dark background

    video, audio = Sink(), Sink()
    three = asyncio.Event()
    starts: list[int] = []

    def on_loop(n: int) -> None:
        starts.append(n)
        if n == 3:
            three.set()

    slate = Slate("Forum 7: Ocean Policy", video, audio, loop=loop, on_loop=on_loop)
    slate.request_keyframe()  # a no-op: each loop starts with an IDR
    waited = RunQueueWait()
    before = time.monotonic()
    await slate.start()
    await asyncio.wait_for(three.wait(), 60)  # loops 0, 1, 2 played out; 3 begins
    first_ts = video.packets[0].timestamp

    def loop_three_began() -> bool:  # its first frame (an IDR at 6 s of media) went out
        return any((p.timestamp - first_ts) & 0xFFFFFFFF == 6 * VIDEO_CLOCK and 7 in h264_nal_types(p.payload)
                   for p in video.packets)

    await eventually(loop_three_began, timeout=30, what="loop 3's first frame")
    await asyncio.gather(slate.stop(), slate.stop())
    assert slate.state == "stopped" and starts == [0, 1, 2, 3]

    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(video.packets, video.packets[1:])]
    assert set(steps) <= {0, VIDEO_CLOCK // 15}  # one frame's packets share a timestamp; never a jump
    seqs = [p.sequence_number for p in video.packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    first = video.packets[0].timestamp
    idr_times = sorted({(p.timestamp - first) & 0xFFFFFFFF for p in video.packets if 7 in h264_nal_types(p.payload)})
    assert idr_times == [0, 2 * VIDEO_CLOCK, 4 * VIDEO_CLOCK, 6 * VIDEO_CLOCK]  # an IDR at each loop start
    audio_steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(audio.packets, audio.packets[1:])}
    assert audio_steps == {AUDIO_CLOCK // 50}
    # real time: never ahead of the wall clock, behind it only by what the machine withheld
    media = [((p.timestamp - first) & 0xFFFFFFFF) / VIDEO_CLOCK for p in video.packets]
    assert max(m - (t - before) for m, t in zip(media, video.arrivals)) <= 0.001
    lag = max((t - video.arrivals[0]) - m for m, t in zip(media, video.arrivals))
    assert lag <= 0.1 + waited.seconds(), (lag, waited.seconds())


async def test_one_encoded_loop_feeds_several_slates() -> None:
    loop = await encode_slate("Main Hall", width=320, height=180, fps=10, seconds=1.0)
    sinks = [Sink(), Sink()]
    slates = [Slate("Main Hall", sink, None, loop=loop, source_id=f"slate-{i}") for i, sink in enumerate(sinks)]
    for slate in slates:
        await slate.start()
    await eventually(lambda: all(len(sink.packets) >= 3 for sink in sinks), timeout=30, what="3 packets each")
    for slate in slates:
        await slate.stop()
    assert sinks[0].packets[0].ssrc != sinks[1].packets[0].ssrc  # separate streams from shared payloads


def test_lines_the_font_cannot_draw_stay_off_air() -> None:
    """Without a CJK font a Chinese line would go on air as empty boxes."""
    title = "Open Source Ecology Forum\n开源生态论坛"
    assert drawable_title(title, "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") == "Open Source Ecology Forum"
    assert drawable_title(title, _CJK_FONT) == title
    assert drawable_title("开源生态论坛", None) == "开源生态论坛"  # nothing else to show: keep it
