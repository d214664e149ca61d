"""Issue 15: recorded talks from any device play as recorded.

Each input is generated with the bundled ffmpeg (short, small: the
machine is shared) the way the device would write it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from rooms.errors import RoomError
from streaming.media_library import MediaItem, MediaLibrary
from streaming.playout import demux_units, time_ordered
from tests.streaming.recorded_inputs import RecordedInputs
from tests.streaming.test_media_library import snapshot

pytestmark = pytest.mark.timeout(180)

@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each input made on first use (a test that fails early costs nothing)."""
    return RecordedInputs(tmp_path_factory.mktemp("inputs"))


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


async def test_1_duration_comes_from_the_packets_not_the_header(library: MediaLibrary,
                                                                 inputs: Callable[[str], Path]) -> None:
    source = inputs("cut_short.mkv")
    with av.open(str(source)) as container:
        assert container.duration >= 3_900_000  # what the header still says
    item = await library.add_file("forum-a", source)
    assert 1.0 <= item.duration <= 3.0


async def test_a_failed_conversion_says_what_ffmpeg_said(tmp_path: Path, inputs: Callable[[str], Path]) -> None:
    fake = tmp_path / "ffmpeg"  # fails mid-way: its progress lines must not hide its words
    fake.write_text("#!/bin/sh\necho out_time_us=1000 >&2\necho 'Error while decoding stream #0:0' >&2\n"
                    "echo progress=end >&2\nexit 1\n")
    fake.chmod(0o755)
    library = MediaLibrary(tmp_path / "library", ffmpeg=str(fake))
    with pytest.raises(RoomError) as failed:
        await library.add_file("forum-a", inputs("voice.mp3"))
    assert "Error while decoding" in failed.value.message


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


async def test_3_cover_art_never_replaces_the_moving_picture(library: MediaLibrary,
                                                           inputs: Callable[[str], Path]) -> None:
    source = inputs("video_with_cover.mp4")
    with av.open(str(source)) as container:  # a picture stream and a cover (ffmpeg lists MP4's cover last)
        assert sum(bool(s.disposition & av.stream.Disposition.attached_pic) for s in container.streams.video) == 1
    item = await library.add_file("forum-a", source)
    assert item.processing["video_mode"] in ("copy", "convert")
    assert_steady(item, library, 30)


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
    # what playout sends, in its order: in time order (its 1 s reordering suffices), frames all along
    sent = list(time_ordered(demux_units(library.path(item))))
    assert all(a.time <= b.time for a, b in zip(sent, sent[1:]))
    video = [u.time for u in sent if u.kind == "video"]
    assert max(b - a for a, b in zip(video, video[1:])) <= 1.5 / 30 and video[-1] >= item.duration - 0.5


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


@pytest.mark.parametrize("hdr", ["hlg", "pq"])
async def test_7_hdr_is_tone_mapped_to_bt709(library: MediaLibrary, inputs: Callable[[str], Path], hdr: str) -> None:
    item = await library.add_file("forum-a", inputs(f"{hdr}.mp4"))
    with av.open(str(library.path(item))) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        trc, primaries = frame.color_trc, frame.color_primaries
        luma = float(frame.to_ndarray(format="yuv420p")[:180].mean())
    print(f"\n{hdr} white -> luma {luma:.1f} (BT.709 white is 235)")
    assert (trc, primaries) == (1, 1)  # BT.709, tagged as what it is
    assert math.isclose(luma, 235, abs_tol=12)
    assert item.processing["tone_mapped"] == hdr


# --- bounds apply to uploads, never to the event file's own videos --------------------------


async def test_event_file_videos_are_never_refused_for_being_many(tmp_path: Path,
                                                                  inputs: Callable[[str], Path]) -> None:
    library = MediaLibrary(tmp_path / "library", max_jobs_per_owner=1, max_jobs_per_forum=1)
    names = ("voice.mp3", "voice.m4a", "viewer_ready.mp4")
    items = await asyncio.gather(*(library.add_file("forum-a", inputs(name)) for name in names))
    assert len({item.id for item in items}) == 3
    library.check_upload("forum-a", "speaker-1", 10)  # and they do not count against uploads
