"""RtpUdpIngest receives real ffmpeg RTP (H.264 + Opus) on loopback."""

from __future__ import annotations

import asyncio
import socket

import ffmpeg
import pytest
from aiortc.rtp import RtpPacket

from streaming.ffmpeg_process import FfmpegProcess
from streaming.rtp_udp_ingest import (
    OPUS_PAYLOAD_TYPE, RtpContinuity, RtpUdpIngest, h264_nal_types, rtp_output_options,
)

pytestmark = pytest.mark.timeout(60)


class CollectingSink:
    def __init__(self, until: int = 0) -> None:
        self.packets: list[RtpPacket] = []
        self.until = until
        self.enough = asyncio.Event()

    def push(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        if self.until and len(self.packets) >= self.until:
            self.enough.set()


def _sender_args(video_port: int, audio_port: int) -> list[str]:
    source = ffmpeg.input("testsrc=s=160x120:r=15", f="lavfi", re=None, t=20)
    tone = ffmpeg.input("sine=r=48000", f="lavfi", re=None, t=20)
    video_url, video_opts = rtp_output_options("video", video_port)
    audio_url, audio_opts = rtp_output_options("audio", audio_port)
    video = source.video.output(
        video_url, vcodec="libx264", preset="ultrafast", profile="baseline", pix_fmt="yuv420p",
        g=15, bf=0, **video_opts,
    )
    audio = tone.audio.output(audio_url, acodec="libopus", ar=48000, ac=2, **audio_opts)
    return ffmpeg.merge_outputs(video, audio).get_args()


async def test_receives_h264_and_opus_from_ffmpeg_with_keyframes() -> None:
    video_sink, audio_sink = CollectingSink(until=60), CollectingSink(until=50)
    video = RtpUdpIngest(video_sink, kind="video", name="v")
    audio = RtpUdpIngest(audio_sink, kind="audio", name="a")
    await video.start()
    await audio.start()
    sender = FfmpegProcess(_sender_args(video.port, audio.port), name="sender")
    await sender.start()
    try:
        await asyncio.wait_for(asyncio.gather(video_sink.enough.wait(), audio_sink.enough.wait()), 20)
    finally:
        await sender.stop(grace=1.0)
        await video.stop()
        await audio.stop()
    assert video.state == audio.state == "stopped"
    nal_types = [t for p in video_sink.packets for t in h264_nal_types(p.payload)]
    assert 5 in nal_types and 7 in nal_types and 8 in nal_types  # IDR with SPS/PPS
    first_idr = nal_types.index(5)
    assert nal_types.index(7) < first_idr and nal_types.index(8) < first_idr
    assert any(p.marker for p in video_sink.packets)  # frame ends are marked
    assert {p.payload_type for p in video_sink.packets} == {video.codec.payloadType}
    assert all(len(p.serialize()) <= 1200 for p in video_sink.packets)
    assert {p.payload_type for p in audio_sink.packets} == {OPUS_PAYLOAD_TYPE}
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(audio_sink.packets, audio_sink.packets[1:])}
    assert steps == {960}  # 20 ms Opus frames on the 48 kHz clock
    assert video.malformed == 0 and video.rtcp == 0


async def test_malformed_datagrams_are_counted_and_dropped() -> None:
    sink = CollectingSink()
    arrived = asyncio.Event()
    ingest = RtpUdpIngest(sink, kind="audio", name="junk", on_packet=lambda packet: arrived.set())
    await ingest.start()
    good = RtpPacket(payload_type=OPUS_PAYLOAD_TYPE, sequence_number=1, timestamp=960, ssrc=7, payload=b"\xf8")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00", b"\x00" * 20, b"\x80\x60"):
            sock.sendto(junk, ("127.0.0.1", ingest.port))
        sock.sendto(good.serialize(), ("127.0.0.1", ingest.port))
        await asyncio.wait_for(arrived.wait(), 20)
    await ingest.stop()
    await ingest.stop()
    assert ingest.malformed >= 3 and ingest.received == 1
    assert sink.packets[0].ssrc == 7 and sink.packets[0].payload == b"\xf8"


def test_continuity_makes_one_stream_out_of_a_restarted_sender() -> None:
    continuity = RtpContinuity(clock_rate=48000, ssrc=1234)
    out = []
    for i in range(3):
        out.append(continuity.rewrite(RtpPacket(sequence_number=100 + i, timestamp=5000 + 960 * i, ssrc=1), now=10.0 + 0.02 * i))
    # the sender restarts 1 s later with a new SSRC, sequence and timestamp base
    for i in range(2):
        out.append(continuity.rewrite(RtpPacket(sequence_number=60000 + i, timestamp=9 + 960 * i, ssrc=2), now=11.04 + 0.02 * i))
    assert {p.ssrc for p in out} == {1234}
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(out, out[1:])]
    assert steps == [960, 960, 48000, 960]  # the 1 s gap is kept, on the media clock


def test_nal_types_of_stap_a_and_fu_a() -> None:
    stap = bytes([24]) + (3).to_bytes(2, "big") + bytes([0x67, 1, 2]) + (2).to_bytes(2, "big") + bytes([0x68, 3])
    assert h264_nal_types(stap) == [7, 8]
    assert h264_nal_types(bytes([0x7C, 0x85, 0])) == [5]  # FU-A start of an IDR
    assert h264_nal_types(bytes([0x7C, 0x05, 0])) == []  # a middle fragment
    assert h264_nal_types(b"") == []
