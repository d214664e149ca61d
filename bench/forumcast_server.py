"""forumcast's media plane as the server under test: a tiny aiohttp app around MediaPlane.

POST /publish?forum=F&source=S  (publisher's SDP offer -> answer)
POST /watch?forum=F&viewer=V    (viewer's recvonly offer -> answer)
GET  /stats                     (MediaPlane.stats())
--cprofile PATH profiles the whole process with cProfile and dumps at exit.
"""

from __future__ import annotations

import argparse
import logging
import asyncio
import cProfile

import imageio_ffmpeg
from aiohttp import web

from bench.loopback import LOOPBACK, restrict_ice_to_loopback, serve_until_stopped
from streaming.media_config import MediaConfig
from streaming.media_error import MediaError
from streaming.media_plane import MediaPlane


class Harness:
    def __init__(self, plane: MediaPlane) -> None:
        self.plane = plane

    async def publish(self, request: web.Request) -> web.Response:
        try:
            forum, source = request.query.get("forum", "main"), request.query.get("source", "speaker1")
            answer = await self.plane.publish(forum, source, await request.text())
        except MediaError as exc:  # the harness must say why, not answer 500
            return web.json_response(exc.to_json(), status=400)
        self.plane.set_program(forum, source)  # no switcher here: the newest publisher is the program
        return web.Response(status=201, text=answer, content_type="application/sdp")

    async def watch(self, request: web.Request) -> web.Response:
        try:
            answer = await self.plane.watch(request.query.get("forum", "main"),
                                            request.query.get("viewer", ""), await request.text())
        except MediaError as exc:
            return web.json_response(exc.to_json(), status=400)
        return web.Response(status=201, text=answer, content_type="application/sdp")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.stats())


async def serve(port: int, lifetime: float, udp_port: int = 0, batch: bool = True) -> None:
    restrict_ice_to_loopback()  # belt and braces: MediaConfig.ice_addresses says the same
    plane = MediaPlane(MediaConfig(ice_addresses=(LOOPBACK,), ffmpeg=imageio_ffmpeg.get_ffmpeg_exe(),
                                   udp_port=udp_port, fanout_batch=batch))
    await plane.start()
    harness = Harness(plane)
    app = web.Application()
    app.router.add_post("/publish", harness.publish)
    app.router.add_post("/watch", harness.watch)
    app.router.add_get("/stats", harness.stats)
    await serve_until_stopped(app, port, lifetime, plane.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("--udp-port", type=int, default=0, help="all WebRTC media on this UDP port (0: a port per peer)")
    parser.add_argument("--no-batch", action="store_true", help="one Python call per viewer per packet (fanout_batch off)")
    parser.add_argument("--cprofile", default="", help="write cProfile stats here at exit")
    args = parser.parse_args()
    # viewers ended (never connected, consent lost) show in the child's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.cprofile:
        asyncio.run(serve(args.port, args.lifetime, args.udp_port, not args.no_batch))
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(serve(args.port, args.lifetime, args.udp_port, not args.no_batch))
    finally:
        profiler.disable()
        profiler.dump_stats(args.cprofile)


if __name__ == "__main__":
    main()
