"""The internal hops of a forum's outputs use no loopback port: the
program into the encoder, the encoder's MPEG-TS into the tee, the tee to
the recorder, HLS and each restream push. A loopback UDP/TCP port takes
forged media from, or hands a forum's program to, any local user; Unix
sockets in a private 0700 directory do not.

Checked from the kernel: every socket inode a process holds
(/proc/<pid>/fd) is looked up in /proc/net/{udp,udp6,tcp,tcp6}."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recorder.recorder import Recorder
from streaming.ffmpeg_process import Supervisor
from streaming.hls_output import HlsOutput
from tests.eventually import eventually
from tests.outputs.helpers import slate_program
from tests.outputs.platforms import Platform


def inet_sockets() -> dict[int, str]:
    """Every inet socket of the host: inode -> 'proto local remote'."""
    found = {}
    for proto in ("udp", "udp6", "tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            found[int(fields[9])] = f"{proto} {fields[1]} {fields[2]}"
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def inet_of(pid: int) -> list[str]:
    table = inet_sockets()
    return sorted(table[i] for i in socket_inodes(pid) if i in table)


def pid_of(supervisor: Supervisor | None) -> int:
    assert supervisor is not None and supervisor.current is not None and supervisor.current.pid is not None
    return supervisor.current.pid


def private_dir_of(url: str) -> Path:
    assert url.startswith("unix:"), f"the program is read at {url}, not a Unix socket"
    directory = Path(url[5:]).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert Path(url[5:]).is_socket()
    return directory


async def _encoder_sockets(protocol: str) -> tuple[list[str], list[str], bool]:
    """Run a forum's encoder until its first keyframe reaches the tee: the
    encoder ffmpeg's inet sockets of `protocol` ("udp"/"tcp"), those this
    process gained, and whether outputs read a Unix socket in a 0700
    directory."""
    async with slate_program() as (_, outputs):
        mine_before = set(inet_of(os.getpid()))
        url = await outputs.forum("main").acquire("test")
        encoder = outputs.forum("main").encoder
        assert encoder is not None
        await eventually(lambda: encoder.tee.keyframes >= 1, timeout=60, what="the encoder's first keyframe")
        theirs = [s for s in inet_of(pid_of(encoder._supervisor)) if s.startswith(protocol)]
        gained = [s for s in set(inet_of(os.getpid())) - mine_before if s.startswith(protocol)]
        private = url.startswith("unix:") and Path(url[5:]).is_socket() and \
            stat.S_IMODE(Path(url[5:]).parent.stat().st_mode) == 0o700
        return theirs, gained, private


async def test_the_program_reaches_the_encoder_without_a_loopback_port() -> None:
    theirs, gained, _ = await _encoder_sockets("udp")
    assert theirs == [] and gained == []  # no RTP port in the encoder nor in the server


async def test_the_encoder_reaches_the_tee_without_a_loopback_port() -> None:
    theirs, gained, private = await _encoder_sockets("tcp")
    assert theirs == [] and gained == []  # no TS port
    assert private  # the tee's output: a Unix socket in a 0700 directory


async def test_the_recorder_and_hls_read_the_tee_without_a_loopback_port(tmp_path: Path) -> None:
    async with slate_program() as (_, outputs):
        recorder = Recorder(tmp_path / "rec", outputs, min_free_bytes=0)
        hls: HlsOutput | None = None
        try:
            info = await recorder.start("main", "keynote")
            url = await outputs.forum("main").acquire("hls")
            private_dir_of(url)
            hls = HlsOutput("main", tmp_path / "hls", url)
            await hls.start()
            await eventually(lambda: hls is not None and hls.playlist.exists(), timeout=90, what="an HLS playlist")
            await eventually(lambda: info.size > 0 or any((tmp_path / "rec").rglob("seg-*.ts")), timeout=60,
                             what="a recording segment")
            active = recorder._active["main"]
            assert inet_of(pid_of(active.supervisor)) == []  # hop 3: tee -> recorder
            assert inet_of(pid_of(hls._supervisor)) == []  # hop 3: tee -> HLS
        finally:
            if hls is not None:
                await hls.stop()
            await recorder.close()


async def test_a_restream_push_reads_the_tee_without_a_loopback_port(tmp_path: Path) -> None:
    platform = Platform("plain", tmp_path, "key-1234")
    await platform.start()
    try:
        async with slate_program() as (_, outputs):
            forum = outputs.forum("main")
            restream = forum.add("Plain", platform.url, "key-1234")
            await forum.start(restream.id)
            await eventually(lambda: restream.state == "live", timeout=90, what="the destination live")
            assert forum.encoder is not None
            private_dir_of(forum.encoder.url)
            sockets = inet_of(pid_of(restream._supervisor))
            platform_port = f":{platform.port:04X} "
            # its one inet socket is its connection to the platform (hop 3: the tee is not on one)
            assert len(sockets) == 1 and platform_port in sockets[0] + " ", sockets
    finally:
        await platform.stop()  # after the outputs closed, as before
