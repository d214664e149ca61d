"""The node's edge links: one EdgePull per forum this node serves without
hosting it (docs/DESIGN.md "Several nodes", "Edge pull").

A program viewer who lands on a node that does not host the forum is
served here: `serve(forum_id, whep_url)` starts ONE pull of the origin's
`/whep/{forum_id}` (streaming/edge_pull.py) and puts it on the forum's
program (`set_program(forum, pull.source_id)`); the edge never runs the
forum's switcher, slate or agenda, the origin's program is what it shows.

Every `check_interval_s` the links are looked over:
- a forum whose last local program viewer left `linger_s` ago: the pull
  stops (its WHEP session is DELETEd at the origin);
- `locate(forum_id)` says where the forum is hosted now: None means this
  node hosts it (it took the lease): the pull stops and the host's
  switcher sets the program; another origin URL (a takeover re-homed
  it): the pull is re-pointed there (a new pull under the same source
  id, cut in at its first keyframe).
- a live pull silent for `stall_s` whose upstream node (the origin, or
  the parent edge the origin sent it to) does not answer
  `upstream_alive(node_id)`: the pull reconnects at once (to the origin,
  which places it again), not after its own `media_timeout`; its
  viewers keep their peers and the last picture until the new
  session's first keyframe.

`token_for(forum_id)` gives the credential of each WHEP request: a short
node grant (rooms/tokens.py `issue_edge_link`) minted per request, so the
pull never expires and the origin takes no guest seat for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from rooms.errors import RoomError
from streaming import aiortc_internals
from streaming.edge_pull import EdgePull, EdgeState, FeedTarget
from streaming.lifecycle import Lifecycle
from streaming.media_config import MediaConfig
from streaming.udp_mux import SharedPort

logger = logging.getLogger(__name__)

Alive = Callable[[str], Awaitable[bool]]
"""node instance id -> whether that node is there now (signaling/node_liveness.py)."""

Locate = Callable[[str], Awaitable[str | None]]
"""forum id -> the origin's WHEP URL for it, or None when this node hosts it;
RoomError when nobody can tell now (the links keep what they have)."""


class EdgePlane(FeedTarget, Protocol):
    """What the links need of the node's media plane (MediaPlane has it)."""

    config: MediaConfig
    shared_port: SharedPort | None

    @property
    def decoders(self) -> aiortc_internals.DecoderCount: ...

    def set_program(self, forum_id: str, source_id: str | None) -> None: ...

    def program_viewers(self, forum_id: str) -> int: ...


@dataclass(frozen=True)
class EdgeLinkInfo:
    """One pull as `GET /api/edges` shows it: the origin's WHEP URL, the
    pull's state and why it is not live ("" while live); `parent` the
    instance id of the node its session is with (the origin, or the edge
    the origin sent it to: rooms/edge_tree.py) and `depth` this node's
    depth in the forum's tree (parent's + 1), None until a node answered."""

    forum_id: str
    whep_url: str
    state: str
    reason: str
    parent: str | None = None
    depth: int | None = None


