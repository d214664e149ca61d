"""A publisher process: the pre-encoded test file over WebRTC into forumcast.

aiortc with MediaPlayer(decode=False): the file's H.264 and Opus packets are
packetized, not re-encoded. POST /publish?forum=F&source=S with the offer.
Prints one JSON line once connected, then publishes until SIGTERM/lifetime.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from bench.loopback import loopback_configuration, restrict_ice_to_loopback
from bench.media import player_tracks


async def publish(url: str, forum: str, source: str, media: str, lifetime: float) -> None:
    restrict_ice_to_loopback()
    player = MediaPlayer(media, decode=False)  # no loop: see bench/media.py
    video_track, audio_track = player_tracks(player)
    pc = RTCPeerConnection(loopback_configuration())
    video = pc.addTransceiver(video_track, direction="sendonly")
    # the packets are H.264: offer H.264 only, or they could be sent under VP8's payload type
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None
    video.setCodecPreferences([c for c in capabilities.codecs if c.mimeType == "video/H264"])
    pc.addTransceiver(audio_track, direction="sendonly")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected":
            print(json.dumps({"event": "published", "source": source}), flush=True)
        elif pc.connectionState in ("failed", "closed"):
            stop.set()

    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.post(f"{url}/publish", params={"forum": forum, "source": source},
                                 data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as resp:
                answer = await resp.text()
                if resp.status not in (200, 201):
                    raise SystemExit(f"/publish answered {resp.status}: {answer[:300]}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            await asyncio.wait_for(stop.wait(), lifetime)
        except asyncio.TimeoutError:
            pass
    finally:
        await asyncio.wait_for(pc.close(), 10)
        video_track.stop()
        audio_track.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--forum", default="main")
    parser.add_argument("--source", default="speaker1")
    parser.add_argument("--media", required=True)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    asyncio.run(publish(args.url, args.forum, args.source, args.media, args.lifetime))


if __name__ == "__main__":
    main()
