"""Resumable uploads of recorded talks: the tus protocol, 1.0.0 core with
the creation and termination extensions (https://tus.io/protocols/resumable-upload).

    OPTIONS /api/forums/{forum_id}/uploads          Tus-Version, Tus-Extension, Tus-Max-Size
    POST    /api/forums/{forum_id}/uploads          create: Upload-Length, Upload-Metadata
                                                    (filename) -> 201, Location
    HEAD    /api/forums/{forum_id}/uploads/{id}     Upload-Offset, Upload-Length
    PATCH   /api/forums/{forum_id}/uploads/{id}     append at Upload-Offset
                                                    (application/offset+octet-stream) -> 204
    DELETE  /api/forums/{forum_id}/uploads/{id}     terminate -> 204
    GET     /api/forums/{forum_id}/uploads/{id}     JSON: offset, length, job (not tus: for us)

Why tus: a 2-hour phone video is ~15 GB; one POST that breaks at 90 %
starts again from zero. tus is the well-known resumable scheme with a
maintained browser client (tus-js-client) and a tiny server side. The
one aiohttp server library on PyPI (aiohttp-tus 1.1.0) was last released
in January 2022 and keeps no per-upload owner, so this module implements
the three parts used here (~200 lines).

Authorization: `Authorization: Bearer` with an operator token of the
forum, or a speaker token of the forum (a speaker uploading from their
own invite link: the item is marked as theirs). An upload is only seen
and continued by the token subject that created it (or an operator).
Sizes: Upload-Length over `max_upload_bytes` is refused (413) at
creation, before any byte is stored; a PATCH may not pass Upload-Length
(413) nor start elsewhere than the current offset (409). When the last
byte arrives the file is probed (a file that cannot play: 415 on that
PATCH) and its normalization starts as a job (`Forumcast-Job` header,
and the GET above); operators follow it over socket.io ("media_job").

State lives on disk (`<library>/uploads/<id>.json` beside the bytes), so
an upload resumes after a server restart too, and a complete upload keeps
its bytes until its conversion ends: a restart converts it again.
Uploads untouched for `EXPIRE_S` are removed. The nodes of `serve
--workers` share the directory: each record names the server run holding
it (`run`), and a node's start takes over only the uploads of a dead run,
under an flock(2) of the record (two nodes starting at once never both
convert one; a node starting used to convert the others' uploads again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from aiohttp import web

from rooms.errors import RoomError
from rooms.models import Event, Role, SpeakerMode
from rooms.tokens import Grant
from signaling.app_keys import EVENT, SETTINGS, TOKENS
from signaling.http_api import json_response
from streaming.child_processes import run_alive, run_id
from streaming.media_library import MediaLibrary
from streaming.normalize_job import NormalizeJob

logger = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXPIRE_S = 24 * 3600.0
CHUNK = 1 << 20
MAX_METADATA = 4096  # bytes of Upload-Metadata


@dataclass
class TusUpload:
    id: str
    forum_id: str
    owner: str  # token subject
    uploader: str  # token name
    filename: str
    length: int
    created_at: float
    job: str | None = None  # the normalization job, once complete
    speaker_id: str = ""  # a recorded speaker of the forum uploading for their own slot
    content_hash: str = ""  # sha256, once complete
    # the server run holding it (child_processes.run_id): the nodes of `serve --workers`
    # share this directory; a node takes over only what a dead run held
    run: str = ""
    node: str = ""  # the node that created it (settings' node_id): its client resumes it at that node's URL

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _write(handle: IO[str], upload: TusUpload) -> None:
    """Replace the content of the (locked) record file."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(upload.to_json()))
    handle.flush()


