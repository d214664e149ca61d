"""MediaLibrary: probing, refusing bad uploads, normalizing once, persisting."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import ffmpeg
import pytest

from rooms.errors import RoomError
from streaming.ffmpeg_process import ffmpeg_binary
from streaming.media_library import MediaLibrary

pytestmark = pytest.mark.timeout(120)


def make_video(path: Path, seconds: float, *, audio: bool = True, video: bool = True, fps: int = 25) -> Path:
    """A source as a camera or an editor would give it: H.264 High with
    B-frames, AAC 44.1 kHz mono, MP4 with the index at the end."""
    outputs = []
    kwargs: dict[str, object] = {"t": seconds}
    streams = []
    if video:
        streams.append(ffmpeg.input(f"testsrc=s=320x240:r={fps}", f="lavfi").video)
        kwargs.update(vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p", **{"profile:v": "high"})
    if audio:
        streams.append(ffmpeg.input("sine=r=44100", f="lavfi").audio)
        kwargs.update(acodec="aac", ac=1)
    outputs = ffmpeg.output(*streams, str(path), **kwargs).overwrite_output().get_args()
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", *outputs], check=True, timeout=60)
    return path


async def chunks_of(path: Path, size: int = 65536) -> AsyncIterator[bytes]:
    data = path.read_bytes()
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    good = make_video(base / "talk.mp4", 4.2)
    truncated = base / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 5])
    garbage = base / "slides.mp4"
    garbage.write_bytes(b"this is not a video " * 500)
    return {
        "good": good, "truncated": truncated, "garbage": garbage,
        "audio_only": make_video(base / "podcast.m4a", 2.0, video=False),
        "silent": make_video(base / "silent.mp4", 2.0, audio=False, fps=15),
    }


@pytest.fixture
async def library(tmp_path: Path) -> MediaLibrary:
    return MediaLibrary(tmp_path / "library", max_upload_bytes=10 << 20)


async def test_good_upload_is_normalized_once_and_persisted(library: MediaLibrary, sources: dict[str, Path]) -> None:
    item = await library.add_upload("forum-a", "C:\\talks\\Keynote.mp4", chunks_of(sources["good"]))
    assert item.name == "Keynote.mp4" and item.forum_id == "forum-a"
    assert (item.width, item.height) == (320, 240) and 4.0 <= item.duration <= 4.5
    path = library.path(item)
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.profile == "Constrained Baseline"
        assert audio.codec_context.name == "opus" and audio.codec_context.sample_rate == 48000
        assert audio.codec_context.channels == 2
        keyframes, reordered = [], 0
        for packet in container.demux(video):
            if packet.pts is None:
                continue
            reordered += packet.pts != packet.dts
            if packet.is_keyframe:
                keyframes.append(float(packet.pts * packet.time_base))
    gaps = [round(b - a, 3) for a, b in zip(keyframes, keyframes[1:])]
    assert gaps == [2.0, 2.0] and reordered == 0  # GOP 2 s, no B-frames

    again = await library.add_upload("forum-a", "copy.mp4", chunks_of(sources["good"]))
    assert again == item and library.normalizations == 1  # same content: no second ffmpeg run
    other = await library.add_file("forum-b", sources["good"])
    assert other.forum_id == "forum-b" and other.file == item.file and library.normalizations == 1

    reopened = MediaLibrary(library.root)
    assert reopened.items("forum-a") == [item] and reopened.get(other.id) == other
    with pytest.raises(RoomError) as missing:
        reopened.get("nope")
    assert missing.value.code == "not_found"


@pytest.mark.parametrize(
    ("source", "code", "words"),
    [
        ("truncated", "unsupported_media_type", ""),
        ("garbage", "unsupported_media_type", "not a media file"),
    ],
)
async def test_bad_uploads_are_refused_and_touch_nothing(
    library: MediaLibrary, sources: dict[str, Path], source: str, code: str, words: str
) -> None:
    await library.add_file("forum-a", sources["silent"])
    before = snapshot(library.root)
    with pytest.raises(RoomError) as refused:
        await library.add_upload("forum-a", f"{source}.mp4", chunks_of(sources[source]))
    assert refused.value.code == code and words in refused.value.message
    assert snapshot(library.root) == before
    assert list(library.tmp_dir.iterdir()) == []
    assert [i.name for i in library.items("forum-a")] == ["silent.mp4"]


async def test_too_large_is_refused_while_streaming(tmp_path: Path, sources: dict[str, Path]) -> None:
    library = MediaLibrary(tmp_path / "small", max_upload_bytes=100_000)
    received = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):  # far more than the limit; must stop reading early
            received.append(1)
            yield b"\0" * 65536

    with pytest.raises(RoomError) as refused:
        await library.add_upload("forum-a", "huge.mp4", endless())
    assert refused.value.code == "too_large" and refused.value.http_status == 413
    assert len(received) == 2 and list(library.tmp_dir.iterdir()) == []
    assert library.items("forum-a") == []


async def test_silent_video_gets_a_silent_opus_track(library: MediaLibrary, sources: dict[str, Path]) -> None:
    item = await library.add_file("forum-a", sources["silent"])
    info = library.probe(library.path(item))
    assert info.audio_codec == "opus" and info.channels == 2 and info.fps == 15
    assert info.profile == "Constrained Baseline"


async def test_a_failing_normalization_is_reported(tmp_path: Path, sources: dict[str, Path]) -> None:
    library = MediaLibrary(tmp_path / "broken", ffmpeg="/bin/false")  # an ffmpeg that fails
    with pytest.raises(RoomError) as failed:
        await library.add_file("forum-a", sources["good"])
    assert failed.value.code == "unsupported_media_type" and "exited with 1" in failed.value.message
    assert list(library.media_dir.iterdir()) == [] and list(library.tmp_dir.iterdir()) == []
    assert not library.index_path.exists()


async def test_a_corrupt_index_is_kept_aside(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    (root / "index.json").write_text("{not json")
    library = MediaLibrary(root)
    assert library.items("forum-a") == []
    assert [p.name.startswith("index.json.corrupt-") for p in root.iterdir() if p.is_file()] == [True]
