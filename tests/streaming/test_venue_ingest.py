"""VenueIngest: a real ffmpeg publishes RTMP and SRT on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import stat

import ffmpeg
import pytest
from aiortc.rtp import RtpPacket

from rooms.errors import RoomError
from rooms.models import SourceState
from streaming.ffmpeg_process import FfmpegProcess
from streaming.h264_sps import parse_sps, sps_from_rtp
from streaming.rtmp_codec import RtmpCommandReader, amf0_values
from streaming.rtmp_gate import FlvSink, RtmpKeyGate
from streaming.rtp_udp_ingest import OPUS_PAYLOAD_TYPE, h264_nal_types
from streaming.venue_ingest import VenueIngest
from tests.eventually import NotYet, eventually
from tests.processes import free_port

pytestmark = pytest.mark.timeout(90)
KEY = "forum7-Key_0123456789"


class Sink:
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.keyframe = asyncio.Event()

    def push(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        if 7 in h264_nal_types(packet.payload):
            self.keyframe.set()


class Venue:
    def __init__(self) -> None:
        self.video, self.audio = Sink(), Sink()
        self.states: list[SourceState] = []
        self.changed = asyncio.Event()
        self.ingest = VenueIngest(
            "forum7", free_port(), free_port(socket.SOCK_DGRAM), KEY, self.video, self.audio,
            on_state=self.on_state,
        )

    def on_state(self, state: SourceState) -> None:
        self.states.append(state)
        self.changed.set()

    async def reach(self, state: SourceState, timeout: float = 20) -> None:
        async def wait() -> None:
            while self.ingest.state != state.value:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def venue() -> Venue:
    venue = Venue()
    await venue.ingest.start()
    assert await venue.ingest.wait_listening(timeout=20)
    yield venue
    pids = [p.pid for p in venue.ingest.processes()]
    await venue.ingest.stop()
    assert venue.ingest.state == "ended"
    for pid in pids:  # every ffmpeg child reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def publisher(url: str, container: str, *, audio: bool = True) -> FfmpegProcess:
    """A venue encoder: H.264 baseline 2 s GOP + AAC, in real time."""
    streams = [ffmpeg.input("testsrc=s=320x240:r=15", f="lavfi", re=None)]
    if audio:
        streams.append(ffmpeg.input("sine=r=44100", f="lavfi", re=None))
    args = ffmpeg.output(
        *streams, url, t=60, vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p",
        g=30, bf=0, f=container, **{"profile:v": "baseline"}, **({"acodec": "aac"} if audio else {}),
    ).get_args()
    return FfmpegProcess(args, name=f"publisher-{container}", loglevel="error")


async def test_rtmp_publish_reconnect_and_state_changes(venue: Venue) -> None:
    urls = venue.ingest.urls("127.0.0.1")
    assert urls["rtmp_url"] == f"rtmp://127.0.0.1:{venue.ingest.rtmp_port}/live/{KEY}"
    assert urls["srt_url"].startswith(f"srt://127.0.0.1:{venue.ingest.srt_port}?") and KEY in urls["srt_url"]

    first = publisher(urls["rtmp_url"], "flv")
    await first.start()
    await venue.reach(SourceState.LIVE)
    await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    assert venue.ingest.protocol == "rtmp"
    await first.stop(grace=2.0)  # the encoder goes away
    await venue.reach(SourceState.LOST)
    count = len(venue.video.packets)

    venue.video.keyframe.clear()
    second = publisher(urls["rtmp_url"], "flv")
    await second.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    finally:
        await second.stop(grace=2.0)
    assert venue.states[:3] == [SourceState.LIVE, SourceState.LOST, SourceState.LIVE]
    assert len(venue.video.packets) > count and len(venue.audio.packets) > 20

    # one continuous stream for viewers, across the reconnect
    video = venue.video.packets
    assert len({p.ssrc for p in video}) == 1
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(video, video[1:]))
    # the copied H.264 carries SPS/PPS before each IDR (FLV keeps them only in its header)
    types = [t for p in video[count:] for t in h264_nal_types(p.payload)]
    assert types.index(7) < types.index(5) and 8 in types
    assert {p.payload_type for p in venue.audio.packets} == {OPUS_PAYLOAD_TYPE}
    assert venue.ingest.gate.accepted == 2 and venue.ingest.gate.refused == 0
    assert venue.ingest.profile_level_id is not None and venue.ingest.profile_level_id.startswith("42")


async def test_wrong_rtmp_key_is_refused_then_the_right_one_plays(venue: Venue) -> None:
    port = venue.ingest.rtmp_port
    intruder = publisher(f"rtmp://127.0.0.1:{port}/live/not-the-key-123", "flv")
    await intruder.start()
    code = await asyncio.wait_for(intruder.wait(), 20)
    assert code != 0  # the intruder was disconnected
    assert venue.ingest.gate.refused == 1 and venue.ingest.gate.accepted == 0
    assert venue.video.packets == [] and venue.ingest.state == "connecting"

    good = publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], "flv", audio=False)  # video only is fine
    await good.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
        assert venue.audio.packets == []
        # a second encoder with the right key cannot take over a live feed
        second = publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], "flv")
        await second.start()
        assert await asyncio.wait_for(second.wait(), 20) != 0
        assert venue.ingest.gate.refused == 2 and venue.ingest.state == "live"
    finally:
        await good.stop(grace=2.0)
    assert venue.states[0] == SourceState.LIVE and venue.ingest.gate.accepted == 1


async def test_srt_passphrase_and_a_killed_encoder_that_comes_back(venue: Venue) -> None:
    port = venue.ingest.srt_port
    intruder = publisher(f"srt://127.0.0.1:{port}?passphrase=wrong-passphrase&pbkeylen=16", "mpegts")
    await intruder.start()
    assert await asyncio.wait_for(intruder.wait(), 20) != 0
    assert any("passphrase" in line.lower() or "reject" in line.lower() for line in intruder.stderr_tail)
    assert venue.video.packets == [] and venue.ingest.state == "connecting"

    url = venue.ingest.urls("127.0.0.1")["srt_url"]
    crashing = publisher(url, "mpegts")
    await crashing.start()
    await venue.reach(SourceState.LIVE)
    await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    assert venue.ingest.protocol == "srt"
    assert crashing.pid is not None
    os.kill(crashing.pid, signal.SIGKILL)  # no goodbye: SRT only notices the silence
    await crashing.wait()
    await venue.reach(SourceState.LOST)
    count = len(venue.video.packets)

    venue.video.keyframe.clear()
    back = publisher(url, "mpegts")
    await back.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    finally:
        await back.stop(grace=2.0)
    await venue.reach(SourceState.LOST)
    assert venue.states == [SourceState.LIVE, SourceState.LOST, SourceState.LIVE, SourceState.LOST]
    assert len(venue.video.packets) > count and len(venue.audio.packets) > 10
    video = venue.video.packets
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(video, video[1:]))


async def test_the_key_gate_listens_on_the_configured_host() -> None:
    """ingest_host decides where venue encoders may connect (127.0.0.2 is
    still loopback, so the test stays on this machine)."""
    port = free_port()
    async def no_sink() -> FlvSink:
        raise RuntimeError("no publisher in this test")

    gate = RtmpKeyGate(port, "k" * 16, no_sink, host="127.0.0.2")
    await gate.start()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.2", port), 5)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    finally:
        await gate.stop()


def test_stream_keys_must_make_a_passphrase() -> None:
    with pytest.raises(RoomError) as refused:
        VenueIngest("f", 1, 2, "short", Sink(), Sink())
    assert refused.value.code == "invalid"


def test_command_reader_finds_the_stream_name_across_chunks() -> None:
    def amf_string(text: str) -> bytes:
        return b"\x02" + len(text).to_bytes(2, "big") + text.encode()

    body = amf_string("publish") + b"\x00" + (5.0).hex().encode()[:0] + bytes(8) + b"\x05" + amf_string("k" * 200) + amf_string("live")
    # one message over two 128-byte chunks on chunk stream 8: fmt 0 then fmt 3
    header = bytes([0x08]) + (0).to_bytes(3, "big") + len(body).to_bytes(3, "big") + bytes([20]) + (1).to_bytes(4, "little")
    stream = bytes([3]) + bytes(1536) + bytes(1536) + header + body[:128] + bytes([0xC8]) + body[128:]
    reader = RtmpCommandReader()
    found = []
    for i in range(0, len(stream), 100):  # arriving in pieces
        found += reader.feed(stream[i:i + 100])
    assert found == [("publish", [0.0, None, "k" * 200, "live"])]
    assert amf0_values(b"\x03\x00\x03app" + amf_string("live") + b"\x00\x00\x09") == [{"app": "live"}]


def _sockets_of(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _tcp_listen_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (proc(5): /proc/net/tcp state 0A)."""
    inodes = _sockets_of(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_a_wrong_key_straight_at_any_internal_endpoint_cannot_go_on_air(venue: Venue) -> None:
    """ffmpeg's own RTMP listener takes any key: a publisher that skipped the
    gate and went straight to it (its port was in `ps`) went on air. Every
    TCP port any venue child listens on is tried with a wrong key; the
    right key through the gate still plays."""
    internal = {port for p in venue.ingest.processes() if p.pid for port in _tcp_listen_ports(p.pid)}
    internal.discard(venue.ingest.rtmp_port)  # the gate (the server's own port) refuses wrong keys, tested above
    for port in sorted(internal):
        intruder = publisher(f"rtmp://127.0.0.1:{port}/live/not-the-key-123", "flv")
        await intruder.start()
        try:
            await eventually(lambda: venue.ingest.state == "live" or intruder.state != "running", timeout=20,
                             what=f"the intruder on internal port {port} to be refused or go live")
        finally:
            await intruder.stop(grace=1.0)
        assert venue.ingest.state == "connecting" and venue.video.packets == [], f"internal port {port} took a wrong key"
    assert internal == set(), "no internal listener at all: ffmpeg reads the gate's FLV on stdin"

    good = publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"] or "", "flv")
    await good.start()
    try:
        await venue.reach(SourceState.LIVE)
        await asyncio.wait_for(venue.video.keyframe.wait(), 10)
    finally:
        await good.stop(grace=2.0)


async def test_the_stream_key_is_in_no_command_line_log_or_stderr(venue: Venue,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Any local user reads /proc/<pid>/cmdline: the key used to be in the
    RTMP URL and the SRT passphrase of ffmpeg's command line, and in the
    INFO line that logs it. Both protocols publish with the right key; no
    child's argv, no log record and no stderr ring holds the key; the
    passphrase file is 0600 in a 0700 directory, gone after stop."""
    caplog.set_level(logging.DEBUG)
    urls = venue.ingest.urls("127.0.0.1")
    seen: list[str] = []
    for url, container in ((urls["srt_url"], "mpegts"), (urls["rtmp_url"], "flv")):
        assert url is not None
        encoder = publisher(url, container)
        venue.video.keyframe.clear()
        await encoder.start()
        try:
            await venue.reach(SourceState.LIVE)
            await asyncio.wait_for(venue.video.keyframe.wait(), 10)
            for process in venue.ingest.processes():
                assert process.pid is not None
                argv = open(f"/proc/{process.pid}/cmdline", "rb").read().decode()
                seen.append(argv)
                assert KEY not in argv, f"{process.name}'s argv holds the key"
                assert all(KEY not in line for line in process.stderr_tail)
        finally:
            await encoder.stop(grace=2.0)
        await venue.reach(SourceState.LOST)
    assert any("flv" in argv for argv in seen) and any("concat" in argv for argv in seen)  # both legs were read
    private = venue.ingest.private_dir()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    files = list(private.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert KEY not in caplog.text
    await venue.ingest.stop()
    assert not private.exists()


_FORGER = """
import socket, struct, sys
kind, target = sys.argv[1], sys.argv[2]
try:
    if kind == "udp":
        sock, address = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", int(target))
    else:
        sock, address = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), target
    for seq in range(50):  # an H.264 SPS then IDR slices, as an encoder's first packets
        nal = bytes([0x67, 0x42, 0xC0, 0x1E]) if seq == 0 else bytes([0x65, 0x88]) + bytes(100)
        sock.sendto(struct.pack(">BBHII", 0x80, 96, seq, seq * 3000, 0x1234) + nal, address)
except PermissionError:
    sys.exit(13)
"""


_SYSTEM_PYTHON = "/usr/bin/python3"  # nobody may not enter /root, where pyenv's lives


def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


async def test_forged_rtp_from_another_local_user_cannot_go_on_air(venue: Venue) -> None:
    """ffmpeg hands the venue's media to the server as RTP; on loopback UDP
    (ports in `ps`) any local user could send forged RTP there and be on
    air without a key. Another user (nobody) sends to every such endpoint
    named in the children's argv: nothing arrives."""
    if os.getuid() != 0 or not os.path.exists(_SYSTEM_PYTHON):
        pytest.skip("needs root and a system python to act as another local user")
    argv = " ".join(open(f"/proc/{p.pid}/cmdline").read().replace("\0", " ")
                    for p in venue.ingest.processes() if p.pid)
    endpoints = [("udp", port) for port in re.findall(r"(?:rtp|udp)://127\.0\.0\.1:(\d+)", argv)]
    endpoints += [("unix", path) for path in re.findall(r"unix:([^\s|\[]+)", argv)]  # tee slaves: "|[opts]url"
    assert len(endpoints) == 3, argv  # the SRT leg's ffmpeg runs from the start: video, TS tap, audio
    for kind, target in endpoints:
        forger = await asyncio.create_subprocess_exec(_SYSTEM_PYTHON, "-c", _FORGER, kind, target,
                                                      preexec_fn=_as_nobody)
        assert await forger.wait() in (0, 13)
    with pytest.raises(NotYet):  # nothing to await for a packet that must never come
        await eventually(lambda: venue.video.packets or venue.ingest.state != "connecting", timeout=2,
                         what="forged RTP to arrive")


async def test_no_srt_address_while_its_port_is_held_by_another_process() -> None:
    """A stray (a crashed run's ffmpeg) holds the SRT port: the leg's ffmpeg
    cannot bind and its supervisor backs off, and the ingest used to hand
    out the SRT address all the same. It answers None until the port is
    free and its own ffmpeg listens there."""
    srt_port = free_port(socket.SOCK_DGRAM)
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind(("127.0.0.1", srt_port))
    venue = VenueIngest("forum8", free_port(), srt_port, KEY, Sink(), Sink())
    await venue.start()
    try:
        assert not await venue.wait_listening(timeout=3)
        assert venue.listening() == {"rtmp": True, "srt": False}
        urls = venue.urls("127.0.0.1")
        assert urls["srt_url"] is None and urls["rtmp_url"] is not None
        stray.close()  # the stray is gone: the supervisor's next start binds
        assert await venue.wait_listening(timeout=60)
        assert (venue.urls("127.0.0.1")["srt_url"] or "").startswith(f"srt://127.0.0.1:{srt_port}?")
    finally:
        stray.close()
        await venue.stop()


async def test_the_gate_refuses_what_is_not_rtmp_and_starts_no_ffmpeg() -> None:
    opened: list[int] = []

    async def sink() -> FlvSink:
        opened.append(1)
        raise RuntimeError("never reached")

    port = free_port()
    gate = RtmpKeyGate(port, "k" * 16, sink)
    await gate.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(2000))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without an answer
        writer.close()
        await eventually(lambda: gate.refused == 1, what="the refusal to be counted")
        assert opened == [] and gate.accepted == 0
    finally:
        await gate.stop()


