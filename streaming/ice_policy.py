"""Which addresses ICE may use, and what of an offer's candidates the
server keeps.

`MediaConfig.ice_addresses` restricts only the server's own gathering
(host candidates on those addresses; an empty tuple means every
interface). It says where the server listens, not where peers may be: an
offer is never refused for its candidates. The server pairs every remote
candidate it can and learns peer-reflexive ones from the checks peers
send (RFC 8445 s7.3.1.3), which is how offers with no candidates (OBS),
with only mDNS names (browsers) or with addresses the server cannot
reach still connect. A peer that never completes ICE is ended after
`MediaConfig.ice_timeout` with the reason "ice_failed".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from streaming import aiortc_internals
from streaming.udp_mux import SharedPort

logger = logging.getLogger(__name__)


@contextmanager
def gathering_on(addresses: tuple[str, ...], shared: SharedPort | None = None) -> Iterator[None]:
    """Candidates gathered inside this block are on `addresses` only, and
    on the node's one UDP port if `shared` is given (streaming/udp_mux.py)."""
    with aiortc_internals.host_addresses(addresses), aiortc_internals.shared_port(shared):
        yield


def _candidate_fields(line: str) -> list[str] | None:
    body = line.strip()
    if body.startswith("a="):
        body = body[2:]
    if not body.startswith("candidate:"):
        return None
    parts = body.split()
    return parts if len(parts) >= 6 else None


def candidate_address(line: str) -> str | None:
    """The connection address of an `a=candidate:` line, or None."""
    parts = _candidate_fields(line)
    return parts[4] if parts is not None else None


def candidate_transport(line: str) -> str | None:
    """The transport ("udp", "tcp") of an `a=candidate:` line, or None."""
    parts = _candidate_fields(line)
    return parts[2].lower() if parts is not None else None


def usable_offer(sdp: str) -> str:
    """The offer as the server's ICE agent should see it; never raises.

    - mDNS `.local` candidates are dropped: a server cannot resolve a
      browser's mDNS names (draft-ietf-mmusic-mdns-ice-candidates s3.2.2
      expects the peer to be reached through its checks instead), and
      aioice would multicast queries for each.
    - `a=end-of-candidates` is dropped, so that aioice keeps waiting for
      the peer's checks (peer-reflexive candidates) when none of the
      listed candidates can be paired, instead of failing at once; the
      wait is bounded by `MediaConfig.ice_timeout`.
    - TCP candidates are dropped: the server's ICE-TCP candidates are
      passive only (streaming/ice_tcp.py) and it never connects out; a
      peer's active candidate (port 9, RFC 6544 s4.5) reaches us through
      its checks on the connection it opens, as a peer-reflexive one.
    """
    out: list[str] = []
    dropped = 0
    for line in sdp.splitlines():
        address = candidate_address(line)
        if address is not None and address.lower().endswith(".local"):
            dropped += 1
            continue
        if candidate_transport(line) == "tcp":
            continue
        if line.strip() == "a=end-of-candidates":
            continue
        out.append(line)
    if dropped:
        logger.debug("ice_policy: %d mDNS candidates left to peer-reflexive discovery", dropped)
    return "\r\n".join(out) + "\r\n"
