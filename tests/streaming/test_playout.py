"""FilePlayout: a normalized file played as RTP, paced in real time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiortc.rtp import RtpPacket

from streaming.media_library import MediaLibrary
from streaming.playout import FilePlayout, demux_units
from rooms.models import SourceKind
from streaming.rtp_udp_ingest import h264_nal_types, new_source_feed
from tests.machine_time import RunQueueWait
from tests.streaming.test_media_library import make_video

pytestmark = pytest.mark.timeout(120)
LAG_TOLERANCE_S = 0.25  # timer and scheduling slack on an idle machine; waits come on top


class TimedSink:
    """Keeps each packet with its arrival time."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, RtpPacket]] = []
        self.got_one = asyncio.Event()

    def push(self, packet: RtpPacket) -> None:
        self.arrivals.append((time.monotonic(), packet))
        self.got_one.set()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("playout")
    library = MediaLibrary(base / "library")
    long = asyncio.run(library.add_file("f", make_video(base / "long.mp4", 10.6, fps=30)))
    short = asyncio.run(library.add_file("f", make_video(base / "short.mp4", 2.0, fps=15)))
    return {"long": library.path(long), "short": library.path(short)}


async def test_plays_in_real_time_with_keyframes_every_two_seconds(files: dict[str, Path]) -> None:
    """Paced on the wall clock: never ahead of it, and behind it by no more
    than the machine kept this process waiting (rate and CPU figures:
    `python -m bench.playout`)."""
    video, audio = TimedSink(), TimedSink()
    playout = FilePlayout(files["long"], "recorded-1", video, audio)
    waited = RunQueueWait()
    wall_before = time.monotonic()
    await playout.start()
    await asyncio.wait_for(playout.ended.wait(), 60)
    assert playout.state == "ended"
    await playout.stop()

    (t0, first) = video.arrivals[0]
    media = ((video.arrivals[-1][1].timestamp - first.timestamp) & 0xFFFFFFFF) / 90000
    assert media > 9.5
    # never ahead of real time (measured from before start(): a late first packet cannot hide a lead)
    lead = max(((p.timestamp - first.timestamp) & 0xFFFFFFFF) / 90000 - (t - wall_before) for t, p in video.arrivals)
    assert lead <= 0.001
    # never drifting behind: a lag only as large as the time the machine withheld
    lag = max((t - t0) - ((p.timestamp - first.timestamp) & 0xFFFFFFFF) / 90000 for t, p in video.arrivals)
    assert lag <= LAG_TOLERANCE_S + waited.seconds(), (lag, waited.seconds())

    # IDR (with SPS/PPS in front) every 2 s of media
    key_times = sorted({((p.timestamp - first.timestamp) & 0xFFFFFFFF) / 90000
                        for _, p in video.arrivals if 7 in h264_nal_types(p.payload)})
    assert key_times[:6] == pytest.approx([0, 2, 4, 6, 8, 10], abs=0.05)
    seqs = [p.sequence_number for _, p in video.arrivals]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    assert len({p.ssrc for _, p in video.arrivals}) == 1
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for (_, a), (_, b) in zip(audio.arrivals, audio.arrivals[1:])}
    assert steps == {960}
    assert all(len(p.serialize()) <= 1300 for _, p in video.arrivals)


async def test_ends_restarts_with_continuous_timestamps_and_stops(files: dict[str, Path]) -> None:
    video = TimedSink()
    ended: list[bool] = []
    states: list[str] = []
    playout = FilePlayout(files["short"], "recorded-2", video, None,
                          on_ended=lambda: ended.append(True), on_state=states.append)
    playout.request_keyframe()  # a no-op: the file has an IDR every 2 s
    waited = RunQueueWait()
    await playout.start()
    await asyncio.wait_for(playout.ended.wait(), 30)
    assert ended == [True] and playout.position == pytest.approx(2.0, abs=0.07)
    first_run = len(video.arrivals)
    (end_wall, end_packet) = video.arrivals[-1]

    await playout.restart()
    await asyncio.wait_for(playout.ended.wait(), 30)
    (start_wall, start_packet) = video.arrivals[first_run]
    assert (start_packet.sequence_number - end_packet.sequence_number) & 0xFFFF == 1
    media_gap = ((start_packet.timestamp - end_packet.timestamp) & 0xFFFFFFFF) / 90000
    # a pause, on the media clock: the timestamps jump by the wall time that passed
    assert abs(media_gap - (start_wall - end_wall)) <= 0.03 + waited.seconds()
    assert start_packet.ssrc == end_packet.ssrc

    await playout.restart()
    await asyncio.wait_for(video.got_one.wait(), 20)
    await asyncio.gather(playout.stop(), playout.stop())
    count = len(video.arrivals)
    await asyncio.sleep(0.2)  # checking that nothing more arrives needs some time to pass
    assert len(video.arrivals) == count
    assert states == ["playing", "ended", "playing", "ended", "playing", "stopped"]


