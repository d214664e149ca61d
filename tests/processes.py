"""Real processes for integration tests: a redis-server on a free loopback
port. Each is started by a fixture and always stopped and reaped."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

from tests.eventually import eventually_blocking


def free_port_block(count: int) -> int:
    """A base port whose next `count` ports are free on 127.0.0.1 for TCP and
    UDP right now (venue listeners take base + 1 + forum index), picked
    below the ephemeral range so the OS does not hand them out meanwhile."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count + 1):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {count} free ports found")



def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(timeout: float = 30.0) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `bash scripts/test`, which installs it with apt-get"
        )
    workdir = tempfile.mkdtemp(prefix="forumcast-redis-")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def pong() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False  # the server is still binding; nothing to await here

    try:
        eventually_blocking(pong, timeout=timeout, what="redis-server to answer PING")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
