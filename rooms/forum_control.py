"""The seams between the edges (signaling/) and the node that hosts a
forum (streaming/forum_hosts.py): what an operator can ask of a forum,
and what the hosts tell the clients.

`ForumControl` is the one facade signaling calls for every operator
command. Arguments are plain data (forum id, `Grant`, str/int/float/bool,
None) and results are plain data too (`ProgramState`, a frozen dataclass
of primitives: `dataclasses.asdict` and `ProgramState(**d)` round-trip
it; or `JsonObject`), so a forwarding implementation can carry a command
to the node that hosts the forum and its answer back (over the bus) with
the same Protocol. Every method raises `RoomError` only (forbidden,
not_found, invalid, conflict, too_many_sources, unavailable), never a
media-layer exception: the edges turn it into the same JSON error
everywhere.

`ForumNotifier` is what the hosts push to clients: it only enqueues
(Galène's rule: a call from the forum never waits on a socket).
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

from rooms.models import ProgramState
from rooms.tokens import Grant

# a JSON object: str keys; values str, int, float, bool, None, or lists and
# objects of them (json.dumps takes it as it is; a reader narrows each value)
JsonObject: TypeAlias = dict[str, object]


class ForumControl(Protocol):
    """Operator commands on one forum, wherever it is hosted.

    Program (the vision mixer; rooms/program_policy.py decides, the rooms
    authorize and record):
    - `take(forum_id, grant, source_id, expected_version)`: put a live
      source on air (None: what is in preview, swapped as on a vision
      mixer). conflict: not live, or `expected_version` is stale.
    - `take_preview`, `cut_to_slate`, `set_preview` (None clears it),
      `set_manual` (True: the agenda takes nothing by itself).

    Inputs:
    - `ingest(forum_id, grant, reveal)`: the venue's RTMP/SRT addresses,
      starting the forum's listeners on first ask; the stream key (and the
      URLs holding it) only with `reveal`, else null with `keys_hidden`.
    - `start_playout(forum_id, grant, media_id, take, audio_track)`:
      {"playout": <playout>, "program": asdict(ProgramState) | None (set
      when `take` put it on air)}; `stop_playout`, `restart_playout`
      ({"playout": <playout>}), `playouts` ({"forum_id", "playouts": [...]}).
      A <playout> is {"source_id", "media", "name", "file", "audio_track",
      "duration" (s), "state", "position" (s), "by"}.

    Outputs:
    - `restreams(forum_id, grant)`: {"forum_id", "restreams": [<status>]};
      `add_restream` -> <status> (its "id"), `start_restream`,
      `stop_restream` -> <status>, `remove_restream`. A <status> never
      holds the stream key.
    - `start_recording(forum_id, grant, session)`, `stop_recording` ->
      <recording> (recording_api.py's shape).
    """

    async def take(self, forum_id: str, grant: Grant, source_id: str | None = None,
                   expected_version: int | None = None) -> ProgramState: ...

    async def take_preview(self, forum_id: str, grant: Grant) -> ProgramState: ...

    async def cut_to_slate(self, forum_id: str, grant: Grant) -> ProgramState: ...

    async def set_preview(self, forum_id: str, grant: Grant, source_id: str | None) -> ProgramState: ...

    async def set_manual(self, forum_id: str, grant: Grant, manual: bool) -> ProgramState: ...

    async def ingest(self, forum_id: str, grant: Grant, reveal: bool = False) -> JsonObject: ...

    async def start_playout(self, forum_id: str, grant: Grant, media_id: str, take: bool = False,
                            audio_track: int | None = None) -> JsonObject: ...

    async def stop_playout(self, forum_id: str, grant: Grant, source_id: str) -> None: ...

    async def restart_playout(self, forum_id: str, grant: Grant, source_id: str) -> JsonObject: ...

    async def playouts(self, forum_id: str, grant: Grant) -> JsonObject: ...

    async def restreams(self, forum_id: str, grant: Grant) -> JsonObject: ...

    async def add_restream(self, forum_id: str, grant: Grant, name: str, url: str,
                           stream_key: str) -> JsonObject: ...

    async def start_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject: ...

    async def stop_restream(self, forum_id: str, grant: Grant, restream_id: str) -> JsonObject: ...

    async def remove_restream(self, forum_id: str, grant: Grant, restream_id: str) -> None: ...

    async def start_recording(self, forum_id: str, grant: Grant, session: str | None = None) -> JsonObject: ...

    async def stop_recording(self, forum_id: str, grant: Grant) -> JsonObject: ...


class ForumNotifier(Protocol):
    """Pushes to a forum's clients. Each call only enqueues (it must not
    block or raise); the edge sends it to the forum's socket.io room."""

    def playouts(self, forum_id: str, body: JsonObject) -> None:
        """What plays now ({"forum_id", "playouts": [...]}), after a playout
        starts, restarts or ends."""

    def restreams(self, forum_id: str, body: JsonObject) -> None:
        """Every restream status ({"forum_id", "restreams": [...]}, without
        URLs) after a change, and each second while one is live."""

    def recording(self, forum_id: str, body: JsonObject) -> None:
        """A <recording> after each change of its state."""

    def media_job(self, forum_id: str, body: JsonObject, finished: bool) -> None:
        """A conversion job's progress; `finished`: the library changed."""
