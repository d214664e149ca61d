"""Issue 15: recorded talks from any device play as recorded.

Each input is generated with the bundled ffmpeg (short, small: the
machine is shared) the way the device would write it."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from rooms.errors import RoomError
from streaming.ffmpeg_process import ffmpeg_binary
from streaming.media_library import MediaItem, MediaLibrary
from streaming.playout import demux_units
from tests.streaming.test_media_library import snapshot

pytestmark = pytest.mark.timeout(180)

LAVFI_VIDEO = "testsrc2=s=320x180:r=30"


def ff(*args: str, stdout: Path | None = None) -> None:
    """Run the bundled ffmpeg (test input generation only)."""
    command = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *args]
    if stdout is None:
        subprocess.run(command, check=True, timeout=120)
    else:
        with stdout.open("wb") as handle:
            subprocess.run(command, check=True, timeout=120, stdout=handle)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each input made on first use (a test that fails early costs nothing)."""
    base = tmp_path_factory.mktemp("inputs")
    made: dict[str, Path] = {}
    sine = ["-f", "lavfi", "-i", "sine=f=440:r=48000:d=4"]

    def make(name: str) -> Path:
        if name in made:
            return made[name]
        path = base / name
        if name == "mediarecorder.webm":  # written to a pipe: no duration, no cues, as MediaRecorder does
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-c:v", "libvpx-vp9", "-deadline", "realtime",
               "-cpu-used", "8", "-c:a", "libopus", "-f", "webm", "pipe:1", stdout=path)
        elif name == "picture.mp4":
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=1", "-frames:v", "1", "-c:v", "libx264", str(path))
        elif name == "voice.m4a":
            ff(*sine, "-c:a", "aac", str(path))
        elif name == "voice.mp3":
            ff(*sine, "-c:a", "libmp3lame", str(path))
        elif name == "still_and_voice.mp4":  # one frame of video muxed with 4 s of AAC voice
            ff("-i", str(make("picture.mp4")), "-i", str(make("voice.m4a")), "-c", "copy", str(path))
        elif name == "cover.png":
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=1", "-frames:v", "1", str(path))
        elif name == "song_with_cover.mp3":
            ff(*sine, "-i", str(make("cover.png")), "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame",
               "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(path))
        elif name == "interpretation.mkv":  # the talk (440 Hz, eng) and its interpretation (880 Hz, fra, default)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-f", "lavfi", "-i", "sine=f=880:r=48000:d=4",
               "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac",
               "-metadata:s:a:0", "language=eng", "-metadata:s:a:0", "title=Talk",
               "-metadata:s:a:1", "language=fra", "-metadata:s:a:1", "title=Interpretation",
               "-disposition:a:0", "0", "-disposition:a:1", "default", str(path))
        elif name == "spatial.mov":  # an iPhone's second, "spatial audio" track: apple_apac has no decoder
            plain = base / "spatial-pcm.mov"
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-f", "lavfi", "-i", "sine=f=1000:d=4",
               "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast",
               "-c:a:0", "aac", "-c:a:1", "pcm_s16le", str(plain))
            data = plain.read_bytes()
            assert data.count(b"sowt") == 1  # the PCM track's sample entry, renamed to Apple's APAC
            path.write_bytes(data.replace(b"sowt", b"apac"))
        elif name == "sparse_screen.mkv":  # 30 fps for 3 s, then a frame only on change (every 5 s)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=10", "-f", "lavfi", "-i", "sine=d=10",
               "-vf", "select='lt(t,3)+not(mod(n,150))'", "-fps_mode", "vfr", "-c:v", "libx264",
               "-preset", "ultrafast", "-c:a", "aac", str(path))
        elif name == "phone_vfr.mp4":  # 30 fps, then 15, then 30 again (average 24)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=6", "-f", "lavfi", "-i", "sine=d=6",
               "-vf", "select='not(between(t,2,4))+not(mod(n,2))'", "-fps_mode", "vfr", "-c:v", "libx264",
               "-preset", "ultrafast", "-c:a", "aac", str(path))
        elif name == "size_change.ts":  # a 16:9 camera, then a 4:3 screen share in the same file
            parts = []
            for n, size in enumerate(("320x180", "240x180")):
                part = base / f"part{n}.ts"
                ff("-f", "lavfi", "-i", f"color=c=white:s={size}:r=30:d=2", "-f", "lavfi", "-i", "sine=d=2",
                   "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(part))
                parts.append(part)
            ff("-i", f"concat:{parts[0]}|{parts[1]}", "-c", "copy", str(path))
        elif name == "viewer_ready.mp4":  # already H.264 constrained baseline, no B-frames, 1 s GOP
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=4", *sine, "-c:v", "libx264", "-preset", "ultrafast",
               "-profile:v", "baseline", "-bf", "0", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
        elif name == "hlg.mp4":  # a phone's HLG 10-bit HEVC: a white picture
            ff("-f", "lavfi", "-i", "color=c=white:s=320x180:r=30:d=2", "-f", "lavfi", "-i", "sine=d=2",
               "-vf", "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,"
                      "zscale=t=arib-std-b67:p=bt2020:m=bt2020nc:r=tv:npl=203,format=yuv420p10le",
               "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
               "-color_primaries", "bt2020", "-color_trc", "arib-std-b67", "-colorspace", "bt2020nc",
               "-c:a", "aac", str(path))
        else:
            raise KeyError(name)
        made[name] = path
        return path

    return make


@pytest.fixture
def library(tmp_path: Path) -> MediaLibrary:
    return MediaLibrary(tmp_path / "library", max_upload_bytes=50 << 20)


def video_times(path: Path) -> list[float]:
    """Video frame times from the file's start (MPEG-TS starts at 1.4 s)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = (container.start_time or 0) / 1_000_000
        return sorted(float(p.pts * p.time_base) - start for p in container.demux(stream) if p.pts is not None)


def tone_hz(path: Path, track: int) -> float:
    """The frequency of a normalized file's audio track (zero crossings)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[track]
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
        rate = stream.codec_context.sample_rate
    body = samples[rate // 2: -rate // 2]  # not the encoder's ramp
    crossings = np.count_nonzero(np.diff(np.signbit(body)))
    return crossings / 2 / (len(body) / rate)


def assert_steady(item: MediaItem, library: MediaLibrary, fps: float) -> None:
    """Frames at a steady rate from start to end, never a pause."""
    times = video_times(library.path(item))
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 1.5 / fps, f"a {max(gaps):.2f} s pause between frames"
    assert times[0] <= 0.1 and times[-1] >= item.duration - 0.5
    assert len(times) >= 0.9 * fps * item.duration, f"{len(times) / item.duration:.1f} frames/s, not {fps}"


# --- 1: a browser's own recording ---------------------------------------------


async def test_1_mediarecorder_webm_without_duration_is_accepted(library: MediaLibrary,
                                                               inputs: Callable[[str], Path]) -> None:
    source = inputs("mediarecorder.webm")
    with av.open(str(source)) as container:
        assert not container.duration  # the input as the issue has it: no duration in the header
    item = await library.add_file("forum-a", source)
    assert 3.8 <= item.duration <= 4.3  # counted from the packets
    assert item.processing["video"] == "converted" and item.processing["audio"] == ["copied"]  # Opus kept


# --- 3: a still picture and a voice; sound only ------------------------------------


@pytest.mark.parametrize(("name", "mode", "size"), [
    ("still_and_voice.mp4", "still", (320, 180)),
    ("song_with_cover.mp3", "still", (320, 180)),
    ("voice.m4a", "card", (960, 540)),
    ("voice.mp3", "card", (960, 540)),
])
async def test_3_a_voice_goes_on_air_with_a_picture(library: MediaLibrary, inputs: Callable[[str], Path],
                                                    name: str, mode: str, size: tuple[int, int]) -> None:
    item = await library.add_file("forum-a", inputs(name))
    assert (item.width, item.height) == size and item.processing["video_mode"] == mode
    assert 3.8 <= item.duration <= 4.3
    assert_steady(item, library, 5)  # the picture is sent all along, at least 5 times a second
    assert tone_hz(library.path(item), 0) == pytest.approx(440, rel=0.05)  # and the voice with it


async def test_3_a_refused_file_leaves_nothing_behind(tmp_path: Path, inputs: Callable[[str], Path]) -> None:
    # an ffmpeg that "succeeds" with an unplayable file: the result is checked before it enters media/
    fake = tmp_path / "ffmpeg"
    fake.write_text('#!/bin/sh\nprev=""\nfor a; do [ "$a" = "-y" ] && out="$prev"; prev="$a"; done\n'
                    'echo "not a video" > "$out"\n')
    fake.chmod(0o755)
    library = MediaLibrary(tmp_path / "library", ffmpeg=str(fake))
    before = snapshot(library.root)
    with pytest.raises(RoomError) as refused:
        await library.add_file("forum-a", inputs("viewer_ready.mp4"))
    assert refused.value.code == "unsupported_media_type"
    assert snapshot(library.root) == before and list(library.media_dir.iterdir()) == []


# --- 2: audio tracks ---------------------------------------------------------------------


async def test_2_tracks_reported_default_chosen_and_either_language_plays(
        library: MediaLibrary, inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("interpretation.mkv"))
    tracks = [(t["language"], t["title"], t["default"], t["codec"]) for t in item.audio_tracks]
    assert tracks == [("fra", "Interpretation", True, "aac"), ("eng", "Talk", False, "aac")]
    assert item.audio_track == 0
    path = library.path(item)
    assert tone_hz(path, 0) == pytest.approx(880, rel=0.05) and tone_hz(path, 1) == pytest.approx(440, rel=0.05)
    # playout sends the chosen track only
    chosen = [u for u in demux_units(path, audio_track=1) if u.kind == "audio"]
    default = [u for u in demux_units(path) if u.kind == "audio"]
    assert chosen and default and chosen[10].payloads != default[10].payloads
    picked = await library.select_audio(item.id, 1)
    assert picked.audio_track == 1 and MediaLibrary(library.root).get(item.id).audio_track == 1  # persisted
    with pytest.raises(RoomError) as bad:
        await library.select_audio(item.id, 2)
    assert bad.value.code == "invalid"


async def test_2_an_undecodable_track_is_skipped_with_a_note(library: MediaLibrary,
                                                            inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("spatial.mov"))
    assert [t["codec"] for t in item.audio_tracks] == ["aac"]
    assert any("track 2" in note and "no decoder" in note for note in item.notes)
    assert tone_hz(library.path(item), 0) == pytest.approx(440, rel=0.05)


# --- 4, 5: sparse and variable frame rates ----------------------------------------------


async def test_4_sparse_screen_recording_is_steady_and_interleaved(library: MediaLibrary,
                                                                   inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("sparse_screen.mkv"))
    assert_steady(item, library, 30)  # frames repeated in the sparse part, never frozen
    assert item.processing["fps"] == 30
    # interleaved by time: in file order, neither track runs ahead of the other by more than 0.5 s
    latest = {"video": 0.0, "audio": 0.0}
    worst = 0.0
    with av.open(str(library.path(item))) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.stream.type in latest:
                latest[packet.stream.type] = float(packet.pts * packet.time_base)
                if min(latest.values()) > 0:
                    worst = max(worst, abs(latest["video"] - latest["audio"]))
    assert worst < 0.5, f"one track {worst:.1f} s ahead of the other in the file"


async def test_5_frame_rate_is_the_real_maximum(library: MediaLibrary, inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("phone_vfr.mp4"))
    assert_steady(item, library, 30)  # not the 24 fps average
    assert item.processing["fps"] == 30
    capped = MediaLibrary(library.root.parent / "capped", rules=library.rules.__class__(max_fps=15))
    slow = await capped.add_file("forum-a", inputs("phone_vfr.mp4"))
    assert slow.processing["fps"] == 15


# --- 6: size change -----------------------------------------------------------------------


async def test_6_a_size_change_keeps_its_shape(library: MediaLibrary, inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("size_change.ts"))
    assert (item.width, item.height) == (320, 180)
    with av.open(str(library.path(item))) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    first, last = frames[5], frames[-5]
    assert first[:, 5].mean() > 200  # the 16:9 part fills the frame (white)
    assert last[:, 5].mean() < 40 and last[:, 160].mean() > 200  # the 4:3 part: padded left and right
    white = np.flatnonzero(last[90] > 128)
    assert white[-1] - white[0] + 1 == pytest.approx(240, abs=4)  # 4:3 at 180 high, not stretched to 320


# --- 9: copy what viewers can already play --------------------------------------------------


async def test_9_viewer_ready_video_is_copied_not_encoded(library: MediaLibrary,
                                                         inputs: Callable[[str], Path]) -> None:
    source = inputs("viewer_ready.mp4")
    item = await library.add_file("forum-a", source)
    with av.open(str(source)) as container:
        original = [bytes(p) for p in container.demux(video=0) if p.size]
    with av.open(str(library.path(item))) as container:
        copied = [p for p in container.demux(video=0) if p.size]
        assert container.streams.video[0].codec_context.profile == "Constrained Baseline"
    assert len(copied) == len(original)
    # the same pictures, byte for byte, apart from the start codes and SEI
    assert sum(p.size for p in copied) == pytest.approx(sum(map(len, original)), rel=0.05)
    keys = sorted(float(p.pts * p.time_base) for p in copied if p.is_keyframe)
    assert max(b - a for a, b in zip(keys, keys[1:])) <= library.rules.copy_max_keyframe_gap
    assert item.processing["video"] == "copied" and item.processing["audio"] == ["converted"]


async def test_9_what_cannot_be_copied_is_converted_and_says_why(library: MediaLibrary,
                                                                inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("interpretation.mkv"))  # High profile with B-frames
    assert item.processing["video"] == "converted"
    assert "B-frames" in item.processing["video_reasons"]  # type: ignore[operator]


# --- 7: HDR -------------------------------------------------------------------------------------


async def test_7_hlg_is_tone_mapped_to_bt709(library: MediaLibrary, inputs: Callable[[str], Path]) -> None:
    item = await library.add_file("forum-a", inputs("hlg.mp4"))
    with av.open(str(library.path(item))) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        trc, primaries = frame.color_trc, frame.color_primaries
        luma = float(frame.to_ndarray(format="yuv420p")[:180].mean())
    print(f"\nHLG white -> luma {luma:.1f} (BT.709 white is 235)")
    assert (trc, primaries) == (1, 1)  # BT.709, tagged as what it is
    assert math.isclose(luma, 235, abs_tol=12)
    assert item.processing["tone_mapped"] == "hlg"
