"""The lane's C batch (streaming/fanout_batch.py, streaming/_fanout.c) with
real SRTP sessions and real sockets: per-connection UDP sockets, the shared
port's socket (one sendmmsg per packet), and Unix datagram socket pairs,
whose sends really block when the reader falls behind."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from streaming import fanout_batch
from streaming.aiortc_internals import send_path_for
from streaming.downtrack import Downtrack, DowntrackState
from streaming.program_bus import ProgramBus
from streaming.rtp_source import RtpSource, SourceFeed
from streaming.udp_mux import UdpMux
from tests.streaming.test_downtrack import (
    H264, IDR, OPUS, VIEWER_PT, Camera, camera_on_air, contiguous, srtp_sessions,
)

needs_c = pytest.mark.skipif(not fanout_batch.available(), reason="streaming._fanout not built")


class Quiet:
    """A receiver for the shared port's endpoints (nothing comes back here)."""

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@dataclasses.dataclass
class Seat:
    downtrack: Downtrack
    sock: socket.socket
    rx: Any

    def drain(self) -> list[RtpPacket]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.append(RtpPacket.parse(self.rx.unprotect(data)))


@pytest.fixture
async def shared_port() -> AsyncIterator[UdpMux]:
    mux = await UdpMux.open("127.0.0.1", 0)
    yield mux
    mux.close()


async def shared_seat(mux: UdpMux, index: int, kind: str = "video") -> Seat:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tx, rx = srtp_sessions()
    endpoint = mux.endpoint(f"u{index:04d}", Quiet())
    dt = Downtrack(kind, ssrc=0x2000 + index, pt_by_codec=VIEWER_PT, write_limit=64_000)
    dt.connect(send_path_for(tx, endpoint, sock.getsockname()))
    return Seat(dt, sock, rx)


@needs_c
async def test_fifty_viewers_on_the_shared_port_get_one_sendmmsg_per_packet_each_with_its_own_srtp(
    shared_port: UdpMux,
) -> None:
    source, bus, camera = camera_on_air()
    seats = [await shared_seat(shared_port, i) for i in range(50)]
    for seat in seats:
        bus.subscribe(seat.downtrack, None)
    camera.frame(key=True)  # per viewer in Python: the keyframe admits them
    assert bus.video.batch is not None and len(bus.video.batch) == 50
    before = bus.video.batch.stats()
    for _ in range(4):
        camera.frame()
    after = bus.video.batch.stats()
    assert after["batches"] - before["batches"] == 12  # one batch per packet
    assert after["syscalls"] - before["syscalls"] == 12  # and one system call for all 50 viewers
    for seat in seats:
        got = seat.drain()  # unprotect fails (raises) on a datagram not protected with this viewer's keys
        assert len(got) == 15 and contiguous(got)
        assert {p.ssrc for p in got} == {seat.downtrack.ssrc}
        assert {p.payload_type for p in got} == {VIEWER_PT["h264"]}
        assert seat.downtrack.packets == 15
    source.close()
    for seat in seats:
        seat.sock.close()


@needs_c
async def test_a_viewer_whose_socket_would_block_drops_video_to_the_next_keyframe_and_the_others_go_on() -> None:
    video, audio = RtpSource("video", H264), RtpSource("audio", OPUS)
    requests: list[int] = []
    video.set_keyframe_requester(lambda: requests.append(1))
    bus = ProgramBus()
    bus.switch_to(SourceFeed("cam", video, audio))
    camera = Camera(video)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    # the slow viewer: a Unix datagram pair with a small queue nobody reads (send() really blocks)
    slow_out, slow_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow_out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tx, rx = srtp_sessions()
    slow = Downtrack("video", ssrc=0x3000, pt_by_codec=VIEWER_PT, write_limit=64_000)
    slow.connect(dataclasses.replace(send_path_for(tx, transport, ("127.0.0.1", 9)),
                                     fd=slow_out.fileno(), sock_send=slow_out.send, shared=False))
    fast_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fast_sock.bind(("127.0.0.1", 0))
    fast_tx, fast_rx = srtp_sessions()
    fast_transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    fast = Downtrack("video", ssrc=0x3001, pt_by_codec=VIEWER_PT, write_limit=64_000)
    fast.connect(send_path_for(fast_tx, fast_transport, fast_sock.getsockname()))
    fast_seat = Seat(fast, fast_sock, fast_rx)
    bus.subscribe(slow, None)
    bus.subscribe(fast, None)
    try:
        camera.frame(key=True)
        assert slow.batch is not None and fast.batch is not None
        asked = len(requests)
        for _ in range(40):  # 120 packets of ~300 B: far past the slow viewer's queue
            camera.frame()
            if slow.state == DowntrackState.DROPPING:
                break
        assert slow.state == DowntrackState.DROPPING and slow.batch is None
        assert slow.dropped_frames == 1 and slow.skipped >= 1
        assert len(requests) > asked or video.keyframe_request_pending
        assert fast.batch is not None and fast.state == DowntrackState.FORWARDING
        got = fast_seat.drain()
        assert contiguous(got) and len(got) == fast.packets
        # the reader catches up; at the next keyframe the slow viewer resumes without a gap and is batched again
        def drain_slow() -> list[RtpPacket]:
            out = []
            while True:
                try:
                    out.append(RtpPacket.parse(rx.unprotect(slow_in.recv(4096, socket.MSG_DONTWAIT))))
                except BlockingIOError:
                    return out

        before = drain_slow()
        camera.frame()
        assert slow.state == DowntrackState.DROPPING
        camera.frame(key=True)
        assert slow.state == DowntrackState.FORWARDING and slow.batch is not None
        camera.frame()
        resumed = drain_slow()
        assert len(resumed) == 6 and resumed[0].payload[:1] == IDR[:1] and contiguous(before[-1:] + resumed)
    finally:
        video.close()
        transport.close()
        fast_transport.close()
        for s in (slow_out, slow_in, fast_sock):
            s.close()