class _State(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class EdgeLinks(Lifecycle[_State]):
    """This node's pulls by forum. Construct, `start()`, `serve()` per
    program viewer, `stop()` (ends every pull)."""

    def __init__(
        self,
        plane: EdgePlane,
        locate: Locate,
        token_for: Callable[[str], str],
        *,
        linger_s: float = 5.0,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        upstream_alive: Alive | None = None,
        stall_s: float = 1.0,
    ) -> None:
        super().__init__(_State.RUNNING, "EdgeLinks")
        self._plane = plane
        self._locate = locate
        self._token_for = token_for
        self.linger_s = linger_s
        self._interval = check_interval_s
        self._clock = clock
        self._upstream_alive = upstream_alive
        self.stall_s = stall_s
        self._pulls: dict[str, EdgePull] = {}
        self._idle_since: dict[str, float] = {}
        self._lock = asyncio.Lock()  # one change of the pulls at a time

    @property
    def state(self) -> str:
        return self._state.value

    async def start(self) -> None:
        self._start_task(self._run(), "edge-links")

    def links(self) -> list[EdgeLinkInfo]:
        """The pulls now, by forum id."""
        return [EdgeLinkInfo(f, p.whep_url, p.state.value, p.reason,
                             p.upstream.node_id if p.upstream is not None else None,
                             p.upstream.depth + 1 if p.upstream is not None else None)
                for f, p in sorted(self._pulls.items())]

    def pulling(self, forum_id: str) -> bool:
        return forum_id in self._pulls

    async def serve(self, forum_id: str, whep_url: str) -> None:
        """Serve `forum_id`'s program here from `whep_url` (the origin's
        `/whep/{forum_id}`): start the pull if there is none (or re-point
        it if it pulls another URL) and put it on the program. Returns at
        once; the viewer sees the slate-free program from the pull's first
        keyframe. RoomError("unavailable") once the links are stopping."""
        if self._state is not _State.RUNNING:
            raise RoomError("unavailable", "this node is shutting down")
        async with self._lock:
            self._idle_since.pop(forum_id, None)
            pull = self._pulls.get(forum_id)
            if pull is not None and pull.whep_url == whep_url:
                return
            if pull is not None:
                logger.info("EdgeLinks: forum %s moved: re-pointing its pull %s -> %s",
                            forum_id, pull.whep_url, whep_url)
                await self._end(forum_id)
            await self._begin(forum_id, whep_url)

    async def drop(self, forum_id: str) -> None:
        """Stop the forum's pull (this node hosts it now; idempotent)."""
        async with self._lock:
            await self._end(forum_id)

    async def _begin(self, forum_id: str, whep_url: str) -> None:
        plane = self._plane
        pull = EdgePull(forum_id, whep_url, lambda: self._token_for(forum_id), plane, plane.config,
                        plane.decoders, shared_port=plane.shared_port)
        self._pulls[forum_id] = pull
        await pull.start()
        plane.set_program(forum_id, pull.source_id)  # the origin's program is ours
        logger.info("EdgeLinks: forum %s served here through a pull of %s", forum_id, whep_url)

    async def _end(self, forum_id: str) -> None:
        self._idle_since.pop(forum_id, None)
        pull = self._pulls.pop(forum_id, None)
        if pull is not None:
            await pull.stop()
            logger.info("EdgeLinks: forum %s: pull of %s ended", forum_id, pull.whep_url)

    # --- the look-over ---------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for forum_id in list(self._pulls):
                try:
                    await self.check(forum_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("EdgeLinks: checking forum %s failed", forum_id)

    async def check(self, forum_id: str) -> None:
        """One look at one forum's pull (see the module docstring)."""
        if forum_id not in self._pulls:
            return
        now = self._clock()
        if self._plane.program_viewers(forum_id) == 0:
            since = self._idle_since.setdefault(forum_id, now)
            if now - since >= self.linger_s:
                logger.info("EdgeLinks: forum %s has had no viewer here for %g s", forum_id, self.linger_s)
                await self.drop(forum_id)
            return
        self._idle_since.pop(forum_id, None)
        await self._check_upstream(forum_id)
        try:
            url = await self._locate(forum_id)
        except RoomError as exc:
            logger.debug("EdgeLinks: forum %s: where is it hosted? %s", forum_id, exc.message)
            return
        if url is None:
            await self.drop(forum_id)  # hosted here now: the host's switcher sets the program
        else:
            pull = self._pulls.get(forum_id)
            if pull is not None and pull.whep_url != url:
                await self.serve(forum_id, url)

    async def _check_upstream(self, forum_id: str) -> None:
        pull = self._pulls.get(forum_id)
        alive = self._upstream_alive
        if pull is None or alive is None or pull.state is not EdgeState.LIVE or pull.upstream is None:
            return
        if time.monotonic() - pull.last_media_at < self.stall_s:  # the packets' own clock
            return
        upstream = pull.upstream.node_id
        if not await alive(upstream):
            logger.info("EdgeLinks: forum %s: node %s we pull from is gone; pulling again", forum_id, upstream)
            pull.reconnect(f"node {upstream} we pulled from stopped answering")

    # --- stop --------------------------------------------------------------

    def _stop_begins(self) -> None:
        self._set_state(_State.STOPPING)

    async def _stop(self) -> None:
        task = self._own_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            for forum_id in list(self._pulls):
                await self._end(forum_id)
        self._set_state(_State.STOPPED)


__all__ = ["Alive", "EdgeLinkInfo", "EdgeLinks", "EdgePlane", "EdgeState", "Locate"]
