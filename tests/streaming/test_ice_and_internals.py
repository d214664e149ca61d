"""ICE address policy, and the one module that reaches aiortc's privates."""

from __future__ import annotations

import aioice
import pytest
from aiortc import RTCPeerConnection, RTCConfiguration

from streaming import aiortc_internals
from streaming.ice_policy import candidate_address, gathering_on

pytestmark = pytest.mark.timeout(60)

OFFER = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 0.0.0.0\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
    "a=candidate:2 1 udp 2122194687 192.0.2.2 50001 typ host\r\n"
    "a=candidate:3 1 udp 2122129151 4b1c8e52-3f0e-4f6a.local 50002 typ host\r\n"
    "a=candidate:4 1 udp 1685987071 203.0.113.9 50003 typ srflx raddr 192.0.2.2 rport 50001\r\n"
    "a=end-of-candidates\r\n"
)


def test_no_offer_is_refused_for_its_candidates() -> None:
    """Issue 14 item 6: candidates say where the peer may be, not where the
    server listens: only mDNS names (unresolvable from a server; the peer's
    checks become peer-reflexive candidates) and end-of-candidates (so
    aioice waits for those checks) are taken out."""
    from streaming.ice_policy import usable_offer

    used = usable_offer(OFFER)
    addresses = [candidate_address(line) for line in used.splitlines()]
    assert [a for a in addresses if a] == ["127.0.0.1", "192.0.2.2", "203.0.113.9"]
    assert "a=end-of-candidates" not in used and used.startswith("v=0\r\n")
    only_mdns = "\r\n".join(l for l in OFFER.split("\r\n") if "127.0.0.1" not in l and "192.0.2" not in l
                             and "203.0" not in l)
    assert not [a for a in map(candidate_address, usable_offer(only_mdns).splitlines()) if a]


async def test_gathering_is_restricted_to_the_given_addresses() -> None:
    connection = aioice.Connection(ice_controlling=True, components=1)
    try:
        with gathering_on(("127.0.0.1",)):
            await connection.gather_candidates()
        hosts = {c.host for c in connection.local_candidates}
        assert hosts == {"127.0.0.1"}
    finally:
        await connection.close()


async def test_an_aiortc_offer_made_on_loopback_has_only_loopback_candidates() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        with gathering_on(("127.0.0.1",)):
            await pc.setLocalDescription(await pc.createOffer())
        addresses = {candidate_address(l) for l in pc.localDescription.sdp.splitlines()} - {None}
        assert addresses == {"127.0.0.1"}
    finally:
        await pc.close()


def test_check_passes_on_the_tested_versions() -> None:
    aiortc_internals.check()


def test_check_names_what_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(aiortc_internals.TESTED, "aiortc", "0.0.1")
    with pytest.raises(RuntimeError, match="aiortc 0.0.1"):
        aiortc_internals.check()


def test_check_names_a_missing_private(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiortc.rtcrtpreceiver

    monkeypatch.delattr(aiortc.rtcrtpreceiver, "decoder_worker")
    with pytest.raises(RuntimeError, match="decoder_worker"):
        aiortc_internals.check()


@pytest.mark.parametrize("name", ["query_consent", "request_received", "data_received"])
def test_check_covers_the_liveness_seam(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """liveness_instead_of_consent replaces these aioice names: a version
    that moves one must fail at start, not silently keep RFC 7675 consent."""
    monkeypatch.delattr(aioice.ice.Connection, name)
    with pytest.raises(RuntimeError, match=name):
        aiortc_internals.check()