@needs_c
async def test_one_viewer_the_kernel_refuses_is_counted_and_the_others_in_its_batch_still_get_the_packet(
    shared_port: UdpMux,
) -> None:
    source, bus, camera = camera_on_air()
    seats = [await shared_seat(shared_port, i) for i in range(5)]
    tx, _ = srtp_sessions()
    endpoint = shared_port.endpoint("bad0", Quiet())
    # an IPv6 destination on the IPv4 socket: sendmmsg fails on that one datagram (EAFNOSUPPORT)
    refused = Downtrack("video", ssrc=0x4000, pt_by_codec=VIEWER_PT, write_limit=64_000)
    refused.connect(send_path_for(tx, endpoint, ("::1", 9)))
    bus.subscribe(seats[0].downtrack, None)
    bus.subscribe(seats[1].downtrack, None)
    bus.subscribe(refused, None)
    for seat in seats[2:]:
        bus.subscribe(seat.downtrack, None)
    camera.frame(key=True)
    assert refused.batch is not None
    errors = refused.send_errors
    camera.frame()
    camera.frame()
    assert refused.send_errors - errors == 6
    for seat in seats:
        assert len(seat.drain()) == 9
    source.close()
    for seat in seats:
        seat.sock.close()


@needs_c
async def test_a_batched_socket_closed_underneath_cannot_be_replaced_by_another_file() -> None:
    """aioice may close a viewer's socket before the lane hears of it: the
    batch holds its own descriptor, so a socket opened meanwhile (which
    gets the freed number) receives nothing meant for the viewer."""
    source, bus, camera = camera_on_air()
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    tx, rx = srtp_sessions()
    dt = Downtrack("video", ssrc=0x5000, pt_by_codec=VIEWER_PT, write_limit=64_000)
    dt.connect(send_path_for(tx, transport, peer.getsockname()))
    bus.subscribe(dt, None)
    camera.frame(key=True)
    assert dt.batch is not None
    number = transport.get_extra_info("socket").fileno()
    transport.close()
    await asyncio.sleep(0)  # asyncio closes the socket on its next turn
    newcomer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    newcomer.bind(("127.0.0.1", 0))
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    newcomer.connect(target.getsockname())
    try:
        assert newcomer.fileno() == number  # the freed number was reused
        camera.frame()
        with pytest.raises(BlockingIOError):
            target.recv(4096, socket.MSG_DONTWAIT)
        assert len(Seat(dt, peer, rx).drain()) == 6  # still the viewer's (its dup'ed socket)
        bus.unsubscribe(dt, None)
        assert dt.batch is None and dt.packets == 6
    finally:
        source.close()
        for s in (peer, newcomer, target):
            s.close()


@needs_c
async def test_a_codec_the_viewer_lacks_takes_it_out_of_the_batch_and_the_next_one_it_has_brings_it_back(
    shared_port: UdpMux,
) -> None:
    vp8_only, bus, camera = camera_on_air()
    seat = await shared_seat(shared_port, 1)
    bus.subscribe(seat.downtrack, None)
    camera.frame(key=True)
    camera.frame()
    assert seat.downtrack.batch is not None
    seat.downtrack.set_codec("vp8")  # the viewer negotiated no VP8
    assert seat.downtrack.batch is None and seat.downtrack.state == DowntrackState.WAITING
    assert seat.downtrack.packets == 6  # the batch's counts moved to the viewer
    camera.frame()
    assert len(seat.drain()) == 6
    seat.downtrack.set_codec("h264")
    camera.frame(key=True)
    assert seat.downtrack.batch is not None
    got = seat.drain()
    assert len(got) == 3 and contiguous(got)
    vp8_only.close()
    seat.sock.close()


def test_the_c_fanout_is_built_wherever_a_compiler_and_the_python_headers_are() -> None:
    """scripts/test installs gcc and the headers, so in CI the batch must run:
    a build config that lost the extension would otherwise pass silently on
    the Python path."""
    import shutil
    import sysconfig
    from pathlib import Path

    if shutil.which("cc") is None or not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no C compiler or Python headers here: the Python path is the expected one")
    assert fanout_batch.available(), "streaming._fanout not built: run pip install -e . (setup.py builds it)"
