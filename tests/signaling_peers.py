"""aiortc peers for the signaling tests, confined to 127.0.0.1.

`ViewerPeer` makes a recvonly audio+video offer and counts the frames it
decodes (so a test proves media is decodable, not just that packets
arrive). `PublisherPeer` sends aiortc's synthetic video and audio, H.264
preferred. Both gather candidates on loopback only
(streaming.ice_policy.gathering_on), never on eth0; waits are on
conditions with timeouts, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack, VideoStreamTrack

from streaming.ice_policy import candidate_address, gathering_on
from tests.eventually import eventually

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1",)


def candidate_addresses(sdp: str) -> list[str]:
    """Every ICE candidate address in an SDP."""
    return [a for line in sdp.splitlines() if (a := candidate_address(line)) is not None]


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.value += 1
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[int], bool], timeout: float) -> int:
        """The count once `predicate(count)` holds (tests/eventually.py's deadline and message)."""
        await eventually(lambda: predicate(self.value), timeout=timeout, what=f"frame count (now {self.value})")
        return self.value


class ViewerPeer:
    """A recvonly viewer that decodes what it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.video_frames = _Counter()
        self.audio_frames = _Counter()
        self.frame_size: tuple[int, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        counter = self.video_frames if track.kind == "video" else self.audio_frames
        self._tasks.append(asyncio.create_task(self._read(track, counter)))

    async def _read(self, track: MediaStreamTrack, counter: _Counter) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frame_size = (frame.width, frame.height)
                await counter.bump()

    async def offer(self) -> str:
        with gathering_on(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        with gathering_on(LOOPBACK):
            await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def wait_video(self, frames: int, timeout: float = 20.0) -> int:
        return await self.video_frames.wait_until(lambda n: n >= frames, timeout)

    async def wait_frame_size(self, size: tuple[int, int], timeout: float = 20.0) -> None:
        """Until a decoded video frame has this size (the program may start
        on the slate and cut to the source at its next keyframe)."""
        await self.video_frames.wait_until(lambda _: self.frame_size == size, timeout)

    async def wait_audio(self, frames: int, timeout: float = 20.0) -> int:
        return await self.audio_frames.wait_until(lambda n: n >= frames, timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


class PublisherPeer:
    """Sends aiortc's synthetic picture and tone, H.264 first."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.video = VideoStreamTrack()
        self.audio = AudioStreamTrack()
        video = self.pc.addTransceiver(self.video, direction="sendonly")
        self.pc.addTransceiver(self.audio, direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in codecs if c.mimeType.lower() == "video/h264"]
        video.setCodecPreferences(h264 + [c for c in codecs if c not in h264])
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def offer(self) -> str:
        with gathering_on(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        with gathering_on(LOOPBACK):
            await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def close(self) -> None:
        await self.pc.close()
