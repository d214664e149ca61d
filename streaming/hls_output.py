"""HLS of a forum's program (RFC 8216): one supervised ffmpeg copying the
encoded program from the forum's tee into fMP4 segments of
`segment_s` (the program's GOP, so every segment starts with a keyframe:
independent segments) with a sliding window playlist; segments that fall
out of the window are deleted by ffmpeg (`delete_segments`), so disk
use is bounded at about `window + 2` segments.

Names carry the run's stamp (`init-<stamp>.mp4`, `seg-<stamp>-<n>.m4s`):
a name is never reused for other bytes, so a segment can be cached
forever (immutable) by any HTTP cache or CDN in front.

States: new -> running -> stopped.
"""

from __future__ import annotations

import enum
import logging
import shutil
import time
from pathlib import Path

import ffmpeg

from streaming.ffmpeg_process import RestartPolicy, Supervisor
from streaming.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"


LIVE_WINDOW = 6  # segments in a live playlist (12 s)


def window_segments(dvr_window_s: int, segment_s: int = 2) -> int:
    """Segments the playlist lists: the live window, or enough for
    `dvr_window_s` seconds of rewind (a DVR window)."""
    return max(LIVE_WINDOW, -(-dvr_window_s // segment_s))


def hls_args(source_url: str, directory: Path, stamp: str, *, segment_s: int, window: int) -> list[str]:
    return list(
        ffmpeg.input(source_url, format="mpegts")
        .output(
            str(directory / PLAYLIST), format="hls", c="copy",
            hls_time=segment_s, hls_list_size=window, hls_delete_threshold=2,
            hls_flags="delete_segments+independent_segments+program_date_time+temp_file",
            hls_segment_type="fmp4", hls_fmp4_init_filename=f"init-{stamp}.mp4",
            hls_segment_filename=str(directory / f"seg-{stamp}-%05d.m4s"),
            **{"bsf:a": "aac_adtstoasc"},  # ADTS (TS) -> AudioSpecificConfig (fMP4): hls's mp4 does not insert it
        )
        .get_args()
    )


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class HlsOutput(Lifecycle[_State]):
    """`directory` is emptied at start and removed at stop."""

    def __init__(self, forum_id: str, directory: Path, source_url: str, *, ffmpeg_path: str = "",
                 segment_s: int = 2, window: int = 6) -> None:
        super().__init__(_State.NEW, f"HlsOutput({forum_id})")
        self.forum_id = forum_id
        self.directory = directory
        self._source_url = source_url
        self._ffmpeg = ffmpeg_path
        self.segment_s = segment_s
        self.window = window
        self._supervisor: Supervisor | None = None
        self.last_request = time.monotonic()

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def supervisor(self) -> Supervisor | None:
        return self._supervisor

    @property
    def playlist(self) -> Path:
        return self.directory / PLAYLIST

    def _args(self) -> list[str]:
        stamp = f"{int(time.time() * 1000):x}"  # a new run never reuses a name
        return hls_args(self._source_url, self.directory, stamp, segment_s=self.segment_s, window=self.window)

    async def start(self) -> None:
        assert self._state is _State.NEW, "started twice"
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self._supervisor = Supervisor(self._args, name=f"hls-{self.forum_id}", ffmpeg=self._ffmpeg,
                                      loglevel="error", policy=RestartPolicy(initial=0.5, maximum=5.0),
                                      stop_grace=2.0)
        await self._supervisor.start()
        self._set_state(_State.RUNNING)

    async def stop(self) -> None:
        """Stop ffmpeg (reaped) and delete the segments. Idempotent. Concurrent callers
        await one stop."""
        await super().stop()

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPED)  # at once, as before: nothing new is taken on

    async def _stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
