"""The real forumcast server as a child process, for integration and
browser tests.

`start_server()` runs `python -m signaling.cli serve` on a free loopback
port with a temp data dir, a known token secret and
FORUMCAST_ICE_ADDRESSES=127.0.0.1 (so its ICE answers only carry loopback
candidates), waits for /healthz, and returns a ServerProcess that mints
tokens with the same secret. `stop()` terminates, waits, kills if needed
and always reaps; its log is kept in the data dir for failure messages.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rooms.models import Role
from rooms.tokens import TokenService
from tests.eventually import NotYet, eventually_blocking
from tests.processes import free_port, free_port_block

REPO = Path(__file__).resolve().parent.parent
COMMAND_ENV = "FORUMCAST_TEST_SERVER_CMD"  # debugging hook: another entry point than signaling.cli


@dataclass
class ServerProcess:
    port: int
    data_dir: Path
    secret: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _tokens: TokenService = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = TokenService(self.secret)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: Role | str, forums: list[str] | None = None, name: str = "Test",
              ttl_seconds: float = 3600, language: str = "") -> str:
        """A token the server accepts (same secret). `forums=None` opens all;
        `language` is the invite's (the pages' default language)."""
        return self._tokens.issue(role, forums, name, ttl_seconds=ttl_seconds, language=language)

    def edge_link_token(self, forum_id: str, node_id: str = "test-edge") -> str:
        """A node's grant for pulling the forum's program (an edge link)."""
        return self._tokens.issue_edge_link(forum_id, node_id)

    def expired_token(self, role: Role | str, forums: list[str] | None = None) -> str:
        """A well-signed token whose expiry is already past."""
        past = TokenService(self.secret, now=lambda: time.time() - 7200)
        return past.issue(role, forums, "Expired", ttl_seconds=60)

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """Graceful stop (SIGTERM), then kill; always reaped. Returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_server(
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
    command: list[str] | None = None,
    secret: str | None = None,
    port: int | None = None,
) -> ServerProcess:
    """Start the server and wait until /healthz answers 200. `command`
    replaces `python -m signaling.cli` (e.g. a wrapper for a debug build);
    `port` (default: a free one) lets a test restart a node where it was."""
    data_dir = Path(tempfile.mkdtemp(prefix="forumcast-server-"))
    secret = secret or secrets.token_urlsafe(48)  # nodes of one cluster share theirs
    port = port or free_port()
    env = dict(os.environ)
    env.update({
        "FORUMCAST_TOKEN_SECRET": secret,
        "FORUMCAST_ICE_ADDRESSES": "127.0.0.1",  # never offer eth0 to a peer
        "FORUMCAST_HOST": "127.0.0.1",
        "FORUMCAST_NODE_ID": f"test-{port}",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("FORUMCAST_CONFIG", None)
    env.pop("FORUMCAST_REDIS_URL", None)
    # venue listeners on ports of their own: servers of parallel test workers never collide
    # one port for WebRTC (UDP, and ICE-TCP on the same number) as in production, but a free one:
    # tests run side by side
    env["FORUMCAST_UDP_PORT"] = str(free_port_block(1))
    env["FORUMCAST_RTMP_PORT"] = str(free_port_block(32))
    env["FORUMCAST_SRT_PORT"] = str(free_port_block(32))
    env.update(extra_env or {})
    log_path = data_dir / "server.log"
    if command is None and os.environ.get(COMMAND_ENV):
        command = shlex.split(os.environ[COMMAND_ENV])
    args = [*(command or [sys.executable, "-m", "signaling.cli"]), "serve", "--port", str(port),
            "--data-dir", str(data_dir), *(extra_args or [])]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(port, data_dir, secret, process, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False  # still binding; a child process offers nothing to await

    try:
        eventually_blocking(healthy, timeout=timeout, interval=0.1, what=f"/healthz on {server.url}")
    except NotYet as exc:
        log_text = server.log()
        server.cleanup()
        raise RuntimeError(f"{exc}:\n{log_text}") from None
    except BaseException:
        server.cleanup()
        raise
    return server
