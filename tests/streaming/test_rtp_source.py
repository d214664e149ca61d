"""RtpSource: keyframe detection, history, coalesced keyframe requests."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from streaming.rtp_codecs import h264_has_keyframe, vp8_has_keyframe
from streaming.rtp_source import ForwardPacket, RtpSource

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)

SPS = bytes([0x67, 0x42, 0xE0, 0x1F])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84])
P_SLICE = bytes([0x41, 0x9A, 0x02])
AUD = bytes([0x09, 0xF0])


def stap_a(*nals: bytes) -> bytes:
    out = bytes([0x78])  # F=0 NRI=3 type 24
    for nal in nals:
        out += len(nal).to_bytes(2, "big") + nal
    return out


def fu_a(nal_type: int, start: bool) -> bytes:
    return bytes([0x7C, (0x80 if start else 0) | nal_type, 0x00])


def packet(seq: int, ts: int, payload: bytes, marker: int = 0) -> RtpPacket:
    return RtpPacket(payload_type=102, marker=marker, sequence_number=seq, timestamp=ts, ssrc=7, payload=payload)


def test_h264_keyframes_are_recognised_in_every_packetization() -> None:
    assert h264_has_keyframe(IDR)
    assert h264_has_keyframe(SPS)
    assert h264_has_keyframe(stap_a(SPS, PPS))
    assert h264_has_keyframe(stap_a(AUD, SPS, PPS))
    assert h264_has_keyframe(fu_a(5, start=True))
    assert not h264_has_keyframe(fu_a(5, start=False))
    assert not h264_has_keyframe(fu_a(1, start=True))
    assert not h264_has_keyframe(P_SLICE)
    assert not h264_has_keyframe(stap_a(AUD, P_SLICE))
    assert not h264_has_keyframe(b"")


def test_vp8_keyframes_are_recognised() -> None:
    # S=1, PID=0, no extension; VP8 header P bit 0 = key frame
    assert vp8_has_keyframe(bytes([0x10, 0x00, 0x00, 0x00]))
    assert not vp8_has_keyframe(bytes([0x10, 0x01, 0x00, 0x00]))  # inter frame
    assert not vp8_has_keyframe(bytes([0x00, 0x00, 0x00, 0x00]))  # not a partition start
    # X=1 with a 15-bit picture id (I=1, M=1): descriptor is 4 bytes
    assert vp8_has_keyframe(bytes([0x90, 0x80, 0x80, 0x01, 0x00]))
    assert not vp8_has_keyframe(bytes([0x90, 0x80, 0x80, 0x01, 0x01]))


def collect(source: RtpSource) -> list[ForwardPacket]:
    seen: list[ForwardPacket] = []
    source.add_sink(seen.append)
    return seen


async def test_packets_reach_sinks_with_keyframe_marks_and_history() -> None:
    source = RtpSource("video", H264)
    seen = collect(source)
    source.push(packet(100, 3000, stap_a(SPS, PPS)))
    source.push(packet(101, 3000, fu_a(5, True)))
    source.push(packet(102, 3000, fu_a(5, False), marker=1))
    source.push(packet(103, 6000, P_SLICE, marker=1))
    source.push(packet(103, 6000, P_SLICE, marker=1))  # duplicate: ignored
    assert [p.seq for p in seen] == [100, 101, 102, 103]
    assert [p.key for p in seen] == [True, False, False, False]
    assert seen[2].marker == 0x80 and seen[0].marker == 0
    assert source.lookup(101) is seen[1]
    assert source.lookup(99) is None
    source.push(packet(99, 0, P_SLICE))  # a late retransmission
    assert seen[-1].late and seen[-1].seq == 99


async def test_a_keyframe_after_an_access_unit_delimiter_carries_the_frame_head() -> None:
    # ffmpeg's WHIP muxer sends each NAL alone: AUD, SPS, PPS, IDR
    source = RtpSource("video", H264)
    seen = collect(source)
    source.push(packet(10, 9000, AUD))
    source.push(packet(11, 9000, SPS))
    source.push(packet(12, 9000, PPS))
    source.push(packet(13, 9000, IDR, marker=1))
    key = [p for p in seen if p.key]
    assert [p.seq for p in key] == [11]
    assert [h.seq for h in key[0].head] == [10]


async def test_history_is_bounded() -> None:
    source = RtpSource("audio", OPUS, history_packets=16)
    for seq in range(40):
        source.push(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, payload=b"x"))
    assert source.lookup(39) is not None
    assert source.lookup(40 - 17) is None
    assert source.packets_received == 40


async def test_keyframe_requests_are_coalesced_per_interval() -> None:
    interval = 0.2
    source = RtpSource("video", H264, keyframe_request_interval=interval)
    sent: list[float] = []
    fired = asyncio.Event()

    def request() -> None:
        sent.append(time.monotonic())
        fired.set()

    source.set_keyframe_requester(request)
    for _ in range(1000):  # a thousand viewers join at once
        source.request_keyframe()
    assert len(sent) == 1
    fired.clear()
    await asyncio.wait_for(fired.wait(), 20)  # the deferred one (a deadline, not a latency bound)
    assert len(sent) == 2
    assert sent[1] - sent[0] >= interval * 0.9
    # a keyframe arriving before the deferred request makes it unnecessary
    source.request_keyframe()
    source.push(packet(1, 1000, IDR, marker=1))
    fired.clear()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fired.wait(), interval * 2)
    assert len(sent) == 2
    assert source.keyframe_requests_sent == 2
    source.close()


async def test_audio_sources_never_ask_for_keyframes() -> None:
    source = RtpSource("audio", OPUS)
    calls: list[int] = []
    source.set_keyframe_requester(lambda: calls.append(1))
    source.request_keyframe()
    assert calls == []


def test_the_upstream_clock_maps_timestamps_to_wall_time_across_a_wrap() -> None:
    from streaming.rtcp_reports import ntp_time, ntp_to_unix

    source = RtpSource("video", H264)
    assert source.wall_time(1234) is None
    source.set_clock_reference(1_700_000_000.0, 0xFFFFFF00)
    assert source.wall_time(0xFFFFFF00) == pytest.approx(1_700_000_000.0)
    # 90000 ticks later, past the 32-bit wrap: one second later
    assert source.wall_time((0xFFFFFF00 + 90000) & 0xFFFFFFFF) == pytest.approx(1_700_000_001.0)
    assert source.wall_time(0xFFFFFF00 - 45000) == pytest.approx(1_699_999_999.5)
    assert ntp_to_unix(ntp_time(1_700_000_000.25)) == pytest.approx(1_700_000_000.25, abs=1e-6)


def test_window_reads_bitrate_loss_and_jitter_from_history() -> None:
    """/metrics' per-source figures (plane_snapshot.SourceWindow) come from
    the history ring: 19 of 20 Opus packets, 20 ms apart on the wire and in
    RTP time, give loss 1/20 and zero jitter (RFC 3550 6.4.1)."""
    source = RtpSource("audio", OPUS)
    t0 = 1_000_000.0
    for seq in range(20):
        if seq == 5:
            continue  # lost
        source.push(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, payload=b"x" * 88))
        assert source.last_packet is not None
        source.last_packet.arrival = t0 + seq * 0.020  # the clock the arrival would have read
    window = source.window(t0 + 0.4, seconds=2.0)
    assert window.packets == 19
    assert window.bitrate_kbps == pytest.approx(19 * 100 * 8 / 1000 / 2.0)
    assert window.loss_ratio == pytest.approx(1 / 20)
    assert window.jitter_ms == pytest.approx(0.0, abs=1e-6)
    assert source.window(t0 + 10, seconds=2.0).packets == 0  # nothing recent
