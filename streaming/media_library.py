"""The recorded videos of each forum, normalized once.

Uploads and files named by the event file are probed from their packets
(streaming/media_probe.py: duration, real frame rate, every audio track -
never their name or header alone), then normalized ONCE by a background
job (streaming/normalize_job.py) with the per-stream plan of
streaming/normalize_plan.py: video that viewers can already play is
copied, the rest converted to H.264 constrained baseline; each decodable
audio track becomes an Opus track (undecodable ones are skipped with a
note); a file with only a picture or only sound gets that picture (or a
name card) held for the whole talk. MPEG-TS - Annex-B and timestamps as
playout.py wants them. Normalized files are named by the source's
content hash, so the same video is normalized once however often it is
added.

Layout under `root`:
    index.json        the items (atomic replace on every change, under
                      an flock of index.lock: the nodes of `serve --workers`
                      share the library, each reads it again when it changed)
    media/<hash>.ts   normalized videos
    locks/<hash>.lock held while one process converts that content
    tmp/<run>/        uploads and normalizations in progress of one server
                      run (child_processes.run_id; a dead run's are removed)
A refused or failed file touches nothing outside tmp/, and its temp files
are removed.

Bounds: at most `max_jobs_per_owner` unfinished jobs per token subject and
`max_jobs_per_forum` per forum (RoomError "rate_limited", HTTP 429, with
the reason); `max_concurrent` ffmpeg normalizations run at once on the
node, the others wait queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from rooms.errors import RoomError
from streaming.child_processes import remove_dead_runs, run_id
from streaming.ffmpeg_process import FfmpegProcess
from streaming.media_probe import ProbeResult, keyframe_sizes, probe
from streaming.normalize_job import NormalizeJob
from streaming.normalize_plan import NormalizePlan, NormalizeRules, normalize_args, plan
from streaming.slate import title_font

logger = logging.getLogger(__name__)

_INDEX_VERSION = 2
_PROGRESS_LINE = re.compile(r"^[a-z_0-9]+=\S*$")  # ffmpeg's -progress key=value lines, not its words
LOCK_POLL_S = 0.2  # how often a node waiting for another's conversion of the same content looks again
MAX_JOBS_KEPT = 200  # finished jobs remembered (for the API), oldest forgotten first


@dataclass(frozen=True)
class MediaItem:
    """A normalized video of one forum's library.

    `audio_tracks`: the normalized file's audio tracks, in its order
    ({"index", "language", "title", "default", "codec" (the source's),
    "channels"}); `audio_track`: the one playout sends (the source's
    default decodable track unless an operator chose another);
    `notes`: what was left out and why; `processing`: what was copied and
    what converted (NormalizePlan.to_json())."""

    id: str
    forum_id: str
    name: str  # what the uploader or the event file called it
    duration: float
    width: int
    height: int
    created_at: float  # unix seconds
    content_hash: str  # sha256 of the source file
    file: str  # the normalized file, relative to the library root
    audio_tracks: list[dict[str, object]] = field(default_factory=list)
    audio_track: int = 0
    notes: list[str] = field(default_factory=list)
    processing: dict[str, object] = field(default_factory=dict)
    uploaded_by: str = ""  # the uploader's name ("" for the event file's videos)
    speaker_id: str = ""  # a recorded speaker's own upload: it plays in their slot

    def summary(self) -> dict[str, object]:
        """What the API and operators' lists show (no server paths)."""
        body = self.to_json()
        del body["file"], body["content_hash"]
        return body

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MediaItem:
        known = {f.name for f in fields(cls)}  # a newer index's extra keys are not an error
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _item_id(forum_id: str, content_hash: str) -> str:
    return hashlib.sha256(f"{forum_id}/{content_hash}".encode()).hexdigest()[:16]


def _display_name(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name.strip()
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "video"


def _tracks_json(chosen: NormalizePlan) -> list[dict[str, object]]:
    return [{"index": n, "language": t.language, "title": t.title, "default": n == 0, "codec": t.codec,
             "channels": t.channels} for n, t in enumerate(chosen.audio)]


def _notes(chosen: NormalizePlan) -> list[str]:
    notes = [f"audio track {t.index + 1} ({t.title or t.language or 'untitled'}): {why}" for t, why in chosen.skipped]
    if not chosen.audio:
        notes.append("no audio track this server can decode: silence")
    if chosen.video in ("still", "card"):
        notes.append("no moving picture: " + ("the picture is held" if chosen.video == "still" else "a name card"))
    return notes


class MediaLibrary:
    """The media library of a node: items per forum, persisted in
    `root/index.json`. Concurrent adds of the same content normalize once."""

    def __init__(self, root: Path, ffmpeg: str = "", max_upload_bytes: int = 4 << 30, *,
                 rules: NormalizeRules | None = None, max_concurrent: int = 1,
                 max_jobs_per_owner: int = 2, max_jobs_per_forum: int = 4) -> None:
        self.root = Path(root)
        self.ffmpeg = ffmpeg
        self.max_upload_bytes = max_upload_bytes
        self.rules = rules or NormalizeRules()
        self.max_jobs_per_owner = max_jobs_per_owner
        self.max_jobs_per_forum = max_jobs_per_forum
        self.media_dir = self.root / "media"
        # per server run: nodes sharing the data dir (serve --workers) never remove each
        # other's uploads and conversions in progress; a dead run's are removed at a start
        tmp_root = self.root / "tmp"
        self.tmp_dir = tmp_root / run_id()
        self.index_path = self.root / "index.json"
        for directory in (self.root, self.media_dir, tmp_root, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        remove_dead_runs(tmp_root)  # a crash mid-upload leaves these
        for leftover in tmp_root.iterdir():  # the layout before runs had directories of their own
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
        self._index_stamp: tuple[int, int, int] | None = None
        self._items: dict[str, MediaItem] = self._load()
        self._locks: dict[str, asyncio.Lock] = {}
        self._running = asyncio.Semaphore(max_concurrent)
        self._jobs: dict[str, NormalizeJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_job: Callable[[NormalizeJob], None] | None = None  # every job change (pushed to operators)
        self.normalizations = 0  # ffmpeg runs that produced a file (for tests and stats)

    # --- queries -----------------------------------------------------------

    def items(self, forum_id: str) -> list[MediaItem]:
        self._refresh()
        return sorted((i for i in self._items.values() if i.forum_id == forum_id), key=lambda i: i.created_at)

    def get(self, item_id: str) -> MediaItem:
        self._refresh()
        item = self._items.get(item_id)
        if item is None:
            raise RoomError("not_found", f"no media item {item_id!r}")
        return item

    def path(self, item: MediaItem) -> Path:
        """The normalized file to play."""
        return self.root / item.file

    def probe(self, path: Path) -> ProbeResult:
        return probe(path)

    def speaker_item(self, forum_id: str, speaker_id: str) -> MediaItem | None:
        """The newest video a recorded speaker uploaded for this forum."""
        mine = [i for i in self.items(forum_id) if speaker_id and i.speaker_id == speaker_id]
        return mine[-1] if mine else None

    def jobs(self, forum_id: str) -> list[NormalizeJob]:
        return sorted((j for j in self._jobs.values() if j.forum_id == forum_id), key=lambda j: j.created_at)

    def job(self, job_id: str) -> NormalizeJob:
        found = self._jobs.get(job_id)
        if found is None:
            raise RoomError("not_found", f"no conversion job {job_id!r}")
        return found

    # --- choices -----------------------------------------------------------

    async def select_audio(self, item_id: str, track: object) -> MediaItem:
        """Choose the audio track playout sends (an index of
        item.audio_tracks). RoomError: not_found, invalid."""
        item = self.get(item_id)
        if not isinstance(track, int) or isinstance(track, bool) or not 0 <= track < len(item.audio_tracks):
            raise RoomError("invalid", f"audio_track must be an index of the item's {len(item.audio_tracks)} "
                                       "audio tracks")
        item = replace(item, audio_track=track)
        self._items[item_id] = item
        await asyncio.to_thread(self._save, item)
        return item

    # --- bounds ------------------------------------------------------------

    def check_upload(self, forum_id: str, owner: str, size: int | None) -> None:
        """Refuse an upload from what its headers say, before any byte is
        stored. RoomError: too_large (413), rate_limited (429, with why)."""
        if size is not None and size > self.max_upload_bytes:
            raise RoomError("too_large", f"uploads are limited to {self.max_upload_bytes} bytes; "
                                         f"this one says {size}")
        active = [j for j in self._jobs.values() if not j.finished and j.owner != "event-file"]
        if sum(j.owner == owner for j in active) >= self.max_jobs_per_owner:
            raise RoomError("rate_limited", f"{self.max_jobs_per_owner} of your uploads are still being "
                                            "converted: wait for one to finish")
        if sum(j.forum_id == forum_id for j in active) >= self.max_jobs_per_forum:
            raise RoomError("rate_limited", f"{self.max_jobs_per_forum} uploads of this forum are still being "
                                            "converted: wait for one to finish")

    # --- adding ------------------------------------------------------------

    async def store_upload(self, chunks: AsyncIterator[bytes], expected: int | None = None) -> tuple[Path, str]:
        """Write an upload to tmp/ (at most max_upload_bytes): (path, sha256).
        The caller owns the file. RoomError: too_large, invalid (empty)."""
        temp = self.tmp_dir / f"upload-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise RoomError("too_large", f"uploads are limited to {self.max_upload_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            if size == 0:
                raise RoomError("invalid", "the upload is empty")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, digest.hexdigest()

    async def add_upload(self, forum_id: str, filename: str, chunks: AsyncIterator[bytes],
                         owner: str = "") -> MediaItem:
        """Store an upload, check and normalize it; return once done.
        Raises RoomError: too_large, rate_limited, unsupported_media_type, unavailable."""
        job = await self.start_upload(forum_id, filename, chunks, owner)
        return await self.wait(job)

    async def start_upload(self, forum_id: str, filename: str, chunks: AsyncIterator[bytes],
                           owner: str = "", uploader: str = "") -> NormalizeJob:
        """Store an upload, probe it (a file that cannot play is refused
        here, at once) and start its normalization as a background job.
        RoomError: rate_limited, too_large, invalid, unsupported_media_type."""
        self.check_upload(forum_id, owner, None)
        temp, content_hash = await self.store_upload(chunks)
        return await self.start_stored(forum_id, filename, temp, content_hash, owner, uploader)

    async def start_stored(self, forum_id: str, filename: str, temp: Path, content_hash: str,
                           owner: str = "", uploader: str = "", speaker_id: str = "",
                           keep_on_cancel: bool = False) -> NormalizeJob:
        """Probe a stored upload (this call owns `temp`: it is removed when
        refused or once normalized) and start its job."""
        try:
            info = await asyncio.to_thread(probe, temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self.start_job(forum_id, _display_name(filename), temp, content_hash, owner, owns_source=True,
                              info=info, uploader=uploader, speaker_id=speaker_id, keep_on_cancel=keep_on_cancel)

    def start_job(self, forum_id: str, name: str, source: Path, content_hash: str, owner: str = "",
                  *, owns_source: bool, info: ProbeResult | None = None, uploader: str = "",
                  bounded: bool = True, speaker_id: str = "", keep_on_cancel: bool = False) -> NormalizeJob:
        """Normalize `source` in the background (deleted after when
        `owns_source`, unless the job is cancelled by a stopping server and
        `keep_on_cancel`: a resumable upload's bytes wait for the next start).
        RoomError: rate_limited (only when `bounded`: the event file's videos
        are not refused for being many at once, they queue)."""
        try:
            if bounded:
                self.check_upload(forum_id, owner, None)
        except RoomError:
            if owns_source:
                source.unlink(missing_ok=True)
            raise
        job = NormalizeJob(uuid.uuid4().hex[:16], forum_id, name, owner, on_change=self._job_changed)
        self._jobs[job.id] = job
        self._forget_old_jobs()
        task = asyncio.create_task(self._run_job(job, source, content_hash, owns_source and not keep_on_cancel,
                                                 info, uploader, speaker_id, owns_source),
                                   name=f"normalize-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._job_changed(job)
        return job

    async def wait(self, job: NormalizeJob) -> MediaItem:
        """Wait for a job; its item. Raises its RoomError when it failed."""
        await job.ended.wait()
        if job.item_id is None:
            raise RoomError(job.failure_code, job.error or "the conversion failed")
        return self.get(job.item_id)

    async def add_file(self, forum_id: str, path: Path) -> MediaItem:
        """Add a video named by the event file (normalized once, cached by
        content hash)."""
        path = Path(path)
        if not path.is_file():
            raise RoomError("not_found", f"no such video file: {path}")
        content_hash = await asyncio.to_thread(_hash_file, path)
        item_id = _item_id(forum_id, content_hash)
        self._refresh()
        if item_id in self._items:
            return self._items[item_id]
        job = self.start_job(forum_id, path.name, path, content_hash, "event-file", owns_source=False, bounded=False)
        return await self.wait(job)

    async def stop(self) -> None:
        """Cancel the running jobs (their ffmpeg children are killed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _job_changed(self, job: NormalizeJob) -> None:
        if self.on_job is not None:
            self.on_job(job)

    def _forget_old_jobs(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.created_at)
        for job in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
            del self._jobs[job.id]

    async def _run_job(self, job: NormalizeJob, source: Path, content_hash: str, owns_source: bool,
                       info: ProbeResult | None, uploader: str, speaker_id: str,
                       owns_when_finished: bool | None = None) -> None:
        finished = False
        try:
            item = await self._add(job, source, content_hash, info, uploader, speaker_id)
            finished = True
            job.done(item.id)
        except RoomError as error:
            finished = True
            job.failure_code = error.code
            job.failed(error.message)
        except asyncio.CancelledError:
            job.failed("cancelled: the server is stopping")
            raise
        except Exception:
            finished = True
            logger.exception("MediaLibrary: normalizing %s failed", job.name)
            job.failed("the conversion failed on the server")
        finally:
            if owns_source or (finished and owns_when_finished):
                source.unlink(missing_ok=True)

    async def _add(self, job: NormalizeJob, source: Path, content_hash: str, info: ProbeResult | None,
                   uploader: str, speaker_id: str = "") -> MediaItem:
        forum_id, name = job.forum_id, job.name
        item_id = _item_id(forum_id, content_hash)
        lock = self._locks.setdefault(content_hash, asyncio.Lock())
        async with lock:
            self._refresh()
            if item_id in self._items:
                known = self._items[item_id]
                if speaker_id and known.speaker_id != speaker_id:  # a speaker sends a video already here
                    known = replace(known, speaker_id=speaker_id, uploaded_by=uploader, created_at=time.time())
                    self._items[item_id] = known
                    await asyncio.to_thread(self._save, known)
                return known
            relative = f"media/{content_hash}.ts"
            target = self.root / relative
            job.probing()
            if info is None:
                info = await asyncio.to_thread(probe, source)
            chosen = plan(info, self.rules)
            if chosen.video == "copy" and info.video is not None:
                if len(await asyncio.to_thread(keyframe_sizes, source, info.video.index)) > 1:  # copied, it would change size on air
                    info = replace(info, video=replace(info.video, size_changes=True))
                    chosen = plan(info, self.rules)
            job.converting(info.duration, chosen.to_json())
            async with self._exclusive(content_hash):  # another node on this library may convert it now
                if not target.is_file():
                    async with self._running:
                        await self._normalize(source, target, chosen, name, job)
            result = await asyncio.to_thread(probe, target)
            item = MediaItem(
                id=item_id, forum_id=forum_id, name=name, duration=round(result.duration, 3),
                width=result.width, height=result.height, created_at=time.time(),
                content_hash=content_hash, file=relative, audio_tracks=_tracks_json(chosen),
                notes=_notes(chosen), processing=chosen.to_json(), uploaded_by=uploader, speaker_id=speaker_id,
            )
            self._items[item_id] = item
            await asyncio.to_thread(self._save, item)
            logger.info("MediaLibrary added %s (%s, %.1fs, video %s) to forum %s", item_id, name, item.duration,
                        chosen.video, forum_id)
            return item

    @contextlib.asynccontextmanager
    async def _exclusive(self, content_hash: str) -> AsyncIterator[None]:
        """Hold an flock(2) of locks/<hash>.lock: the nodes of `serve
        --workers` (one library) convert the same content once (each
        prepares the agenda's upcoming videos). Polled without blocking, so
        a cancelled wait leaves nothing behind. The holder removes the file
        before it lets go (a refused upload leaves no lock file behind); a
        waiter that then gets the lock of a removed file opens the path
        again, so two holders never run at once."""
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        path = locks / f"{content_hash}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(LOCK_POLL_S)
                current = os.stat(path).st_ino if path.exists() else None
            except BaseException:
                os.close(fd)
                raise
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # locked a file its holder removed meanwhile: take the path's new one
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still held: waiters on this file see it gone
            os.close(fd)

    async def _normalize(self, source: Path, target: Path, chosen: NormalizePlan, name: str,
                         job: NormalizeJob) -> None:
        temp = self.tmp_dir / f"normalize-{uuid.uuid4().hex}.ts"
        card = self.tmp_dir / f"card-{uuid.uuid4().hex}.txt"
        card.write_text(Path(name).stem or name, "utf-8")  # a textfile: the name needs no escaping
        args = normalize_args(source, temp, chosen, self.rules, card_text=card, card_font=title_font())
        process = FfmpegProcess(args, name=f"normalize {name}", ffmpeg=self.ffmpeg, loglevel="error",
                                on_line=job.on_ffmpeg_line)
        try:
            try:
                await process.start()
            except OSError as error:
                raise RoomError("unavailable", f"cannot run ffmpeg to normalize {name!r}: {error}") from None
            try:
                code = await process.wait()
            finally:
                await process.stop(grace=1.0)  # cancelled: kill it, never leave it behind
            if code != 0 or not temp.is_file() or temp.stat().st_size == 0:
                result = process.result()
                said = [line for line in result.stderr_tail if not _PROGRESS_LINE.match(line)]
                why = f"{result.name} exited with {result.returncode}: {said[-1] if said else 'no output'}"
                logger.warning("MediaLibrary: normalizing %s failed: %s", name, why)
                raise RoomError("unsupported_media_type", f"{name!r} could not be converted: {why}")
            await asyncio.to_thread(probe, temp)  # refused here, it never reaches media/
            os.replace(temp, target)  # atomic: a file in media/ is always complete
            self.normalizations += 1
        finally:
            temp.unlink(missing_ok=True)
            card.unlink(missing_ok=True)

    # --- the index ---------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.index_path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        """Read the index again when another process changed it (the nodes
        of `serve --workers` share one library: an upload converted on one
        worker is played by the forum's host on another). One stat."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._index_stamp:
            self._items = self._load()

    def _load(self) -> dict[str, MediaItem]:
        self._index_stamp = self._stamp()
        if not self.index_path.is_file():
            return {}
        try:
            data = json.loads(self.index_path.read_text("utf-8"))
            items = [MediaItem.from_json(entry) for entry in data["items"]]
        except (ValueError, KeyError, TypeError) as error:
            aside = self.index_path.with_name(f"index.json.corrupt-{int(time.time())}")
            os.replace(self.index_path, aside)  # keep it for a person; never overwrite it
            logger.error("MediaLibrary index %s unreadable (%s): moved to %s", self.index_path, error, aside)
            return {}
        return {item.id: item for item in items if (self.root / item.file).is_file()}

    def _save(self, changed: MediaItem) -> None:
        """Write `changed` into the index as it is on disk now, under an
        flock(2) of index.lock: a read-modify-write of a process sharing the
        library never drops another's item (each used to write its own
        memory, losing the items others added since it started)."""
        with open(self.root / "index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
            items = self._load()
            items[changed.id] = changed
            data = {"version": _INDEX_VERSION, "items": [item.to_json() for item in items.values()]}
            temp = self.tmp_dir / f"index-{uuid.uuid4().hex}.json"
            with temp.open("w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.index_path)
            self._items = items
            self._index_stamp = self._stamp()
