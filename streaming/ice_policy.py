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
from streaming.media_error import MediaError

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


def usable_offer(sdp: str, addresses: tuple[str, ...]) -> str:
    """The offer with remote candidates outside `addresses` dropped.
    Raises MediaError("invalid_sdp") if it had candidates and none is
    usable (ICE would fail later, silently)."""
    filtered, kept = filter_remote_candidates(sdp, addresses)
    if kept == 0 and any(candidate_address(line) for line in sdp.splitlines()):
        raise MediaError(
            "invalid_sdp",
            f"the offer has no ICE candidate on {', '.join(addresses)} "
            "(mDNS .local names and other interfaces are not used)",
        )
    return filtered


def filter_remote_candidates(sdp: str, addresses: tuple[str, ...]) -> tuple[str, int]:
    """Drop remote candidates outside `addresses`. Returns the new SDP and
    how many candidate lines remain."""
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
