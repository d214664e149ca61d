"""A forum's packet-level program mechanics: what set_program says, the
grace, the slate; no policy of its own (the switcher's is the one);
feed states reported on every change."""

from __future__ import annotations

import asyncio
import time

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from rooms.models import SourceKind, SourceState
from streaming.forum_media import ForumMedia
from streaming.media_config import MediaConfig
from streaming.rtp_source import RtpSource, SourceFeed

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
GRACE = 0.2


def feed(source_id: str, kind: SourceKind = SourceKind.LIVE) -> SourceFeed:
    return SourceFeed(source_id, RtpSource("video", H264, name=source_id), None, kind=kind)


def keyframe(f: SourceFeed, seq: int) -> None:
    assert f.video is not None
    f.video.push(RtpPacket(payload_type=102, marker=1, sequence_number=seq, timestamp=seq * 3000,
                           ssrc=1, payload=bytes([0x65, 0x88, 0x00])))


class Recorder:
    def __init__(self, forum: ForumMedia) -> None:
        self.states: list[tuple[str, SourceState]] = []
        self.programs: list[str | None] = []
        self.changed = asyncio.Event()
        forum.on_program = self._program

    def notify(self, source_id: str, state: SourceState) -> None:
        self.states.append((source_id, state))

    def _program(self, source_id: str | None) -> None:
        self.programs.append(source_id)
        self.changed.set()

    async def next_program(self, timeout: float = 2.0) -> str | None:
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), timeout)
        return self.programs[-1]


def make_forum() -> tuple[ForumMedia, Recorder]:
    holder: list[Recorder] = []
    forum = ForumMedia("f1", MediaConfig(slate_grace=GRACE, media_timeout=0.3, track_timeout=0.3),
                       lambda sid, st: holder[0].notify(sid, st))
    holder.append(Recorder(forum))
    return forum, holder[0]


async def flush() -> None:
    # on_resume is scheduled with call_soon: let it run
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_program_is_what_set_program_says_and_the_slate_covers_a_loss() -> None:
    forum, rec = make_forum()
    slate, one, two = feed("slate", SourceKind.SLATE), feed("one"), feed("two")
    forum.add_feed(slate)
    keyframe(slate, 1)
    await flush()
    assert forum.program.feed is slate  # nothing chosen: the slate
    forum.add_feed(one)
    keyframe(one, 1)
    await flush()
    assert ("one", SourceState.LIVE) in rec.states
    assert forum.program.feed is slate, "a live source is not followed here: the switcher decides"
    forum.set_program("two")
    assert forum.program.feed is slate  # two is not live yet
    forum.add_feed(two)
    keyframe(two, 1)
    await flush()
    assert forum.program.feed is two  # the chosen source, at its first packets

    # two goes quiet: lost, kept on air through the grace, then the slate
    forum.feed_lost("two")
    assert ("two", SourceState.LOST) in rec.states
    assert forum.program.feed is two
    assert await rec.next_program() == "slate"
    # two comes back: on air again at once, without waiting for anyone
    keyframe(two, 2)
    await flush()
    assert forum.program.feed is two
    forum.remove_feed("two")
    assert ("two", SourceState.ENDED) == rec.states[-1]
    assert forum.program.feed is slate
    forum.close()


async def test_set_program_pins_the_choice_and_none_means_the_slate() -> None:
    forum, rec = make_forum()
    slate, one, two = feed("slate", SourceKind.SLATE), feed("one"), feed("two")
    for f in (slate, one, two):
        forum.add_feed(f)
    keyframe(one, 1)
    keyframe(two, 1)
    await flush()
    assert forum.program.feed is slate
    forum.set_program("one")
    assert forum.program.feed is one
    keyframe(two, 2)  # two being newer does not matter any more
    assert forum.program.feed is one
    forum.set_program(None)
    assert forum.program.feed is slate
    forum.set_program("one")
    forum.feed_lost("one")
    assert forum.program.feed is one  # grace
    assert await rec.next_program() == "slate"
    forum.close()


async def test_quiet_sources_time_out_as_lost() -> None:
    forum, rec = make_forum()
    one = feed("one")
    forum.add_feed(one)
    keyframe(one, 1)
    await flush()
    assert forum.states["one"] == SourceState.LIVE
    assert one.video is not None
    forum.check_timeouts(one.video.last_arrival + 0.1)
    assert forum.states["one"] == SourceState.LIVE
    forum.check_timeouts(one.video.last_arrival + 0.31)
    assert forum.states["one"] == SourceState.LOST
    keyframe(one, 2)  # media again: live again
    await flush()
    assert forum.states["one"] == SourceState.LIVE
    assert [s for sid, s in rec.states if sid == "one"] == [
        SourceState.CONNECTING, SourceState.LIVE, SourceState.LOST, SourceState.LIVE]
    forum.close()


OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def audio_packet(source: RtpSource, seq: int) -> None:
    source.push(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=2,
                          payload=b"\xf8\xff\xfe"))


async def test_a_track_that_is_missing_or_stops_is_covered_by_the_slate() -> None:
    """Issue 14 item 5 and its kind: a feed without video (audio-only WHIP),
    with a video section that never sends (a camera that is off), without
    audio, or whose video stops while its audio goes on: the program
    always carries a picture and a sound, the slate's where the feed has
    none, and its own again from its next packet (keyframe)."""
    forum, _ = make_forum()
    slate = SourceFeed("slate", RtpSource("video", H264, name="slate"), RtpSource("audio", OPUS, name="slate-a"),
                       kind=SourceKind.SLATE)
    forum.add_feed(slate)
    keyframe(slate, 1)
    audio_packet(slate.audio, 1)  # type: ignore[arg-type]
    await flush()
    camera_off = SourceFeed("speaker", RtpSource("video", H264, name="cam"), RtpSource("audio", OPUS, name="mic"))
    forum.set_program("speaker")  # the switcher's choice (no policy here)
    forum.add_feed(camera_off)
    audio_packet(camera_off.audio, 1)  # type: ignore[arg-type]
    await flush()
    audio_packet(camera_off.audio, 2)  # type: ignore[arg-type]  # the audio lane cuts at its next packet
    program = forum.program
    assert program.feed is camera_off and program.on_air == "speaker"
    assert program.video.source is slate.video and program.audio.source is camera_off.audio  # the slate's picture

    keyframe(camera_off, 5)  # the camera comes on: the lane asks it for a keyframe and cuts there
    await flush()
    assert camera_off.video is not None and camera_off.video.keyframe_requests_sent == 0  # no requester here
    keyframe(camera_off, 6)
    assert program.video.source is camera_off.video

    # the video stops, the audio goes on: after media_timeout the slate's picture stands in
    await asyncio.sleep(0.35)
    audio_packet(camera_off.audio, 3)  # type: ignore[arg-type]
    keyframe(slate, 2)
    forum.check_timeouts(time.monotonic())
    keyframe(slate, 3)
    assert program.video.source is slate.video and program.audio.source is camera_off.audio

    # a feed without audio at all: the slate's silence
    silent = SourceFeed("silent", RtpSource("video", H264, name="silent"), None)
    forum.set_program("silent")
    forum.add_feed(silent)
    keyframe(silent, 1)
    await flush()
    keyframe(silent, 2)
    audio_packet(slate.audio, 2)  # type: ignore[arg-type]  # (the test's slate sent no audio for a while)
    await flush()
    audio_packet(slate.audio, 3)  # type: ignore[arg-type]
    assert program.feed is silent and program.video.source is silent.video
    assert program.audio.source is slate.audio
