"""Real aiortc peers for media tests, on 127.0.0.1 only.

`TestPublisher` sends a video whose frames carry their frame number drawn
in as black/white blocks (readable after a lossy encode and decode) plus a
tone; `TestViewer` receives, decodes and reads the numbers back. Both
gather only on loopback and use no STUN server.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import struct
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from streaming import aiortc_internals
from streaming.ice_policy import gathering_on
from streaming.offer_check import capabilities_for
from tests import aiortc_faults
from tests.eventually import eventually

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1",)
WIDTH, HEIGHT = 320, 240
BITS = 16
BAND = 32  # rows per band of bits
VIDEO_CLOCK = 90000


def draw_number(number: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A luma plane whose first band holds the number's bits (white = 1)
    and whose second band holds them inverted (a check)."""
    luma = np.full((height, width), 128, dtype=np.uint8)
    cell = width // BITS
    for bit in range(BITS):
        on = (number >> bit) & 1
        x = bit * cell
        luma[0:BAND, x : x + cell] = 235 if on else 16
        luma[BAND : 2 * BAND, x : x + cell] = 16 if on else 235
    return luma


def read_number(luma: np.ndarray) -> int | None:
    """The number drawn by draw_number, or None if the check fails."""
    cell = luma.shape[1] // BITS
    number = 0
    for bit in range(BITS):
        x = bit * cell + cell // 2
        top = int(luma[BAND // 2 - 4 : BAND // 2 + 4, x - 3 : x + 3].mean())
        bottom = int(luma[BAND + BAND // 2 - 4 : BAND + BAND // 2 + 4, x - 3 : x + 3].mean())
        if (top > 128) == (bottom > 128):
            return None
        if top > 128:
            number |= 1 << bit
    return number


class NumberedVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, fps: int = 30, offset: int = 0) -> None:
        super().__init__()
        self.fps = fps
        self.offset = offset  # lets two publishers draw distinct ranges
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self.count / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        number = self.offset + self.count
        luma = draw_number(number)
        yuv = np.concatenate(
            [luma, np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)], axis=0
        )
        frame = VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rate, samples = 48000, 960
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self.count * samples / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(samples) + self.count * samples) / rate
        pcm = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self.count * samples
        frame.time_base = fractions.Fraction(1, rate)
        self.count += 1
        return frame


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


class TestPublisher:
    """An aiortc speaker: numbered video (H.264 preferred) and a tone."""

    __test__ = False

    def __init__(self, codec: str = "h264", fps: int = 30, offset: int = 0, audio: bool = True) -> None:
        self.pc = RTCPeerConnection(_config())
        self.video_track = NumberedVideoTrack(fps=fps, offset=offset)
        self.video = self.pc.addTransceiver(self.video_track, direction="sendonly")
        self.video.setCodecPreferences(capabilities_for("video", codec))
        self.keyframe_requests = 0
        aiortc_faults.on_keyframe_request(self.video.sender, self._count_request)
        self.connected = asyncio.Event()
        if audio:
            self.pc.addTransceiver(ToneTrack(), direction="sendonly")
        self.pc.on("connectionstatechange", self._state)

    def _count_request(self) -> None:
        self.keyframe_requests += 1

    def _state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def offer(self, addresses: tuple[str, ...] = LOOPBACK) -> str:
        """The offer, gathered on `addresses` (any of 127.0.0.0/8 on Linux)."""
        with gathering_on(addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Received:
    numbers: list[int] = field(default_factory=list)
    unreadable: int = 0
    audio_frames: int = 0


class TestViewer:
    """An aiortc guest: recvonly video + audio; decodes and reads numbers."""

    __test__ = False

    def __init__(self, video: bool = True, audio: bool = True, decode: bool = True, codecs: tuple[str, ...] = (),
                 configuration: RTCConfiguration | None = None) -> None:
        self.pc = RTCPeerConnection(configuration or _config())
        self.received = Received()
        self.decode = decode
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self._frame_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.video = self.pc.addTransceiver("video", direction="recvonly") if video else None
        if self.video is not None and codecs:
            prefs = []
            for key in codecs:
                prefs += [c for c in capabilities_for("video", key) if c not in prefs]
            self.video.setCodecPreferences(prefs)
        self.audio = self.pc.addTransceiver("audio", direction="recvonly") if audio else None
        self.pc.on("connectionstatechange", self._state)
        self.pc.on("track", self._on_track)

    def _state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.failed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.decode:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    luma = frame.to_ndarray(format="gray")
                    number = read_number(luma)
                    if number is None:
                        self.received.unreadable += 1
                    else:
                        self.received.numbers.append(number)
                else:
                    self.received.audio_frames += 1
                self._frame_event.set()
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def offer(self) -> str:
        with gathering_on(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        await eventually(lambda: len(self.received.numbers) >= count, timeout=timeout,
                         what=f"{count} frames (got {len(self.received.numbers)})")

    def send_pli(self) -> None:
        """Ask the server for a keyframe (as a browser does on loss)."""
        assert self.video is not None
        receiver = self.video.receiver
        ssrcs = aiortc_faults.remote_ssrcs(receiver)
        for ssrc in ssrcs:
            asyncio.ensure_future(aiortc_internals.send_pli(receiver, ssrc))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def rtp_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(payload type, sequence number, timestamp, ssrc) of a (S)RTP
    datagram's clear header, or None for RTCP/DTLS/STUN."""
    if len(data) < 12 or not 128 <= data[0] < 192:
        return None
    pt = data[1] & 0x7F
    if 64 <= pt < 96:  # RTCP packet types 192-223 with the marker bit
        return None
    _, _, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
    return pt, seq, ts, ssrc


async def connect_viewer(plane: object, forum_id: str, viewer_id: str, viewer: TestViewer,
                         source_id: str | None = None, timeout: float = 10.0) -> str:
    answer: str = await plane.watch(forum_id, viewer_id, await viewer.offer(), source_id=source_id)  # type: ignore[attr-defined]
    await viewer.accept(answer)
    await asyncio.wait_for(viewer.connected.wait(), timeout)
    return answer


async def connect_publisher(plane: object, forum_id: str, source_id: str, publisher: TestPublisher,
                            timeout: float = 10.0, on_air: bool = True) -> None:
    """Publish; with `on_air` the program carries it (from its first
    keyframe), as the forum's switcher would decide: the media plane has no
    program policy of its own."""
    answer = await plane.publish(forum_id, source_id, await publisher.offer())  # type: ignore[attr-defined]
    if on_air:
        plane.set_program(forum_id, source_id)  # type: ignore[attr-defined]
    await publisher.accept(answer)
    await asyncio.wait_for(publisher.connected.wait(), timeout)


__all__ = [
    "TestPublisher", "TestViewer", "connect_publisher", "connect_viewer",
    "draw_number", "read_number", "rtp_header", "LOOPBACK",
]
