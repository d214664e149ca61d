"""One recording of a forum's program: independently playable MPEG-TS
segments (2 s, cut at the program's keyframes) plus an index, finalized
into one MP4 by remuxing (no re-encode, `+faststart`: moov first, so a
player starts before the download ends, ISO/IEC 14496-12).

On disk, under `<root>/<forum_id>/<id>/`:
- `meta.json`: {"id", "forum_id", "session", "started_at" (Unix s),
  "state", "runs", "alert", "source"}; state: recording | finalizing |
  finalized | failed; source: the raw source of an iso recording
  (recorder/iso.py), "" for the program; writer: the server run
  recording it (a live one's recording is not "left unfinished").
- `seg-<run>-<n>.ts`: segments; ffmpeg's segment muxer lists a segment
  in `index-<run>.csv` only once it is complete, so after a crash the
  index names exactly the complete ones (a restarted child starts a new
  run, never overwriting an index).
- `<id>.mp4`: the finalized recording.

MPEG-TS segments with continuous timestamps concatenate byte for byte
into one valid stream (13818-1), which is then remuxed to MP4.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

logger = logging.getLogger(__name__)

SEGMENT_S = 2


@dataclass
class RecordingInfo:
    """What GET /api/recordings answers for one recording."""

    id: str
    forum_id: str
    session: str  # the agenda session's id, or "manual"
    started_at: float  # Unix seconds
    state: str = "recording"
    runs: int = 0
    duration_s: float = 0.0
    size: int = 0  # bytes of the MP4 (or of the segments while recording)
    alert: str = ""  # why it stopped early (disk full, ...)
    source: str = ""  # an iso recording's source id; "" for the forum's program
    # the server run writing it (child_processes.run_id(): "<pid>-<start ticks>"): a node
    # sharing the data dir (serve --workers) finalizes at start only what a dead run left
    writer: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "forum_id": self.forum_id, "session": self.session,
            "start": self.started_at, "duration_s": round(self.duration_s, 2), "size": self.size,
            "state": self.state, "alert": self.alert, "source": self.source or None,
        }


def save_meta(directory: Path, info: RecordingInfo) -> None:
    """Write meta.json atomically (rename), so a crash never leaves half of it."""
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(info)))
    os.replace(tmp, directory / "meta.json")


def load_meta(directory: Path) -> RecordingInfo | None:
    try:
        raw = json.loads((directory / "meta.json").read_text())
        return RecordingInfo(**{f.name: raw[f.name] for f in dataclasses.fields(RecordingInfo) if f.name in raw})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def segment_args(source_url: str, directory: Path, run: int, *, input_format: str = "mpegts") -> list[str]:
    """ffmpeg: the program (MPEG-TS from the tee), or a raw source (live
    Matroska, an iso recording), copied into segments of this run, each
    listed in index-<run>.csv when complete."""
    return list(
        ffmpeg.input(source_url, format=input_format)
        .output(
            str(directory / f"seg-{run:03d}-%05d.ts"), format="segment", c="copy",
            segment_time=SEGMENT_S, segment_format="mpegts", reset_timestamps=0,
            segment_list=str(directory / f"index-{run:03d}.csv"), segment_list_type="csv",
        )
        .overwrite_output()
        .get_args()
    )


def complete_segments(directory: Path) -> list[Path]:
    """The segments every index lists, in order (runs, then segments)."""
    segments: list[Path] = []
    for index in sorted(directory.glob("index-*.csv")):
        for line in index.read_text(errors="replace").splitlines():
            name = line.split(",", 1)[0].strip()
            path = directory / name
            if name and path.is_file():
                segments.append(path)
    return segments


def finalize_args(joined: Path, target: Path) -> list[str]:
    return list(
        ffmpeg.input(str(joined), format="mpegts")
        .output(str(target), c="copy", movflags="+faststart", format="mp4")
        .overwrite_output()
        .get_args()
    )


def join_segments(segments: list[Path], joined: Path) -> int:
    """Concatenate TS segments byte for byte; returns bytes written."""
    written = 0
    with joined.open("wb") as out:
        for segment in segments:
            with segment.open("rb") as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
    return written


def media_duration(path: Path) -> float:
    """Seconds of media (PyAV's libavformat reads the MP4's header)."""
    import av

    with av.open(str(path)) as container:
        if container.duration is None:
            return 0.0
        return float(container.duration) / 1_000_000
