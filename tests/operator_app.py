"""The whole node in-process for the operator tests: build_app plus
whatever it does not wire yet (socket.io, media plane, WHIP/WHEP, pages,
the operator side), served on a free loopback port with ICE on 127.0.0.1
only. In-process so a test can move the agenda clock; everything stops
when the context exits (each ffmpeg child is reaped by its owner).

Also: media helpers (test videos made with ffmpeg, sized publishers, a
viewer that records each decoded frame's size and timestamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy
import socketio
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack, VideoStreamTrack

from config.settings import Settings, ffmpeg_path
from rooms.agenda import AgendaClock
from rooms.models import Event, Role
from rooms.tokens import TokenService
from signaling.app import build_app
from signaling.app_keys import AGENDA, EVENT, SIO
from tests.processes import free_port, free_port_block
from tests.signaling_peers import PublisherPeer, ViewerPeer

ACK_TIMEOUT = 20.0


@dataclass
class Node:
    app: web.Application
    runner: web.AppRunner
    port: int
    tokens: TokenService

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: Role | str, forums: list[str] | None = None, name: str = "Op") -> str:
        return self.tokens.issue(role, forums, name, ttl_seconds=3600)


def _wire_missing(app: web.Application) -> None:
    from signaling import hosting, media_bridge, operator_api

    if SIO not in app:
        from signaling.pages import setup_pages
        from signaling.sio_server import setup_socketio
        from signaling.whep import setup_whip_whep

        setup_socketio(app)
        media_bridge.setup_media_plane(app)
        setup_whip_whep(app)
        setup_pages(app)
    if hosting._hosting_ctx not in app.cleanup_ctx:
        hosting.setup_hosting(app)
        operator_api.setup_operator(app)


@contextlib.asynccontextmanager
async def running_node(tmp: Path, *, event: Event | None = None, agenda_now: Callable[..., Any] | None = None,
                       slate_grace_ms: int = 1000, **settings_overrides: Any) -> AsyncIterator[Node]:
    secret = settings_overrides.pop("token_secret", None) or secrets.token_urlsafe(48)  # nodes of one event share it
    settings_overrides.setdefault("record_sessions", False)  # no encoder behind other tests' agendas
    settings = Settings(host="127.0.0.1", port=free_port(), data_dir=tmp, token_secret=secret,
                        ice_addresses=("127.0.0.1",), rtmp_port=free_port_block(32), srt_port=free_port_block(32),
                        udp_port=settings_overrides.pop("udp_port", free_port_block(1)),
                        node_id=f"op-test-{secrets.token_hex(3)}", slate_grace_ms=slate_grace_ms,
                        **settings_overrides)
    app = build_app(settings)
    if event is not None:
        app[EVENT] = event
        app[AGENDA] = AgendaClock(event)
    if agenda_now is not None:
        app[AGENDA] = AgendaClock(app[EVENT], now=agenda_now)
    _wire_missing(app)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", settings.port)
        await site.start()
        yield Node(app, runner, settings.port, TokenService(secret))
    finally:
        await runner.cleanup()


# --- socket.io ------------------------------------------------------------------------


class SioClient:
    """A socket.io client that records pushes by event name."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.pushes: dict[str, asyncio.Queue[Any]] = {}
        for name in ("program", "preview", "sources", "playouts", "media", "media_job", "viewers", "restreams",
                     "recording", "error"):
            self.pushes[name] = asyncio.Queue()
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[[Any], Any]:
        async def record(data: Any) -> None:
            self.pushes[name].put_nowait(data)
        return record

    async def connect(self, node: Node, token: str) -> None:
        await self.sio.connect(node.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)

    async def call(self, event: str, payload: Any) -> Any:
        return await self.sio.call(event, payload, timeout=ACK_TIMEOUT)

    async def next_push(self, name: str, predicate: Callable[[Any], bool] = lambda _: True,
                        timeout: float = 20.0) -> Any:
        async def find() -> Any:
            while True:
                data = await self.pushes[name].get()
                if predicate(data):
                    return data
        return await asyncio.wait_for(find(), timeout)

    def drain(self, name: str) -> None:
        """Forget the pushes received so far (wait for a newer one next)."""
        while not self.pushes[name].empty():
            self.pushes[name].get_nowait()

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


# --- media ------------------------------------------------------------------------------


def make_video(path: Path, seconds: float, size: str = "320x240", rate: int = 25) -> Path:
    """A test video with a picture and a tone (H.264 + AAC in MP4)."""
    subprocess.run(
        [ffmpeg_path(Settings()), "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=120,
    )
    return path


class SizedVideoTrack(VideoStreamTrack):
    """aiortc's synthetic video at a chosen size; a clear `flowing` holds frames back
    (the publisher then sends nothing, as a frozen encoder would)."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._frame = av.VideoFrame.from_ndarray(
            numpy.full((height, width, 3), (40, 120, 200), dtype=numpy.uint8), format="rgb24")

    async def recv(self) -> av.VideoFrame:
        await self.flowing.wait()
        pts, time_base = await self.next_timestamp()
        frame = self._frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


class GatedAudioTrack(AudioStreamTrack):
    """aiortc's silence, held back while `flowing` is clear."""

    def __init__(self, flowing: asyncio.Event) -> None:
        super().__init__()
        self.flowing = flowing

    async def recv(self) -> Any:
        await self.flowing.wait()
        return await super().recv()


class SizedPublisher(PublisherPeer):
    """A publisher whose picture has a chosen size (and can be paused)."""

    def __init__(self, width: int, height: int) -> None:
        self.sized = SizedVideoTrack(width, height)
        self.pc = RTCPeerConnection()
        self.video = self.sized
        self.audio = GatedAudioTrack(self.sized.flowing)
        video = self.pc.addTransceiver(self.video, direction="sendonly")
        self.pc.addTransceiver(self.audio, direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in codecs if c.mimeType.lower() == "video/h264"]
        video.setCodecPreferences(h264 + [c for c in codecs if c not in h264])
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)


@dataclass
class Frame:
    at: float  # time.monotonic() when decoded
    width: int
    height: int
    pts: int


class RecordingViewer(ViewerPeer):
    """A viewer that keeps (time, size, pts) of every decoded video frame."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def _read(self, track: MediaStreamTrack, counter: Any) -> None:  # type: ignore[override]
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame: Any = await track.recv()
                if track.kind == "video":
                    self.frames.append(Frame(time.monotonic(), frame.width, frame.height, int(frame.pts or 0)))
                    self.frame_size = (frame.width, frame.height)
                await counter.bump()

    async def wait_size(self, size: tuple[int, int], timeout: float = 15.0, after: float = 0.0) -> Frame:
        """The first decoded frame of `size` decoded after `after` (monotonic)."""
        def found() -> Frame | None:
            return next((f for f in self.frames if (f.width, f.height) == size and f.at >= after), None)

        await self.video_frames.wait_until(lambda _: found() is not None, timeout)
        frame = found()
        assert frame is not None
        return frame


class DecodeErrors(logging.Handler):
    """Counts aiortc's 'failed to decode' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "decode" in record.getMessage().lower():
            self.messages.append(record.getMessage())

    def __enter__(self) -> "DecodeErrors":
        for name in ("aiortc.codecs.h264", "aiortc.codecs.vpx", "aiortc.rtcrtpreceiver"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in ("aiortc.codecs.h264", "aiortc.codecs.vpx", "aiortc.rtcrtpreceiver"):
            logging.getLogger(name).removeHandler(self)