def x264_publisher(url: str, *, profile: str, bframes: int, seconds: int = 30) -> FfmpegProcess:
    """A venue encoder as x264 users configure it: `profile`, `bframes`,
    30 fps, 1 s GOP, AAC (preset veryfast: with ultrafast x264 drops
    8x8 transforms and writes main instead of high)."""
    video = ffmpeg.input("testsrc2=s=640x360:r=30", f="lavfi", re=None)
    audio = ffmpeg.input("sine=r=48000", f="lavfi", re=None)
    args = ffmpeg.output(
        video, audio, url, t=seconds, vcodec="libx264", preset="veryfast", pix_fmt="yuv420p", g=30,
        bf=bframes, acodec="aac", f="flv", **{"profile:v": profile},
    ).get_args()
    return FfmpegProcess(args, name=f"x264-{profile}-bf{bframes}", loglevel="error")


def backwards_steps(packets: list[RtpPacket]) -> int:
    """How often a packet's RTP timestamp is older than the one before."""
    return sum(1 for a, b in zip(packets, packets[1:])
               if 0 < ((a.timestamp - b.timestamp) & 0xFFFFFFFF) < 0x80000000)


async def test_a_high_profile_feed_with_b_frames_is_transcoded_once_at_ingest(venue: Venue) -> None:
    """Issue 14 item 4: x264 -profile:v high -bf 3 used to be copied, with
    RTP timestamps stepping backwards at every B-frame."""
    encoder = x264_publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], profile="high", bframes=3)
    await encoder.start()
    try:
        await venue.reach(SourceState.LIVE)
        await eventually(lambda: len({p.timestamp for p in venue.video.packets}) >= 60, timeout=30,
                         what="60 frames of the encoded feed")
        media = venue.ingest.media
        assert media is not None and media.handling == "transcode", media
        assert "B-frames" in media.reason and media.profile == "high" and media.b_frames is True
        assert (media.width, media.height, media.frame_rate) == (640, 360, 30.0)
        assert venue.ingest.transcoders_started == 1
        assert len(venue.ingest.processes()) == 3  # two listeners and the one encode
        for process in venue.ingest.processes():  # the encode too: stdin in, a private Unix socket out
            assert process.pid is not None
            argv = open(f"/proc/{process.pid}/cmdline").read().replace("\0", " ")
            assert "127.0.0.1" not in argv, f"{process.name} has a loopback endpoint: {argv}"
            assert _tcp_listen_ports(process.pid) == set(), f"{process.name} listens on TCP"
        encoded = list(venue.video.packets)
        assert backwards_steps(encoded) == 0
        types = [t for p in encoded for t in h264_nal_types(p.payload)]
        assert types[0] == 7  # viewers start at the encode's SPS
        sps = parse_sps(next(sps_from_rtp(p.payload) for p in encoded if sps_from_rtp(p.payload)))
        assert sps.profile_idc == 66 and sps.reorder_frames == 0
        assert venue.ingest.media.sent_profile_level_id == sps.profile_level_id

        # the encode dies: the copy goes on (flagged) rather than no picture at all
        transcoder = venue.ingest.legs["rtmp"].transcoder
        assert transcoder is not None and transcoder.process is not None and transcoder.process.pid is not None
        os.kill(transcoder.process.pid, signal.SIGKILL)
        await eventually(lambda: venue.ingest.media is not None and venue.ingest.media.handling == "flagged",
                         timeout=20, what="the source flagged after its encode died")
        assert "the ingest encode failed" in venue.ingest.media.reason
        count = len(venue.video.packets)
        await eventually(lambda: len(venue.video.packets) > count + 30, timeout=20, what="the copy forwarded")
        assert len(venue.ingest.processes()) == 2
    finally:
        await encoder.stop(grace=2.0)


async def test_a_baseline_feed_is_copied_without_an_encoder(venue: Venue) -> None:
    encoder = x264_publisher(venue.ingest.urls("127.0.0.1")["rtmp_url"], profile="baseline", bframes=0)
    await encoder.start()
    try:
        await venue.reach(SourceState.LIVE)
        await eventually(lambda: len({p.timestamp for p in venue.video.packets}) >= 30, timeout=30,
                         what="30 frames of the copied feed")
        media = venue.ingest.media
        assert media is not None and media.handling == "copy" and media.reason == "", media
        assert media.profile == "constrained baseline" and media.b_frames is False
        assert media.sent_profile_level_id == media.profile_level_id == venue.ingest.profile_level_id
        assert venue.ingest.transcoders_started == 0 and len(venue.ingest.processes()) == 2
    finally:
        await encoder.stop(grace=2.0)
    assert backwards_steps(venue.video.packets) == 0
