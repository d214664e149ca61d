"""A forum's program outputs on this node: its program encoder, started
only while some output needs it, and the outputs fed from its tee
(restream destinations now; HLS and the recorder plug in the same way).

`ProgramOutputs` holds one `ForumOutputs` per forum that has an output.
Destinations come from the event file (`[[forums.restreams]]`, key from
the environment variable `key_env`) and from operators at run time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from rooms.models import RestreamDestination
from streaming.end_of_input import end_reader
from streaming.program_bus import ProgramBus
from streaming.program_encoder import OutputProfile, ProgramEncoder
from streaming.restream import Restream, RestreamError, RestreamStatus

__all__ = ["ForumOutputs", "OutputProfile", "ProgramOutputs", "RestreamNotFound", "StatusListener"]

logger = logging.getLogger(__name__)

StatusListener = Callable[[str, RestreamStatus | None, str], None]  # (forum_id, status|None=removed, id)
_NAME = re.compile(r"^.{1,80}$")


class RestreamNotFound(KeyError):
    """No destination with that id in that forum."""


def _output_name(restream_id: str) -> str:
    return "r" + hashlib.sha256(restream_id.encode()).hexdigest()[:12]


class ForumOutputs:
    """One forum's encoder and destinations. `bus` is the forum's program."""

    def __init__(self, forum_id: str, bus: ProgramBus, profile: OutputProfile, *,
                 ffmpeg_path: str = "", on_status: StatusListener | None = None,
                 on_need: Callable[[str], None] | None = None, private_root: Path | None = None) -> None:
        self.forum_id = forum_id
        self._private_root = private_root
        self._on_need = on_need
        self.bus = bus
        self.profile = profile
        self._ffmpeg = ffmpeg_path
        self._on_status = on_status
        self.encoder: ProgramEncoder | None = None
        self.restreams: dict[str, Restream] = {}
        self.users: dict[str, str] = {}  # other outputs holding the encoder (recorder, HLS) -> their tee output
        self._restream_outputs: dict[str, str] = {}  # restream id -> its tee output's URL
        self._lock = asyncio.Lock()

    def _source_url(self) -> str:
        assert self.encoder is not None, "no encoder while a restream runs"
        return self.encoder.url

    async def _need_encoder(self) -> None:
        if self.encoder is None:
            if self._on_need is not None:
                self._on_need(self.forum_id)  # e.g. start the forum's slate: the program is never empty
            self.encoder = ProgramEncoder(self.forum_id, self.bus, self.profile, ffmpeg_path=self._ffmpeg,
                                          private_root=self._private_root)
            await self.encoder.start()

    async def _maybe_stop_encoder(self) -> None:
        if self.encoder is not None and not self.users and not any(r.running for r in self.restreams.values()):
            encoder, self.encoder = self.encoder, None
            await encoder.stop()

    async def acquire(self, user: str) -> str:
        """Hold the encoder for another output; the URL of a tee output of
        its own to read (a Unix socket in the encoder's private directory)."""
        async with self._lock:
            output = self.users.get(user) or f"u{secrets.token_hex(4)}"
            self.users[user] = output
            await self._need_encoder()
            assert self.encoder is not None
            return await self.encoder.tee.open_output(output)

    async def release(self, user: str) -> None:
        """Let go of the encoder: the user's tee output ends first (its
        reader sees end of input), then the encoder stops if nobody else
        needs it. Idempotent."""
        async with self._lock:
            output = self.users.pop(user, None)
            if output is not None and self.encoder is not None:
                self.encoder.tee.close_output(output)
            await self._maybe_stop_encoder()

    def _status(self, status: RestreamStatus) -> None:
        if self._on_status is not None:
            self._on_status(self.forum_id, status, status.id)

    def add(self, name: str, url: str, stream_key: str, restream_id: str | None = None) -> Restream:
        """A new destination (idle). Raises RestreamError (bad name/URL/key)."""
        name = name.strip()
        if not _NAME.match(name):
            raise RestreamError("name must be 1 to 80 characters")
        if not stream_key.strip() or len(stream_key) > 512 or any(c.isspace() for c in stream_key.strip()):
            raise RestreamError("stream_key must be 1 to 512 characters without spaces")
        restream_id = restream_id or secrets.token_hex(4)
        if restream_id in self.restreams:
            raise RestreamError(f"a restream {restream_id!r} exists in this forum")
        restream = Restream(restream_id, name, url, stream_key,
                            source_url=lambda: self._restream_outputs.get(restream_id) or self._source_url(),
                            on_status=self._status, private_root=self._private_root)
        self.restreams[restream_id] = restream
        self._status(restream.status())
        return restream

    def get(self, restream_id: str) -> Restream:
        try:
            return self.restreams[restream_id]
        except KeyError:
            raise RestreamNotFound(restream_id) from None

    async def start(self, restream_id: str) -> Restream:
        restream = self.get(restream_id)
        async with self._lock:
            await self._need_encoder()
            assert self.encoder is not None
            if not restream.running:
                self._restream_outputs[restream_id] = await self.encoder.tee.open_output(_output_name(restream_id))
            await restream.start()
        return restream

    async def _stop_restream(self, restream: Restream, *, close: bool = False) -> None:
        """Its push ends by the end of its input (its own tee output)."""

        async def end_input() -> None:
            if self._restream_outputs.pop(restream.id, None) is not None and self.encoder is not None:
                self.encoder.tee.close_output(_output_name(restream.id))

        await end_reader(restream.close() if close else restream.stop(), end_input())

    async def stop(self, restream_id: str) -> Restream:
        restream = self.get(restream_id)
        async with self._lock:
            await self._stop_restream(restream)
            await self._maybe_stop_encoder()
        return restream

    async def remove(self, restream_id: str) -> None:
        restream = self.get(restream_id)
        async with self._lock:
            del self.restreams[restream_id]
            await self._stop_restream(restream, close=True)
            await self._maybe_stop_encoder()
        if self._on_status is not None:
            self._on_status(self.forum_id, None, restream_id)

    def statuses(self) -> list[RestreamStatus]:
        return [r.status() for r in self.restreams.values()]

    async def close(self) -> None:
        async with self._lock:
            self.users.clear()
            await asyncio.gather(*(self._stop_restream(r, close=True) for r in self.restreams.values()))
            await self._maybe_stop_encoder()


class ProgramOutputs:
    """Every forum's outputs on this node. `bus_for(forum_id)` gives a
    forum's program bus (MediaPlane.program_bus)."""

    def __init__(self, bus_for: Callable[[str], ProgramBus], profile: OutputProfile, *,
                 ffmpeg_path: str = "", on_need: Callable[[str], None] | None = None,
                 private_root: Path | None = None) -> None:
        self.private_root = private_root  # where encoders make their private directories (see private_directory)
        self._bus_for = bus_for
        self._on_need = on_need
        self.profile = profile
        self._ffmpeg = ffmpeg_path
        self.forums: dict[str, ForumOutputs] = {}
        self._listeners: list[StatusListener] = []

    def add_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def _notify(self, forum_id: str, status: RestreamStatus | None, restream_id: str) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(forum_id, status, restream_id)
            except Exception:
                logger.exception("ProgramOutputs listener failed")

    def forum(self, forum_id: str) -> ForumOutputs:
        outputs = self.forums.get(forum_id)
        if outputs is None:
            outputs = ForumOutputs(forum_id, self._bus_for(forum_id), self.profile,
                                   ffmpeg_path=self._ffmpeg, on_status=self._notify, on_need=self._on_need,
                                   private_root=self.private_root)
            self.forums[forum_id] = outputs
        return outputs

    def load_event_destinations(self, forum_id: str, destinations: tuple[RestreamDestination, ...],
                                environ: Mapping[str, str]) -> list[str]:
        """Add the event file's destinations (idle). Returns the ids of
        those skipped because their key variable is unset (a warning each;
        the variable's name is logged, never a value)."""
        skipped = []
        for destination in destinations:
            key = environ.get(destination.key_env or "", "")
            if not key:
                logger.warning("restream %s/%s: environment variable %s is not set: not added",
                               forum_id, destination.id, destination.key_env)
                skipped.append(destination.id)
                continue
            self.forum(forum_id).add(destination.name, destination.url, key, destination.id)
        return skipped

    async def close_forum(self, forum_id: str) -> None:
        """Stop one forum's outputs and forget them (its host stopped)."""
        outputs = self.forums.pop(forum_id, None)
        if outputs is not None:
            await outputs.close()

    async def close(self) -> None:
        await asyncio.gather(*(f.close() for f in self.forums.values()))
