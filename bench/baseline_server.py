"""The baseline a user would write with aiortc alone: one MediaPlayer(decode=False)
of the pre-encoded file, a MediaRelay, one RTCPeerConnection and sender per viewer.

POST /watch?forum=F&viewer=V with an SDP offer answers the SDP answer.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRelay

from bench.loopback import loopback_configuration, restrict_ice_to_loopback, serve_until_stopped
from bench.media import player_tracks


class Baseline:
    def __init__(self, media: str) -> None:
        # loop=False: looping restarts the pts and MediaPlayer then bursts (see bench/media.py)
        self.player = MediaPlayer(media, decode=False)
        self.video, self.audio = player_tracks(self.player)
        self.relay = MediaRelay()
        self.peers: dict[str, RTCPeerConnection] = {}

    async def watch(self, request: web.Request) -> web.Response:
        viewer = request.query.get("viewer", "")
        offer = await request.text()
        pc = RTCPeerConnection(loopback_configuration())
        self.peers[viewer] = pc

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.peers.pop(viewer, None)
                await pc.close()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        pc.addTrack(self.relay.subscribe(self.video, buffered=False))
        pc.addTrack(self.relay.subscribe(self.audio, buffered=False))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"peers": len(self.peers)})

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.peers.values()), return_exceptions=True)
        self.video.stop()
        self.audio.stop()


async def serve(media: str, port: int, lifetime: float) -> None:
    restrict_ice_to_loopback()
    baseline = Baseline(media)
    app = web.Application()
    app.router.add_post("/watch", baseline.watch)
    app.router.add_get("/stats", baseline.stats)
    await serve_until_stopped(app, port, lifetime, baseline.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--media", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    asyncio.run(serve(args.media, args.port, args.lifetime))


if __name__ == "__main__":
    main()
