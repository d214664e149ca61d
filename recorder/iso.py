"""An iso recording: one raw source of a recorded forum written as it
arrives, copy only (no decode, no encode), next to the forum's program
recording (setting `record_iso`).

The source's RTP is rebuilt into frames (streaming/mkv_feed.py) and
handed as live Matroska over a Unix socket in a private 0700 directory
to one supervised ffmpeg that copies it into the same 2 s MPEG-TS
segments plus index as the program recording (recorder/recording.py), so
the same finalize (remux to MP4 `+faststart`) and crash recovery apply.
Segments are cut at the source's own keyframes: a WebRTC source is asked
for one at the start (a PLI), otherwise its encoder's GOP decides.

H.264 video and Opus audio are recorded; a VP8 source is recorded as its
audio only (no VP8 depacketizer yet).

States: new -> recording -> stopped.
"""

from __future__ import annotations

import enum
import logging
import shutil
from pathlib import Path

from recorder.recording import RecordingInfo, save_meta, segment_args
from streaming import live_mkv
from streaming.ffmpeg_process import FfmpegExit, RestartPolicy, Supervisor
from streaming.end_of_input import end_reader
from streaming.mkv_feed import FeedEgress, MkvFeed
from streaming.program_encoder import private_directory
from streaming.rtp_codecs import H264, OPUS
from streaming.rtp_source import RtpSource, SourceFeed

logger = logging.getLogger(__name__)


def _family(mime_type: str) -> str:
    return mime_type.split("/")[-1].lower()


class _State(enum.Enum):
    NEW = "new"
    RECORDING = "recording"
    STOPPED = "stopped"


class IsoRecording:
    """`feed`'s tracks copied into `directory` (which holds `info`'s
    meta.json)."""

    def __init__(self, info: RecordingInfo, directory: Path, feed: SourceFeed, *, ffmpeg_path: str = "",
                 private_root: Path | None = None) -> None:
        self.info = info
        self.directory = directory
        self.source = feed
        self._ffmpeg = ffmpeg_path
        self._state = _State.NEW
        video = feed.video if feed.video is not None and _family(feed.video.codec.mimeType) == H264 else None
        audio = feed.audio if feed.audio is not None and _family(feed.audio.codec.mimeType) == OPUS else None
        tracks = tuple(t for t in live_mkv.PROGRAM_TRACKS
                       if (t.kind == "video" and video is not None) or (t.kind == "audio" and audio is not None))
        self._private = private_directory(f"i-{feed.source_id[:16]}-", private_root)
        self._feed = MkvFeed(self._private / "iso-in.sock", tracks=tracks)
        self._sinks: list[tuple[RtpSource, FeedEgress]] = []
        for source, codec in ((video, H264), (audio, OPUS)):
            if source is not None:
                egress = FeedEgress(source.kind, codec, self._feed)
                egress.set_codec(codec)
                self._sinks.append((source, egress))
        self._video = video
        self._supervisor: Supervisor | None = None

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def empty(self) -> bool:
        """Nothing this recording can copy (no H.264 or Opus track)."""
        return not self._sinks

    def _set_state(self, state: _State) -> None:
        if state is not self._state:
            logger.info("IsoRecording(%s) %s -> %s", self.info.id, self._state.value, state.value)
            self._state = state

    def _args(self) -> list[str]:
        self.info.runs += 1
        save_meta(self.directory, self.info)
        return segment_args(f"unix:{self._feed.path}", self.directory, self.info.runs, input_format="matroska")

    def _on_exit(self, result: FfmpegExit) -> None:
        if not result.stopped:
            logger.warning("IsoRecording(%s) segmenter ended: %s", self.info.id, result.describe())

    async def start(self) -> None:
        assert self._state is _State.NEW, "started twice"
        await self._feed.start()
        self._supervisor = Supervisor(
            self._args, name=f"iso-{self.source.source_id}", ffmpeg=self._ffmpeg, loglevel="error",
            policy=RestartPolicy(initial=0.5, maximum=5.0), stop_grace=5.0, on_exit=self._on_exit,
        )
        await self._supervisor.start()
        for source, egress in self._sinks:
            source.add_sink(egress)
        if self._video is not None:
            self._video.request_keyframe()  # segments start at a keyframe: ask now, not at its next GOP
        self._set_state(_State.RECORDING)

    async def stop(self) -> None:
        """End the copy: ffmpeg's input ends, it writes its last segment
        and exits by itself (reaped). Idempotent; finalizing is the
        caller's (Recorder)."""
        if self._state is _State.STOPPED:
            return
        self._set_state(_State.STOPPED)
        for source, egress in self._sinks:
            source.remove_sink(egress)

        async def end_input() -> None:
            self._feed.end()

        await end_reader(self._supervisor.stop() if self._supervisor else None, end_input())
        self._feed.end()
        shutil.rmtree(self._private, ignore_errors=True)
