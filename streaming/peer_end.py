"""Why a publisher's or viewer's peer connection ended by itself, in the
words the edges give the client (docs/protocol.md "Sessions that end")."""

from __future__ import annotations

from dataclasses import dataclass

ICE_FAILED = "ice_failed"  # never connected: no candidate pair worked in time
CONNECTION_LOST = "connection_lost"  # connected, then silent, failed or closed by the peer


@dataclass(frozen=True)
class PeerEnd:
    """`code` is ICE_FAILED or CONNECTION_LOST; `message` says what
    happened and what to do, for a person."""

    code: str
    message: str

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


def never_connected(seconds: float) -> PeerEnd:
    return PeerEnd(ICE_FAILED, f"ICE did not complete within {seconds:g} s: none of the client's "
                   "candidates answered and no connectivity check of its own reached the server "
                   "(a firewall blocking UDP, or a client that never started ICE); send a new offer")


def ice_failed() -> PeerEnd:
    return PeerEnd(ICE_FAILED, "ICE or DTLS failed before media could flow; send a new offer")


def lost(state: str) -> PeerEnd:
    if state == "closed":
        return PeerEnd(CONNECTION_LOST, "the connection was closed (the client closed it, or nothing "
                       "was heard from it for too long)")
    return PeerEnd(CONNECTION_LOST, "the connection failed after media had flowed")
