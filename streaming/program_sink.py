"""What a program bus feeds: the seam every program output plugs into.

A lane of a `ProgramBus` (streaming/program_bus.py) hands each packet of
its current source to its sinks, already rewritten into the lane's
continuous numbering (sequence numbers +1 per packet across cuts, 32-bit
RTP timestamps advanced by the wall-clock gap at a cut, RFC 3550 5.1).
WebRTC viewers' `Downtrack`s are sinks today; the program encoder's
`FeedEgress` (streaming/program_encoder.py) is one more, with no special
path in the bus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from streaming.rtp_source import ForwardPacket

if TYPE_CHECKING:
    from streaming.program_bus import Lane


class ProgramSink(Protocol):
    """One subscriber of one lane (video or audio).

    - `ssrc`: the SSRC the sink sends under (for logs).
    - `lane`: set by `Lane.add`/`Lane.remove` (None when detached).
    - `set_codec(key)`: the lane now carries codec family `key` ('h264',
      'vp8', 'opus'; None: nothing). A sink that cannot take it waits for
      one it can.
    - `forward(fp, seq, ts)`: one packet; `seq` (16 bit) and `ts` (32 bit,
      the codec's clock: 90 kHz video, 48 kHz Opus) are in lane space.
      Called on the event loop's hot path: must not block or await; an
      exception removes the sink from the lane.
    """

    ssrc: int
    lane: Lane | None

    def set_codec(self, key: str | None) -> None: ...

    def forward(self, fp: ForwardPacket, seq: int, ts: int) -> None: ...
