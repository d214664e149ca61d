"""The node's recorder: one segmented recording per forum at a time,
fed from the forum's program tee (one more program output), finalized
into an MP4 when it stops; unfinished recordings of a previous run (a
crash, a SIGKILL) are finalized at start with every complete segment.

A full or failing disk stops the recording with an alert (state
"failed", `alert` in words, pushed to operators); the server and the
forum carry on. Free space is checked before a start and every
`check_interval` s while recording (`min_free_bytes`).

States of a recording: recording -> finalizing -> finalized | failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from recorder.iso import IsoRecording
from recorder.recording import (
    RecordingInfo, complete_segments, finalize_args, join_segments, load_meta, media_duration,
    save_meta, segment_args,
)
from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor
from rooms.models import SourceKind
from streaming.child_processes import run_alive, run_id
from streaming.end_of_input import end_reader
from streaming.forum_outputs import ProgramOutputs
from streaming.rtp_source import SourceFeed

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ISO_KINDS = (SourceKind.LIVE, SourceKind.VENUE)  # raw sources: not the slate, not a playout of a file


def new_directory(parent: Path, name: str, tries: int = 100) -> tuple[str, Path]:
    """A directory of its own for a new recording: `name`, or `name-2`,
    `name-3`... when a recording of the same name exists (names are
    stamped to the second: a recording stopped and started again within
    one, or a source reconnecting within one, must never write into
    another's segments). Returns (the name taken, its directory)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, tries + 1):
        taken = name if n == 1 else f"{name}-{n}"
        directory = parent / taken
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        return taken, directory
    raise RecorderError("conflict", f"{tries} recordings named {name!r} already: try again in a second")


@contextlib.contextmanager
def _claim(directory: Path) -> Iterator[bool]:
    """An exclusive flock(2) on the recording's directory while held: the
    nodes on one data dir starting at once (serve --workers after a crash)
    finalize a recording once, not each at the same time. Yields False
    when another process holds it; released when the holder exits."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class RecorderError(Exception):
    """A refused recorder request: `code` ("conflict", "not_found",
    "disk_full") and a message a person can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Active:
    def __init__(self, info: RecordingInfo, directory: Path) -> None:
        self.info = info
        self.directory = directory
        self.supervisor: Supervisor | None = None
        self.watch: asyncio.Task[None] | None = None
        self.isos: dict[str, IsoRecording] = {}  # source id -> its iso recording


class Recorder:
    """`on_change(info)` is called on every state change (must not block).
    With `iso`, each live source (`feeds_of(forum_id)`: remote speakers and
    venue feeds, not the slate or playouts) of a recording forum is also
    recorded copy only (recorder/iso.py), checked every `check_interval` s
    so a source that joins later is recorded from then on."""

    def __init__(self, root: Path, outputs: ProgramOutputs, *, ffmpeg_path: str = "",
                 min_free_bytes: int = 256 * 1024 * 1024, check_interval: float = 2.0,
                 on_change: Callable[[RecordingInfo], None] | None = None, iso: bool = False,
                 feeds_of: Callable[[str], list[SourceFeed]] | None = None) -> None:
        self.root = root
        self.iso = iso
        self._feeds_of = feeds_of
        self._outputs = outputs
        self._ffmpeg = ffmpeg_path
        self.min_free_bytes = min_free_bytes
        self._interval = check_interval
        self._on_change = on_change
        self._active: dict[str, _Active] = {}  # forum_id -> its recording
        self._lock = asyncio.Lock()

    # --- listing -------------------------------------------------------

    def _directories(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent for p in self.root.glob("*/*/meta.json"))

    def recordings(self) -> list[RecordingInfo]:
        """Every recording on this node, oldest first."""
        infos = []
        live = {a.info.id: a.info for a in self._active.values()}
        live.update({i.info.id: i.info for a in self._active.values() for i in a.isos.values()})
        for directory in self._directories():
            info = load_meta(directory)
            if info is None:
                continue
            if info.id in live and info.state == "recording":
                info = live[info.id]
                info.size = sum(p.stat().st_size for p in directory.glob("seg-*.ts"))
                info.duration_s = time.time() - info.started_at
            infos.append(info)
        return sorted(infos, key=lambda i: i.started_at)

    def media_file(self, recording_id: str) -> Path | None:
        """The finalized MP4 of a recording, or None."""
        for directory in self._directories():
            if directory.name == recording_id:
                info = load_meta(directory)
                path = directory / f"{recording_id}.mp4"
                if info is not None and info.state == "finalized" and path.is_file():
                    return path
        return None

    def active(self, forum_id: str) -> RecordingInfo | None:
        active = self._active.get(forum_id)
        return active.info if active is not None else None

    def _changed(self, info: RecordingInfo) -> None:
        if self._on_change is not None:
            try:
                self._on_change(info)
            except Exception:
                logger.exception("Recorder change callback failed")

    def _free(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    # --- recording -----------------------------------------------------

    async def start(self, forum_id: str, session: str | None = None) -> RecordingInfo:
        """Start recording the forum's program. Raises RecorderError
        (conflict: already recording; disk_full)."""
        async with self._lock:
            if forum_id in self._active:
                raise RecorderError("conflict", f"forum {forum_id!r} is already recording")
            if self._free() < self.min_free_bytes:
                raise RecorderError("disk_full", "not enough free disk space to record")
            now = time.time()
            stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            session_name = _SAFE.sub("-", session or "manual")[:64]
            recording_id, directory = new_directory(self.root / forum_id,
                                                    f"{_SAFE.sub('-', forum_id)}--{session_name}--{stamp}")
            info = RecordingInfo(recording_id, forum_id, session_name, now, writer=run_id())
            save_meta(directory, info)
            active = _Active(info, directory)
            self._active[forum_id] = active
            source_url = await self._outputs.forum(forum_id).acquire(f"recorder:{recording_id}")

            def make_args() -> list[str]:
                info.runs += 1
                save_meta(directory, info)
                return segment_args(source_url, directory, info.runs)

            active.supervisor = Supervisor(
                make_args, name=f"recorder-{forum_id}", ffmpeg=self._ffmpeg, loglevel="error",
                policy=RestartPolicy(initial=0.5, maximum=5.0), stop_grace=5.0,
                on_exit=lambda result: self._on_exit(forum_id, result),
            )
            await active.supervisor.start()
            await self._sync_isos(forum_id, active)
            active.watch = asyncio.create_task(self._watch_disk(forum_id), name=f"recorder-disk-{forum_id}")
        logger.info("Recorder(%s) recording %s", forum_id, recording_id)
        self._changed(info)
        return info

    def _on_exit(self, forum_id: str, result: FfmpegExit) -> None:
        if result.stopped:
            return
        logger.warning("Recorder(%s) segmenter ended: %s", forum_id, result.describe())
        if self._free() < self.min_free_bytes or any("No space left" in line for line in result.stderr_tail):
            asyncio.ensure_future(self.stop(forum_id, alert="the disk is full: recording stopped"))

    async def _sync_isos(self, forum_id: str, active: _Active) -> None:
        """Start an iso recording for each live source that has none; stop
        and finalize those whose source left."""
        if not self.iso or self._feeds_of is None:
            return
        feeds = {f.source_id: f for f in self._feeds_of(forum_id) if f.kind in _ISO_KINDS}
        for source_id, iso in list(active.isos.items()):
            if feeds.get(source_id) is not iso.source:
                del active.isos[source_id]
                await self._end_iso(iso)
        for source_id, feed in feeds.items():
            if source_id in active.isos:
                continue
            main = active.info
            iso_id, directory = new_directory(
                self.root / forum_id, f"{main.id}--iso-{_SAFE.sub('-', source_id)[:48]}-{int(time.time()) % 100000:05d}")
            info = RecordingInfo(iso_id, forum_id, main.session, time.time(), source=source_id, writer=run_id())
            iso = IsoRecording(info, directory, feed, ffmpeg_path=self._ffmpeg,
                               private_root=self._outputs.private_root)
            if iso.empty:
                logger.warning("Recorder(%s) source %s has no H.264 or Opus track: no iso recording",
                               forum_id, source_id)
                continue
            save_meta(directory, info)
            active.isos[source_id] = iso
            await iso.start()
            logger.info("Recorder(%s) iso recording %s", forum_id, iso_id)
            self._changed(info)

    async def _end_iso(self, iso: IsoRecording) -> None:
        await iso.stop()
        await self._finalize(iso.directory, iso.info)

    async def _watch_disk(self, forum_id: str) -> None:
        while True:
            await asyncio.sleep(self._interval)
            active = self._active.get(forum_id)
            if active is not None:
                await self._sync_isos(forum_id, active)
            try:
                free = self._free()
            except OSError as error:
                free, why = 0, f"the disk failed ({error.strerror}): recording stopped"
            else:
                why = "the disk is full: recording stopped"
            if free < self.min_free_bytes:
                logger.error("Recorder(%s) %s", forum_id, why)
                asyncio.ensure_future(self.stop(forum_id, alert=why))
                return

    async def stop(self, forum_id: str, *, alert: str = "") -> RecordingInfo:
        """Stop and finalize the forum's recording. Raises RecorderError
        (not_found) when it is not recording. Idempotent per recording."""
        active = self._active.pop(forum_id, None)
        if active is None:
            raise RecorderError("not_found", f"forum {forum_id!r} is not recording")
        if active.watch is not None and active.watch is not asyncio.current_task():
            active.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await active.watch
        isos = list(active.isos.values())
        active.isos.clear()
        ending = asyncio.gather(*(self._end_iso(iso) for iso in isos), return_exceptions=True)
        await end_reader(active.supervisor.stop() if active.supervisor else None, self._outputs.forum(forum_id).release(f"recorder:{active.info.id}"))
        info = active.info
        info.alert = alert
        await self._finalize(active.directory, info)
        await ending
        return info

    async def _finalize(self, directory: Path, info: RecordingInfo) -> None:
        info.state = "finalizing"
        save_meta(directory, info)
        self._changed(info)
        segments = complete_segments(directory)
        target = directory / f"{info.id}.mp4"
        joined = directory / "joined.ts"
        try:
            if not segments:
                raise RuntimeError("no complete segment")
            await asyncio.to_thread(join_segments, segments, joined)
            process = FfmpegProcess(finalize_args(joined, target), name=f"finalize-{info.id}",
                                    ffmpeg=self._ffmpeg, loglevel="error")
            await process.start()
            code = await process.wait()
            if code != 0:
                raise RuntimeError(process.result().describe())
            info.duration_s = await asyncio.to_thread(media_duration, target)
            info.size = target.stat().st_size
            info.state = "finalized"
            for segment in segments:  # the MP4 holds them now
                segment.unlink(missing_ok=True)
        except (OSError, RuntimeError) as error:
            logger.error("Recorder: finalizing %s failed: %s", info.id, error)
            info.state = "failed"
            info.alert = info.alert or f"finalizing failed: {error}"[:200]
        finally:
            joined.unlink(missing_ok=True)
        save_meta(directory, info)
        self._changed(info)
        logger.info("Recorder: %s %s (%.1f s, %d bytes)", info.id, info.state, info.duration_s, info.size)

    async def recover(self) -> list[RecordingInfo]:
        """Finalize what a previous run left recording or finalizing; a
        recording whose writer still runs (another node on this data dir,
        `serve --workers`) is its own and is left alone."""
        done = []
        for directory in self._directories():
            info = load_meta(directory)
            if info is None or info.state not in ("recording", "finalizing"):
                continue
            if info.forum_id in self._active or run_alive(info.writer):
                continue
            with _claim(directory) as claimed:
                if not claimed:
                    continue  # another node finalizes it right now
                info = load_meta(directory)  # again, now that it is ours: maybe finalized meanwhile
                if info is None or info.state not in ("recording", "finalizing") or run_alive(info.writer):
                    continue
                logger.warning("Recorder: finalizing %s left unfinished by a previous run", info.id)
                info.writer = run_id()
                await self._finalize(directory, info)
                done.append(info)
        return done

    async def close(self) -> None:
        """Stop and finalize every recording (server shutdown), all at once:
        each forum's stop waits for its own children, and one after another
        a node recording six forums took a minute to stop."""
        results = await asyncio.gather(*(self.stop(forum_id) for forum_id in list(self._active)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, RecorderError):
                logger.error("Recorder: a recording did not stop cleanly: %r", result)
