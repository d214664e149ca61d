"""h264_sps and ingest_check on SPS that real ffmpeg/x264 wrote.

The hex constants were produced by the imageio-ffmpeg binary (FFmpeg 9,
libx264), `-f lavfi -i testsrc=s=WxH:r=R -frames:v 3 ... -f h264`; one
test makes them again and checks the parser against FFmpeg's own decoder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest

from streaming.ffmpeg_process import ffmpeg_binary
from streaming.h264_sps import SpsError, parse_sps, sps_from_rtp, unescape
from streaming.ingest_check import check_sps, source_media, transcode_options

# name: (hex, ffmpeg options, size, rate)
REAL = {
    "baseline": "6742c00cd901419f9f011000000300100000030320f142a480",  # 320x180 25 fps (cropped from 192)
    "zerolatency": "6742c01ed900a02ff970110000030001000003003c8f162e48",  # 640x360 30 fps baseline zerolatency
    "main": "674d401eeca05017fcb80880000003008000001e078b16cb",  # 640x360 30 fps, x264's 3 B-frames
    "high_bf3": "6764001facd9405005bb0110000003001000000303c0f1831960",  # 1280x720 30 fps -bf 3
    "high_bf0": "6764002aacb200f0044fcb8088000003000800000303c078c19240",  # 1920x1080 60 fps -bf 0
    "high422": "677a001ebcd940a03db011000003000100000300320f162d96",  # 640x480 25 fps yuv422p
    "interlaced": "6764001eacd940b424d8088000000300800000190f8a14cb",  # 720x576 25 fps +ildct
}


def sps(name: str):  # type: ignore[no-untyped-def]
    return parse_sps(bytes.fromhex(REAL[name]))


def test_baseline_with_cropping_and_vui_timing() -> None:
    s = sps("baseline")
    assert (s.profile_idc, s.constraint_flags, s.level_idc) == (66, 0xC0, 12)
    assert s.profile_level_id == "42c00c" and s.profile_name == "constrained baseline" and s.level == "1.2"
    assert (s.width, s.height) == (320, 180)  # 12 macroblock rows = 192, cropped by 12
    assert s.frame_rate == 25.0 and s.pic_order_cnt_type == 2
    assert s.max_num_reorder_frames == 0 and s.reorder_frames == 0
    assert check_sps(s).handling == "copy"


def test_main_and_high_with_b_frames_are_transcoded() -> None:
    main, high = sps("main"), sps("high_bf3")
    assert (main.profile_name, main.profile_level_id, main.width, main.height) == ("main", "4d401e", 640, 360)
    assert (high.profile_name, high.profile_level_id, high.width, high.height) == ("high", "64001f", 1280, 720)
    for s in (main, high):
        assert s.frame_rate == 30.0 and s.pic_order_cnt_type == 0 and s.reorder_frames == 2
        verdict = check_sps(s)
        assert verdict.transcode and "B-frames (up to 2 reordered frames)" in verdict.reason


def test_high_without_b_frames_at_1080p60_is_copied() -> None:
    s = sps("high_bf0")
    assert (s.width, s.height, s.frame_rate, s.level) == (1920, 1080, 60.0, "4.2")
    assert s.reorder_frames == 0 and check_sps(s).handling == "copy"
    media = source_media(s, check_sps(s))
    assert media.b_frames is False and media.sent_profile_level_id == "64002a"


def test_422_and_interlaced_are_transcoded_and_the_encode_fixes_them() -> None:
    four22, interlaced = sps("high422"), sps("interlaced")
    assert four22.profile_idc == 122 and four22.chroma_format_idc == 2 and (four22.width, four22.height) == (640, 480)
    assert "high 4:2:2 profile" in check_sps(four22).reason
    assert not interlaced.frame_mbs_only and (interlaced.width, interlaced.height) == (720, 576)
    assert "interlaced" in check_sps(interlaced).reason
    filters, options = transcode_options(interlaced)
    assert [name for name, _ in filters] == ["yadif", "format"]
    assert options["bf"] == 0 and options["g"] == 50 and options["tune"] == "zerolatency"
    assert options["profile:v"] == "baseline"


def test_the_sps_is_found_in_rtp_payloads_and_bad_bytes_are_refused() -> None:
    nal = bytes.fromhex(REAL["main"])
    pps = bytes.fromhex("68ebecb22c")
    stap_a = bytes([24]) + len(nal).to_bytes(2, "big") + nal + len(pps).to_bytes(2, "big") + pps
    assert sps_from_rtp(nal) == nal and sps_from_rtp(stap_a) == nal
    assert sps_from_rtp(pps) is None and sps_from_rtp(b"") is None
    assert unescape(b"\x67\x00\x00\x03\x01") == b"\x67\x00\x00\x01"
    with pytest.raises(SpsError):
        parse_sps(pps)
    with pytest.raises(SpsError):
        parse_sps(nal[:6])  # cut short before the picture size


@pytest.mark.parametrize(
    "options",
    [
        ["-profile:v", "baseline", "-s", "352x288"],
        ["-profile:v", "main", "-bf", "2", "-s", "640x360"],
        ["-profile:v", "high", "-bf", "3", "-x264-params", "b-pyramid=none", "-s", "854x480"],
        ["-profile:v", "high", "-bf", "0", "-s", "1280x720"],
    ],
)
def test_parser_agrees_with_ffmpegs_decoder(tmp_path: Path, options: list[str]) -> None:
    target = tmp_path / "out.h264"
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=r=30",
         "-frames:v", "8", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", *options,
         "-f", "h264", str(target)],
        check=True, timeout=60,
    )
    data = target.read_bytes()
    nal = next(n.rstrip(b"\x00") for n in data.split(b"\x00\x00\x01") if n and n[0] & 0x1F == 7)
    s = parse_sps(nal)
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        list(container.decode(stream))  # has_b_frames is known once decoding started
        context = stream.codec_context
        assert (s.width, s.height) == (context.width, context.height)
        assert s.profile_name.split()[-1] == context.profile.lower().split()[-1]
        assert bool(s.reorder_frames) == (context.has_b_frames > 0)
    assert s.frame_rate == 30.0
