"""What every source is to the node that runs it, whatever brings its
media: a browser's or an encoder's WebRTC/WHIP publish
(streaming/publisher.py), the venue's RTMP/SRT ingest
(streaming/venue_ingest.py), a recorded video's playout
(streaming/playout.py), the forum's slate (streaming/slate.py), and an
edge's pull of another node's program (streaming/edge_pull.py).

Each has its rooms id, a lifecycle (streaming/lifecycle.py: `state`, state
listeners, one idempotent `stop()`), and hands the media plane its
packets as a `SourceFeed` (streaming/rtp_source.py: one RtpSource per
kind), which is all the fan-out ever sees of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol


class SourceInput(Protocol):
    """A source's input side, as a host or the plane holds it."""

    source_id: str

    @property
    def state(self) -> str: ...

    def add_state_listener(self, listener: Callable[[Any], None]) -> Callable[[], None]: ...

    async def stop(self) -> None: ...


if TYPE_CHECKING:  # mypy checks each kind of source has the shape; nothing is imported at run time
    from streaming.edge_pull import EdgePull
    from streaming.playout import FilePlayout
    from streaming.publisher import WebRtcPublisher
    from streaming.slate import Slate
    from streaming.venue_ingest import VenueIngest

    _KINDS: tuple[type[SourceInput], ...] = (WebRtcPublisher, VenueIngest, FilePlayout, Slate, EdgePull)