def parse_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64value` pairs.
    RoomError("invalid") when malformed."""
    if len(header) > MAX_METADATA:
        raise RoomError("invalid", f"Upload-Metadata is at most {MAX_METADATA} bytes")
    result: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        if not key.isascii() or not key.isprintable() or " " in key:
            raise RoomError("invalid", "Upload-Metadata keys are ASCII without spaces")
        try:
            result[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
            raise RoomError("invalid", f"Upload-Metadata {key!r} is not base64 of UTF-8 text") from None
    return result


def _int_header(request: web.Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise RoomError("invalid", f"the {name} header is required")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise RoomError("invalid", f"{name} must be a non-negative integer")
    return int(raw)


class TusStore:
    """The uploads in progress of one node, on disk under `root`."""

    def __init__(self, root: Path, library: MediaLibrary, node: str = "") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.library = library
        self._uploads: dict[str, TusUpload] = {}
        self._busy: set[str] = set()  # uploads with a PATCH in progress
        self._watchers: set[asyncio.Task[None]] = set()
        self._run = run_id()
        self._node = node
        for meta in self.root.glob("*.json"):
            upload = self._claim(meta)
            if upload is not None:
                self._uploads[upload.id] = upload

    def _claim(self, meta: Path) -> TusUpload | None:
        """The upload `meta` describes, made this run's; None when it is
        not to be ours: unreadable or expired (removed), held by a live
        run, or unfinished and created by another node (its client resumes
        it at that node's URL: that node takes it back when it restarts).
        Under an flock(2) of the record, so nodes starting at once never
        both take one over and convert it twice."""
        try:
            handle = meta.open("r+", encoding="utf-8")
        except OSError:
            return None
        with handle:  # closing it lets the lock go
            fcntl.flock(handle, fcntl.LOCK_EX)  # held for a read and a write: never long
            try:
                upload = TusUpload(**json.loads(handle.read()))
            except (ValueError, TypeError):
                if time.time() - meta.stat().st_mtime > 60:  # else maybe being created right now
                    meta.unlink(missing_ok=True)
                return None
            if upload.run != self._run and run_alive(upload.run):
                return None
            if time.time() - meta.stat().st_mtime > EXPIRE_S or (
                    upload.job is not None and not self._data(upload.id).exists()):
                self._remove_files(upload.id)
                return None
            if upload.job is None and upload.node not in ("", self._node):
                return None
            upload.run = self._run  # ours now: written before the lock is let go
            _write(handle, upload)
            return upload

    def start(self) -> None:
        """Resume the conversions a stopped server left: a complete upload
        keeps its bytes here until its job ends (call with the loop running)."""
        for upload in list(self._uploads.values()):
            if upload.job is not None:
                logger.info("TusStore: converting upload %s (%s) again after a restart", upload.id, upload.filename)
                job = self.library.start_job(upload.forum_id, upload.filename, self._data(upload.id),
                                             upload.content_hash, upload.owner, owns_source=True,
                                             uploader=upload.uploader, speaker_id=upload.speaker_id,
                                             bounded=False, keep_on_cancel=True)
                self._follow(upload, job)

    async def stop(self) -> None:
        """Stop following jobs (before the library cancels them: their
        uploads stay on disk for the next start)."""
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    def _follow(self, upload: TusUpload, job: NormalizeJob) -> None:
        upload.job = job.id
        self._save(upload)

        async def forget_when_ended() -> None:
            await job.ended.wait()
            self._remove_files(upload.id)  # the library removed the bytes; the record may go too

        task = asyncio.create_task(forget_when_ended(), name=f"tus-follow-{upload.id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _data(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.bin"

    def _meta(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def _remove_files(self, upload_id: str) -> None:
        self._data(upload_id).unlink(missing_ok=True)
        self._meta(upload_id).unlink(missing_ok=True)

    def _save(self, upload: TusUpload) -> None:
        with self._meta(upload.id).open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # a node starting reads it whole or not at all
            _write(handle, upload)

    def offset(self, upload: TusUpload) -> int:
        path = self._data(upload.id)
        return path.stat().st_size if path.exists() else 0

    def open_uploads(self, *, owner: str | None = None, forum_id: str | None = None) -> int:
        """Unfinished uploads of one owner or one forum."""
        return sum(u.job is None and owner in (None, u.owner) and forum_id in (None, u.forum_id)
                   for u in self._uploads.values())

    def _expire(self) -> None:
        """Forget uploads untouched for EXPIRE_S (their bytes too)."""
        now = time.time()
        for upload in [u for u in self._uploads.values() if u.job is None]:  # converting: the job decides
            data = self._data(upload.id)
            touched = data.stat().st_mtime if data.exists() else upload.created_at
            if now - touched > EXPIRE_S:
                logger.info("TusStore: upload %s untouched for a day: removed", upload.id)
                self.delete(upload)

    def get(self, forum_id: str, upload_id: str, grant: Grant) -> TusUpload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.forum_id != forum_id:
            raise RoomError("not_found", f"no upload {upload_id[:40]!r} in forum {forum_id}")
        if upload.owner != grant.subject and not grant.allows(forum_id, Role.OPERATOR):
            raise RoomError("forbidden", "this upload belongs to someone else")
        return upload

    def create(self, forum_id: str, grant: Grant, length: int, filename: str, speaker_id: str = "") -> TusUpload:
        """RoomError: too_large (413), rate_limited (429), invalid."""
        if length == 0:
            raise RoomError("invalid", "the upload is empty (Upload-Length: 0)")
        self._expire()
        self.library.check_upload(forum_id, grant.subject, length)
        if self.open_uploads(owner=grant.subject) >= self.library.max_jobs_per_owner:
            raise RoomError("rate_limited", f"you have {self.library.max_jobs_per_owner} unfinished uploads: "
                                            "finish or delete one first")
        if self.open_uploads(forum_id=forum_id) >= self.library.max_jobs_per_forum:
            raise RoomError("rate_limited", f"{self.library.max_jobs_per_forum} uploads to this forum are "
                                            "unfinished: wait for one to finish")
        upload = TusUpload(uuid.uuid4().hex, forum_id, grant.subject, grant.name, filename or "video", length,
                           time.time(), speaker_id=speaker_id, run=self._run, node=self._node)
        self._data(upload.id).touch()
        self._save(upload)
        self._uploads[upload.id] = upload
        logger.info("TusStore: %s creates upload %s (%d bytes) in %s", grant.name, upload.id, length, forum_id)
        return upload

    async def patch(self, upload: TusUpload, offset: int, request: web.Request) -> tuple[int, str | None]:
        """Append the request's body at `offset` and, once the last byte is
        in, hand the file to the library: (new offset, job id or None).
        One PATCH of an upload at a time (the second is a conflict).
        RoomError: conflict (409), too_large (413), unsupported_media_type."""
        if upload.id in self._busy:
            raise RoomError("conflict", "another PATCH of this upload is in progress")
        self._busy.add(upload.id)
        try:
            current = await self._append(upload, offset, request)
            job = await self.complete(upload) if current == upload.length else None
        finally:
            self._busy.discard(upload.id)
        return current, job

    async def _append(self, upload: TusUpload, offset: int, request: web.Request) -> int:
        # bytes that arrived before a broken connection are kept (tus core: resume from HEAD's offset)
        current = self.offset(upload)
        if offset != current or upload.job is not None:
            raise RoomError("conflict", f"Upload-Offset {offset} is not the upload's offset {current}")
        if request.content_length is not None and current + request.content_length > upload.length:
            raise RoomError("too_large", "the body goes past Upload-Length")
        with self._data(upload.id).open("ab") as handle:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                async for chunk in request.content.iter_chunked(CHUNK):
                    if current + len(chunk) > upload.length:
                        handle.write(chunk[: upload.length - current])
                        raise RoomError("too_large", "the body goes past Upload-Length")
                    handle.write(chunk)
                    current += len(chunk)
        return current

    async def complete(self, upload: TusUpload) -> str:
        """Hand a complete upload to the library: its job id.
        RoomError: unsupported_media_type (the file cannot play), rate_limited."""
        data = self._data(upload.id)
        upload.content_hash = await asyncio.to_thread(_sha256, data)
        try:  # the library owns the bytes from here: it removes them once converted or refused
            job = await self.library.start_stored(upload.forum_id, upload.filename, data, upload.content_hash,
                                                  upload.owner, upload.uploader, upload.speaker_id,
                                                  keep_on_cancel=True)
        except BaseException:
            self.delete(upload)
            raise
        self._follow(upload, job)  # kept so the uploader can ask which job it became, and a restart resumes it
        return job.id

    def delete(self, upload: TusUpload) -> None:
        self._uploads.pop(upload.id, None)
        self._remove_files(upload.id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


TUS = web.AppKey("tus_uploads", TusStore)


def tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **extra}


# --- routes -----------------------------------------------------------------------


def uploader_grant(request: web.Request) -> tuple[str, Grant]:
    """The forum and the grant of an upload request: an operator or a
    speaker of the forum (Authorization: Bearer)."""
    forum_id = request.match_info["forum_id"]
    if request.app[EVENT].forum(forum_id) is None:
        raise RoomError("not_found", f"there is no forum {forum_id[:64]!r} in this event")
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    grant = request.app[TOKENS].verify(token)
    grant.require(forum_id, Role.SPEAKER)
    return forum_id, grant


def recorded_speaker(event: Event, forum_id: str, grant: Grant) -> str:
    """The id of the recorded speaker of this forum's sessions a speaker
    token stands for (its name is the speaker's name in the event file,
    as `forumcast invite` writes it), or ""."""
    if grant.role is not Role.SPEAKER:
        return ""
    forum = event.forum(forum_id)
    ids = {sid for session in (forum.sessions if forum else ()) for sid in session.speaker_ids}
    for speaker_id in sorted(ids):
        speaker = event.speakers.get(speaker_id)
        if speaker is not None and speaker.mode is SpeakerMode.RECORDED and grant.name in (speaker.name.en,
                                                                                             speaker.name.zh):
            return speaker_id
    return ""


def _version_refusal(request: web.Request) -> web.Response | None:
    """412 with Tus-Version unless the client speaks our version (tus core 2.2)."""
    if request.headers.get("Tus-Resumable") == TUS_VERSION:
        return None
    response = json_response({"error": {"code": "invalid", "message": f"this server speaks tus {TUS_VERSION} "
                                        "(send Tus-Resumable: 1.0.0)"}}, status=412)
    response.headers["Tus-Version"] = TUS_VERSION
    return response


async def tus_options(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.Response(status=204, headers=tus_headers(**{
        "Tus-Version": TUS_VERSION, "Tus-Extension": "creation,termination",
        "Tus-Max-Size": str(settings.max_upload_bytes)}))


async def tus_create(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)
    if (refusal := _version_refusal(request)) is not None:
        return refusal
    if "Upload-Defer-Length" in request.headers:
        raise RoomError("invalid", "Upload-Defer-Length is not supported: send Upload-Length")
    length = _int_header(request, "Upload-Length")
    metadata = parse_metadata(request.headers.get("Upload-Metadata", ""))
    if request.content_length:
        raise RoomError("invalid", "send the bytes with PATCH (creation-with-upload is not supported)")
    speaker = recorded_speaker(request.app[EVENT], forum_id, grant)
    upload = request.app[TUS].create(forum_id, grant, length, metadata.get("filename", ""), speaker)
    location = f"/api/forums/{forum_id}/uploads/{upload.id}"
    return web.Response(status=201, headers=tus_headers(Location=location))


async def tus_head(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)
    store = request.app[TUS]
    try:
        upload = store.get(forum_id, request.match_info["upload_id"], grant)
    except RoomError as error:  # HEAD answers carry no body
        return web.Response(status=error.http_status, headers=tus_headers())
    offset = upload.length if upload.job else store.offset(upload)
    return web.Response(status=200, headers=tus_headers(**{
        "Upload-Offset": str(offset), "Upload-Length": str(upload.length)}))


async def tus_patch(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)
    if (refusal := _version_refusal(request)) is not None:
        return refusal
    store = request.app[TUS]
    upload = store.get(forum_id, request.match_info["upload_id"], grant)
    if request.content_type != "application/offset+octet-stream":
        raise RoomError("unsupported_media_type", "PATCH bodies are application/offset+octet-stream")
    offset, job = await store.patch(upload, _int_header(request, "Upload-Offset"), request)
    headers = tus_headers(**{"Upload-Offset": str(offset)})
    if job is not None:
        headers["Forumcast-Job"] = job
    return web.Response(status=204, headers=headers)


async def tus_delete(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)
    if (refusal := _version_refusal(request)) is not None:
        return refusal
    store = request.app[TUS]
    store.delete(store.get(forum_id, request.match_info["upload_id"], grant))
    return web.Response(status=204, headers=tus_headers())


async def tus_status(request: web.Request) -> web.Response:
    forum_id, grant = uploader_grant(request)
    store = request.app[TUS]
    upload = store.get(forum_id, request.match_info["upload_id"], grant)
    return json_response({"id": upload.id, "forum_id": forum_id, "length": upload.length,
                          "offset": upload.length if upload.job else store.offset(upload), "job": upload.job})


def setup_tus_routes(app: web.Application) -> None:
    """The tus routes (the store is set by the forum inputs' context)."""
    base = "/api/forums/{forum_id}/uploads"
    r = app.router
    r.add_route("OPTIONS", base, tus_options)
    r.add_post(base, tus_create)
    r.add_route("HEAD", base + "/{upload_id}", tus_head)
    r.add_patch(base + "/{upload_id}", tus_patch)
    r.add_delete(base + "/{upload_id}", tus_delete)
    r.add_get(base + "/{upload_id}", tus_status, allow_head=False)
