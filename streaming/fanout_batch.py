"""A lane's viewers sent in one C call per packet (streaming._fanout).

The per-packet Python path (Downtrack.forward) costs a Python call, a
header pack, a cffi protect call and a socket method per viewer. A
`LaneBatch` holds, for each viewer that is forwarding normally, what the
C side needs (its outbound srtp_t, socket, SSRC, payload type and
sequence offset); `send()` then hands one packet of the lane to every
member in one call: header rewrite, SRTP protect in place and send(2) on
a connected socket, or one sendmmsg(2) per shared socket (`udp_port`).

Only the steady state is batched. A viewer waiting for its first
keyframe, dropping video until the next one, receiving an upstream
retransmission (a late packet) or whose send path is TURN-relayed stays
on the Python path; the lane moves it in once it forwards normally and
out when that ends (a codec it cannot take, a socket that would block,
a re-nominated ICE pair, leaving).

`available()` is False where the extension was not built (no C compiler
at install): lanes then use the Python path only, as with
`fanout_batch = false`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from streaming.aiortc_internals import SRTP_PROTECT_ADDRESS
from streaming.rtp_source import ForwardPacket

if TYPE_CHECKING:
    from streaming.downtrack import Downtrack

try:
    from streaming import _fanout
except ImportError:  # built optionally (setup.py): no compiler, no batch
    _fanout = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


def available() -> bool:
    """True when the C fan-out extension is importable."""
    return _fanout is not None


class LaneBatch:
    """The batched downtracks of one lane, keyed by id(downtrack)."""

    __slots__ = ("_fanout", "members")

    def __init__(self) -> None:
        if _fanout is None:
            raise RuntimeError("streaming._fanout is not built")
        self._fanout = _fanout.Fanout(SRTP_PROTECT_ADDRESS)
        self.members: dict[int, Downtrack] = {}

    def __len__(self) -> int:
        return len(self.members)

    def join(self, dt: Downtrack) -> bool:
        """Batch `dt`, which `dt.can_batch()` said may be; False if the
        socket refuses (it stays on the Python path)."""
        path, pt = dt.path, dt.pt
        assert path is not None and pt is not None  # can_batch()
        try:
            self._fanout.add(
                id(dt), path.srtp_address, path.fd, path.remote_addr if path.shared else None,
                dt.ssrc, pt, dt.seq_off,
            )
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("downtrack %#x stays on the per-packet path: %s", dt.ssrc, exc)
            return False
        self.members[id(dt)] = dt
        dt.batch = self
        return True

    def leave(self, dt: Downtrack) -> None:
        """Take `dt` out; its counts move to its own counters."""
        if self.members.pop(id(dt), None) is None:
            return
        packets, octets, errors, would_block = self._fanout.remove(id(dt))
        dt.batch = None
        dt.add_counts(packets, octets, errors, would_block)

    def set_pt(self, dt: Downtrack, pt: int) -> None:
        self._fanout.set_pt(id(dt), pt)

    def counts(self, dt: Downtrack) -> tuple[int, int, int, int]:
        """(packets, octets, send errors, datagrams dropped because the socket would block) while batched."""
        return self._fanout.counts(id(dt))

    def send(self, fp: ForwardPacket, seq: int, ts: int) -> list[Downtrack]:
        """`fp` as lane packet (`seq`, `ts`) to every member; the members
        whose datagram was dropped because their socket would block."""
        blocked = self._fanout.send(fp.payload, fp.marker, seq, ts)
        if blocked is None:
            return []
        return [self.members[key] for key in blocked if key in self.members]

    def close(self) -> None:
        for dt in list(self.members.values()):
            self.leave(dt)

    def stats(self) -> dict[str, int]:
        return self._fanout.stats()
