"""What a source sends, read at ingest: the SPS an RtpSource sees, frames
out of display order, a WHIP encoder's B-frames flagged to the operator,
and the profile-level-id a viewer's answer names."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from streaming import aiortc_internals
from streaming.answer_profile import format_for_profile
from streaming.h264_sps import parse_sps
from streaming.media_config import MediaConfig
from streaming.offer_answer import CodecFormat
from streaming.offer_check import parse_offer
from streaming.publisher import WebRtcPublisher
from streaming.rtp_source import RtpSource
from streaming.rtp_udp_ingest import h264_codec
from tests.streaming.test_h264_sps import REAL

PPS = bytes.fromhex("68ebecb22c")
IDR = bytes([0x65, 0x88, 0x84, 0x00])
P_SLICE = bytes([0x41, 0x9A, 0x02])


def sps_without_vui() -> bytes:
    """A main-profile 640x368 SPS with no VUI (the SPS does not say
    whether frames are reordered), written bit by bit."""
    bits = "".join(f"{b:08b}" for b in (77, 0x40, 30))

    def ue(value: int) -> str:
        code = f"{value + 1:b}"
        return "0" * (len(code) - 1) + code

    bits += ue(0) + ue(0) + ue(0) + ue(2) + ue(3) + "0" + ue(39) + ue(22) + "1" + "1" + "0" + "0" + "1"
    bits += "0" * (-len(bits) % 8)
    return bytes([0x67]) + int(bits, 2).to_bytes(len(bits) // 8, "big")


def stap_a(*nals: bytes) -> bytes:
    return bytes([24]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def packet(seq: int, ts: int, payload: bytes) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=1234, payload=payload, marker=1)


def feed(source: RtpSource, frames: list[tuple[int, bytes]]) -> None:
    for seq, (ts, payload) in enumerate(frames, start=100 + source.packets_received):
        source.push(packet(seq, ts, payload))


async def test_a_source_reads_its_sps_and_notices_reordered_frames() -> None:
    source = RtpSource("video", h264_codec(), name="t")
    told: list[str | None] = []
    source.on_format = lambda s: told.append(s.profile_level_id)
    sps = bytes.fromhex(REAL["high_bf3"])
    # decode order I P B B (display order I B B P): the B timestamps are older than the P's
    feed(source, [(0, stap_a(sps, PPS, IDR)), (9000, P_SLICE), (3000, P_SLICE), (6000, P_SLICE)])
    assert source.sps is not None and source.profile_level_id == "64001f"
    assert source.reordered_frames == 1  # 9000 -> 3000; 3000 -> 6000 goes forwards
    assert told == ["64001f", "64001f"]  # the SPS, then the first reordered frame
    feed(source, [(12000, stap_a(sps, PPS, IDR))])
    assert told == ["64001f", "64001f"]  # the same SPS again tells nothing


async def test_a_whip_encoder_sending_b_frames_is_flagged() -> None:
    """Browsers never send B-frames; an ffmpeg/OBS WHIP encoder may. The
    publisher path has no decoder, so the source is flagged with the
    setting to change (issue 14 item 4)."""
    publisher = WebRtcPublisher("f", "whip-1", MediaConfig(), lambda p, s: None,
                                aiortc_internals.DecoderCount())
    told: list[str] = []
    publisher._on_media = lambda p: told.append(p.media.handling if p.media else "")
    video = RtpSource("video", h264_codec(), name="whip-1/video")
    video.on_format = publisher._format_seen
    publisher.feed.video = video
    feed(video, [(0, stap_a(bytes.fromhex(REAL["high_bf3"]), PPS, IDR)), (9000, P_SLICE)])
    media = publisher.media
    assert media is not None and media.handling == "flagged" and told == ["flagged"]
    assert "B-frames" in media.reason and "bframes=0" in media.reason
    assert media.audio is False and media.profile == "high" and media.b_frames is True

    # an SPS that does not tell (no VUI): flagged when the timestamps step back
    quiet = WebRtcPublisher("f", "whip-2", MediaConfig(), lambda p, s: None, aiortc_internals.DecoderCount())
    video = RtpSource("video", h264_codec(), name="whip-2/video")
    video.on_format = quiet._format_seen
    quiet.feed.video = video
    main_without_vui = sps_without_vui()
    assert parse_sps(main_without_vui).reorder_frames is None
    feed(video, [(0, stap_a(main_without_vui, PPS, IDR)), (9000, P_SLICE)])
    assert quiet.media is None or quiet.media.handling == "copy"
    feed(video, [(3000, P_SLICE)])
    assert quiet.media is not None and quiet.media.handling == "flagged"
    assert "stepped backwards" in quiet.media.reason


CHROMIUM_VIDEO = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 112 113
c=IN IP4 0.0.0.0
a=mid:0
a=recvonly
a=rtcp-mux
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF
a=setup:actpass
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:104 H264/90000
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:105 rtx/90000
a=fmtp:105 apt=104
a=rtpmap:106 H264/90000
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f
a=rtpmap:107 rtx/90000
a=fmtp:107 apt=106
a=rtpmap:112 H264/90000
a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f
a=rtpmap:113 rtx/90000
a=fmtp:113 apt=112
""".replace("\n", "\r\n")


def offered(offer: str = CHROMIUM_VIDEO) -> tuple[list[CodecFormat], CodecFormat | None]:
    """The offer's video formats and the one a viewer prefers (what the
    answer says when the profile sent is unknown)."""
    summary = parse_offer(offer)
    assert summary.video is not None
    return summary.video.formats, summary.video.watchable_h264


def test_the_answer_names_the_profile_sent() -> None:
    formats, preferred = offered()
    assert preferred is not None
    # a copied high-profile venue feed: Chromium's high payload type, the stream's level
    chosen = format_for_profile(formats, "64002a", preferred)
    assert chosen is not None and (chosen.payload_type, chosen.profile_level_id) == (112, "64002a")
    assert chosen.parameters["level-asymmetry-allowed"] == "1" and chosen.packetization_mode == 1
    # the slate or a transcoded feed: constrained baseline at its own level
    chosen = format_for_profile(formats, "42c01e", preferred)
    assert chosen is not None and (chosen.payload_type, chosen.profile_level_id) == (104, "42c01e")
    # main: 4d
    chosen = format_for_profile(formats, "4d401f", preferred)
    assert chosen is not None and chosen.payload_type == 106
    # unknown yet, or a profile the offer lacks: the viewer's preferred format stands
    assert format_for_profile(formats, None, preferred) == preferred
    no_high, no_high_preferred = offered(CHROMIUM_VIDEO.replace("profile-level-id=64001f", "profile-level-id=42e01f"))
    assert format_for_profile(no_high, "640c1f", no_high_preferred) == no_high_preferred
