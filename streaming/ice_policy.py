"""Which addresses ICE may use.

With `MediaConfig.ice_addresses` set, the server gathers host candidates
only on those addresses and ignores remote candidates outside them
(Chromium's mDNS `.local` names, other interfaces). An empty tuple means
every interface and every remote candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from streaming import aiortc_internals

logger = logging.getLogger(__name__)


@contextmanager
def gathering_on(addresses: tuple[str, ...]) -> Iterator[None]:
    """Candidates gathered inside this block are on `addresses` only."""
    with aiortc_internals.host_addresses(addresses):
        yield


def candidate_address(line: str) -> str | None:
    """The connection address of an `a=candidate:` line, or None."""
    body = line.strip()
    if body.startswith("a="):
        body = body[2:]
    if not body.startswith("candidate:"):
        return None
    parts = body.split()
    if len(parts) < 6:
        return None
    return parts[4]


def filter_remote_candidates(sdp: str, addresses: tuple[str, ...]) -> tuple[str, int]:
    """Drop remote candidates outside `addresses`. Returns the new SDP and
    how many candidate lines remain (peer-reflexive discovery still works
    with none: the remote's checks reach our sockets)."""
    if not addresses:
        kept = sum(1 for line in sdp.splitlines() if candidate_address(line) is not None)
        return sdp, kept
    allowed = set(addresses)
    out: list[str] = []
    kept = 0
    dropped = 0
    for line in sdp.splitlines():
        address = candidate_address(line)
        if address is None:
            out.append(line)
        elif address in allowed:
            out.append(line)
            kept += 1
        else:
            dropped += 1
    if dropped:
        logger.debug("ice_policy: dropped %d remote candidates outside %s", dropped, addresses)
    return "\r\n".join(out) + "\r\n", kept
