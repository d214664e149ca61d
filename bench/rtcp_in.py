"""What one viewer's incoming RTCP datagram costs the server, old path vs lean path.

    python -m bench.rtcp_in

One forumcast viewer connected over loopback (aiortc client, no media).
The client's SRTCP receiver reports (two report blocks, as the light
viewer sends) are handed to the server's socket protocol one at a time,
each followed by a loop turn, and the server process's CPU time is
divided by their count:

    aioice+aiortc: StunProtocol parses as STUN, queues for the DTLS task,
                   which unprotects, builds RTCP objects and routes them
    lean:          first byte routes to ViewerRtcp (unprotect + struct reads)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from bench.aiortc_reach import wire_path
from bench.loopback import LOOPBACK, loopback_configuration, restrict_ice_to_loopback
from streaming.ice_policy import gathering_on
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def measure(count: int) -> dict[str, float]:
    plane = MediaPlane(MediaConfig(ice_addresses=(LOOPBACK,)))
    await plane.start()
    client = RTCPeerConnection(loopback_configuration())
    try:
        client.addTransceiver("video", direction="recvonly")
        client.addTransceiver("audio", direction="recvonly")
        connected = asyncio.Event()
        client.on("connectionstatechange",
                  lambda: connected.set() if client.connectionState == "connected" else None)
        with gathering_on((LOOPBACK,)):
            await client.setLocalDescription(await client.createOffer())
        answer = await plane.watch("main", "v0", client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(connected.wait(), 10)
        viewer = plane._viewers["v0"]  # a benchmark's reach into the plane: no public lookup
        for _ in range(100):
            if viewer.feedback is not None:
                break
            await asyncio.sleep(0.05)
        assert viewer.feedback is not None and viewer._pc is not None
        server = wire_path(viewer._pc)
        session = wire_path(client).tx_srtp()
        assert session is not None
        ssrcs = [dt.ssrc for dt in viewer.downtracks()]
        rr = bytes(RtcpRrPacket(ssrc=1, reports=[
            RtcpReceiverInfo(ssrc=s, fraction_lost=0, packets_lost=0, highest_sequence=1000, jitter=3,
                             lsr=0, dlsr=0) for s in ssrcs]))
        receive = server.protocol.datagram_received
        addr = server.remote_addr
        results: dict[str, float] = {}
        for name in ("lean", "aioice+aiortc", "lean again"):
            if name == "aioice+aiortc":
                assert viewer._unroute is not None
                viewer._unroute()  # back to aioice's and aiortc's own path
                viewer._unroute = None
            elif name == "lean again":
                viewer._route_feedback(next(iter(viewer._senders.values())))
            receive = server.protocol.datagram_received
            packets = [session.protect_rtcp(rr) for _ in range(count)]
            await _turns(10)
            before = viewer.feedback.received
            start = time.process_time()
            for data in packets:
                receive(data, addr)
                await _turns(2)  # let aiortc's DTLS task take it, as it would between datagrams
            await _turns(10)
            results[name] = 1e6 * (time.process_time() - start) / count
            if name != "aioice+aiortc":
                assert viewer.feedback.received - before == count, "the lean path did not read them all"
        return results
    finally:
        await client.close()
        await plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    restrict_ice_to_loopback()
    for name, us in asyncio.run(measure(args.count)).items():
        print(f"{name:14s} {us:6.1f} us per incoming receiver report (incl. 2 loop turns)")


if __name__ == "__main__":
    main()
