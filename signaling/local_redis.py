"""A redis-server of our own for `serve --workers` when no `--redis` is given.

The Debian binary found on PATH (package `redis-server`), listening on a
Unix socket only (`--port 0`: no TCP port any local user could reach) in
a 0700 directory of this run, `data_dir/run/redis/<run>/` (or a private
/tmp directory when that path is too long for a socket name, 107 bytes),
so it needs no password and the URL the workers get carries none. No
persistence (`--save ""`, no AOF): what it holds is live state the nodes
write again (heartbeats, leases) or that ends with the event's
connections. Supervised (signaling/supervised_process.py): restarted when
it dies, stopped last. A directory left by a SIGKILLed run is removed at
the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from streaming.child_processes import ChildRegistry, remove_dead_runs, run_id
from streaming.ffmpeg_process import RestartPolicy
from signaling.supervised_process import SupervisedProcess

PACKAGE = "redis-server"  # Debian's package and binary name
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL


class LocalRedisError(Exception):
    """No usable redis-server: the message says what to install."""


def redis_binary() -> str:
    """The redis-server on PATH. Raises LocalRedisError naming the package."""
    found = shutil.which("redis-server")
    if found is None:
        raise LocalRedisError(
            f"redis-server is not installed: `--workers` without `--redis` starts a local one "
            f"(Debian/Ubuntu: sudo apt-get install {PACKAGE}), or give --redis URL")
    return found


async def ping(socket_path: Path) -> bool:
    """True when a Redis answers PING on the Unix socket."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1.0)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class LocalRedis:
    """The supervised local redis-server (see the module docstring).
    `url` is what the workers get: unix://<socket>."""

    def __init__(self, data_dir: Path, registry: ChildRegistry | None = None) -> None:
        binary = redis_binary()
        parent = data_dir / "run" / "redis"
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_dead_runs(parent)  # a SIGKILLed run's socket and log
        self.directory = parent / run_id()
        self._scratch: Path | None = None
        if len(str(self.directory / "redis.sock")) > MAX_SOCKET_PATH:
            self._scratch = Path(tempfile.mkdtemp(prefix="forumcast-redis-"))  # 0700
            self.directory = self._scratch
        else:
            self.directory.mkdir(mode=0o700, exist_ok=True)
        self.directory.chmod(0o700)
        self.socket_path = self.directory / "redis.sock"
        self.url = f"unix://{self.socket_path}"
        command = [
            binary, "--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"), "--daemonize", "no",
        ]
        self.process = SupervisedProcess(
            "redis-server", command, env={"PATH": "/usr/bin:/bin"}, ready=lambda: ping(self.socket_path),
            ready_timeout=30.0, policy=RestartPolicy(initial=0.2, maximum=5.0), stop_grace=10.0,
            registry=registry,
        )

    async def start(self) -> None:
        """Raises ChildStartError when it does not answer PING."""
        self.socket_path.unlink(missing_ok=True)
        await self.process.start()

    async def stop(self) -> None:
        """Stop and reap it, then remove its directory."""
        await self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
