"""A real nginx for the output tests: nginx-rtmp as a webcast platform's
ingest (what many platforms and CDNs run), and nginx's proxy_cache as
the HTTP cache in front of HLS. Debian's packages `nginx` and
`libnginx-mod-rtmp` (scripts/test installs them).

One process (`master_process off`), everything under the test's own
directory (config, pid, logs, temp and cache paths), so it needs no root
paths and a SIGKILL leaves nothing running."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.eventually import eventually_blocking
from tests.processes import free_port

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
_PR_SET_PDEATHSIG = 1


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None or not RTMP_MODULE.exists():
        raise RuntimeError("nginx with its RTMP module is not installed: run `bash scripts/test`, which "
                           "installs nginx and libnginx-mod-rtmp with apt-get")
    return binary


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Nginx:
    """nginx on 127.0.0.1: RTMP application `live` on `rtmp_port` that
    records every publish to `recordings/` (FLV, one file per publish), and
    an HTTP cache on `http_port` in front of `origin` (an http://host:port),
    adding `X-Cache-Status` to every answer."""

    def __init__(self, directory: Path, origin: str | None = None) -> None:
        self.directory = directory
        self.recordings = directory / "recordings"
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.origin = origin
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rtmp_url(self) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> str:
        d = self.directory
        # as root, nginx would run its workers as nobody, who cannot write in a 0700 tmp dir
        user = "user root;" if os.geteuid() == 0 else ""
        temp = "\n".join(f"    {name}_temp_path {d}/temp/{name};"
                         for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        http = ""
        if self.origin is not None:
            http = f"""
http {{
    access_log {d}/access.log;
{temp}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=hls:1m max_size=64m inactive=10m use_temp_path=off;
    server {{
        listen 127.0.0.1:{self.http_port};
        location / {{
            proxy_pass {self.origin};
            proxy_cache hls;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}"""
        return f"""load_module {RTMP_MODULE};
{user}
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{self.rtmp_port};
        application live {{
            live on;
            record all;
            record_path {self.recordings};
            record_unique on;
        }}
    }}
}}
{http}
"""

    def start(self, timeout: float = 30.0) -> None:
        """(Re)start on the same ports; returns once both ports answer."""
        for sub in ("temp", "cache"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.recordings.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nginx.conf"
        config.write_text(self._config())
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(self.directory), "-c", str(config), "-e", str(self.directory / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        ports = [self.rtmp_port] + ([self.http_port] if self.origin is not None else [])

        def listening() -> bool:
            process = self.process
            assert process is not None
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                log = (self.directory / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx exited with {process.returncode}: {err} {log}")
            import socket

            for port in ports:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                except OSError:
                    return False
            return True

        eventually_blocking(listening, timeout=timeout, what="nginx listening")

    def kill(self) -> None:
        """Gone at once, as a platform that crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: recordings closed
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def recorded(self) -> list[Path]:
        return sorted(self.recordings.glob("*.flv"), key=lambda p: p.stat().st_mtime)