async def test_joins_a_slot_under_way_at_the_next_keyframe(files: dict[str, Path]) -> None:
    """A node that starts mid-slot plays the talk from where it should be:
    the first keyframe at or after the offset (SPS/PPS first), in real
    time, ending when the file does; a later restart still keeps the RTP
    timestamps on the wall clock."""
    video, audio = TimedSink(), TimedSink()
    playout = FilePlayout(files["long"], "recorded-3", video, audio)
    waited = RunQueueWait()
    before = time.monotonic()
    await playout.start(start_at=5.5)  # keyframes every 2 s: it starts at 6.0
    await asyncio.wait_for(playout.ended.wait(), 60)
    (t0, first), (t1, last) = video.arrivals[0], video.arrivals[-1]
    assert 7 in h264_nal_types(first.payload)  # starts decodable: SPS first
    assert playout.position == pytest.approx(10.5, abs=0.15)  # the file's end, as media time
    media = ((last.timestamp - first.timestamp) & 0xFFFFFFFF) / 90000
    assert media == pytest.approx(4.5, abs=0.15)  # 6.0 s .. end: nothing before the keyframe
    # real time, not a burst of what was skipped, nor a replay of it in real time
    lead = max(((p.timestamp - first.timestamp) & 0xFFFFFFFF) / 90000 - (t - before) for t, p in video.arrivals)
    assert lead <= 0.001
    assert t1 - t0 <= media + LAG_TOLERANCE_S + waited.seconds()
    # audio follows the picture: none from before the keyframe
    assert audio.arrivals and audio.arrivals[0][0] >= t0 - 0.05 - waited.seconds()

    end_wall, end_packet = video.arrivals[-1]
    await playout.restart()
    await asyncio.wait_for(playout.ended.wait(), 60)
    start_wall, start_packet = next((t, p) for t, p in video.arrivals if t > end_wall)
    gap = ((start_packet.timestamp - end_packet.timestamp) & 0xFFFFFFFF) / 90000
    # forward, as a pause would be: by the wall time that passed
    assert abs(gap - (start_wall - end_wall)) <= 0.05 + waited.seconds()
    await playout.stop()

    beyond = FilePlayout(files["short"], "recorded-4", TimedSink(), None)
    await beyond.start(start_at=30.0)  # the talk already played out in its slot
    await asyncio.wait_for(beyond.ended.wait(), 20)
    assert beyond.position == 0.0


def test_units_are_annexb_frames_cut_for_rtp(files: dict[str, Path]) -> None:
    units = list(demux_units(files["short"]))
    video = [u for u in units if u.kind == "video"]
    assert len(video) == 30 and video[0].keyframe and video[0].time == pytest.approx(0, abs=0.01)
    assert h264_nal_types(video[0].payloads[0])[:2] == [7, 8]  # STAP-A: SPS, PPS first
    assert all(len(p) <= 1300 for u in units for p in u.payloads)


async def test_feeds_the_media_planes_rtp_source(files: dict[str, Path]) -> None:
    requests: list[bool] = []
    feed = new_source_feed("recorded-3", SourceKind.RECORDED, keyframe_requester=lambda: requests.append(True))
    assert feed.video is not None and feed.audio is not None
    assert feed.video.codec.parameters["packetization-mode"] == "1" and feed.audio.codec.clockRate == 48000
    playout = FilePlayout(files["short"], feed.source_id, feed.video, feed.audio)
    await playout.start()
    await asyncio.wait_for(playout.ended.wait(), 10)
    await playout.stop()
    assert feed.video.keyframes_seen == 1  # a 2 s file: one IDR, found by the media plane's own detector
    assert feed.video.packets_received == playout.tracks["video"].packets
    assert feed.audio.packets_received == playout.tracks["audio"].packets >= 99
