"""Restream: push a forum's encoded program to one webcast platform over
RTMP or RTMPS (the FLV-over-RTMP convention every platform ingests).

Each destination is its own supervised child (streaming/restream_push.py:
a copy, no encode) reading the program from the forum's tee, so a
failing platform never touches another destination or the encoder. A
destination that drops is retried forever until stopped, 1 s doubling
to 10 s between attempts (back to 1 s after a run that lasted), and
resumes at a keyframe (the tee starts every connection at one).

The stream key never leaves this object except into a 0600 file in a
0700 directory that only the child reads: it is not in argv, logs,
`status()`, errors or events (errors are redacted before anyone sees
them).

States: idle -> connecting -> live <-> retrying -> stopped (start() again
from stopped or idle).
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streaming.ffmpeg_process import FfmpegExit, FfmpegProcess, RestartPolicy, Supervisor
from streaming.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

PUSHER = str(Path(__file__).with_name("restream_push.py"))
SCHEMES = ("rtmp", "rtmps")


class RestreamError(ValueError):
    """A destination that cannot be used (bad URL); the message is safe to show."""


def check_url(url: str) -> str:
    """An rtmp:// or rtmps:// URL with a host, without credentials or a
    query (a key goes in `stream_key`). Raises RestreamError."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise RestreamError("the URL is not a valid URL") from error
    if parts.scheme not in SCHEMES:
        raise RestreamError("the URL must start with rtmp:// or rtmps://")
    if not parts.hostname:
        raise RestreamError("the URL has no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise RestreamError("the URL must not carry credentials or a query: put the key in stream_key")
    del port
    return urlunsplit(parts)


class RestreamState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RestreamStatus:
    """What operators see of a destination (never its key).
    bitrate in kb/s (program bytes sent over the last report), uptime in
    s since it went live, attempt = retries since it was last live."""

    id: str
    name: str
    url: str
    state: str
    bitrate_kbps: int = 0
    uptime_s: int = 0
    attempt: int = 0
    last_error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.name, "url": self.url, "state": self.state,
            "bitrate_kbps": self.bitrate_kbps, "uptime_s": self.uptime_s,
            "attempt": self.attempt, "last_error": self.last_error,
        }


class RestreamBackoff(RestartPolicy):
    """1 s doubling to 10 s while attempts keep failing; 1 s after a run
    that lasted (never an immediate hammering of a platform)."""

    def next_delay(self, previous: float, runtime: float) -> float:
        if runtime >= self.stable_after or previous <= 0.0:
            return self.initial
        return min(previous * self.factor, self.maximum)


BACKOFF = RestreamBackoff(initial=1.0, maximum=10.0, factor=2.0, stable_after=10.0)


class Restream(Lifecycle[RestreamState]):
    """One destination. `source_url()` gives the tee's URL at each start;
    `on_status(status)` is called on every change and each second while
    live (it must not block)."""

    def __init__(
        self,
        restream_id: str,
        name: str,
        url: str,
        stream_key: str,
        *,
        source_url: Callable[[], str],
        on_status: Callable[[RestreamStatus], None] | None = None,
        policy: RestartPolicy = BACKOFF,
        private_root: Path | None = None,
    ) -> None:
        super().__init__(RestreamState.IDLE, f"Restream({restream_id})")
        self.id = restream_id
        self.name = name
        self.url = check_url(url)
        self.__key = stream_key.strip()
        self._source_url = source_url
        self._on_status = on_status
        self._policy = policy
        self._supervisor: Supervisor | None = None
        self._keydir: tempfile.TemporaryDirectory[str] | None = None
        self._private_root = private_root  # the run's secrets directory: a SIGKILLed run's is removed at the next start
        self._live_since = 0.0
        self._sent = 0
        self._sent_at = 0.0
        self._bitrate = 0
        self.attempt = 0
        self.last_error = ""
        self.lives = 0  # times it went live

    def __repr__(self) -> str:
        return f"Restream({self.id!r}, {self.url!r})"

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def running(self) -> bool:
        return self._state in (RestreamState.CONNECTING, RestreamState.LIVE, RestreamState.RETRYING)

    def status(self) -> RestreamStatus:
        live = self._state is RestreamState.LIVE
        return RestreamStatus(
            self.id, self.name, self.url, self._state.value,
            bitrate_kbps=self._bitrate if live else 0,
            uptime_s=int(time.monotonic() - self._live_since) if live else 0,
            attempt=self.attempt, last_error=self.last_error,
        )

    def _set_state(self, state: RestreamState) -> None:
        super()._set_state(state)
        self._emit()  # also without a change: bitrate and errors are news too

    def _emit(self) -> None:
        if self._on_status is not None:
            try:
                self._on_status(self.status())
            except Exception:
                logger.exception("Restream(%s) status callback failed", self.id)

    def redact(self, text: str) -> str:
        """`text` with the stream key replaced by ***."""
        return text.replace(self.__key, "***") if self.__key else text

    def _private_dir(self) -> Path:
        if self._keydir is None:
            if self._private_root is not None:
                self._private_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._keydir = tempfile.TemporaryDirectory(prefix="forumcast-restream-", dir=self._private_root)  # 0700
        return Path(self._keydir.name)

    def _launcher(self) -> str:
        """An executable that runs restream_push.py with this interpreter
        (the one that has PyAV), whatever `python3` is on PATH."""
        path = self._private_dir() / "push"
        if not path.exists():
            path.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({PUSHER!r}, run_name='__main__')\n")
            path.chmod(0o700)
        return str(path)

    def _key_file(self) -> Path:
        path = self._private_dir() / "key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.__key)
        return path

    def _args(self) -> list[str]:
        return ["--input", self._source_url(), "--url", self.url, "--key-file", str(self._key_file())]

    async def start(self) -> None:
        """Connect and keep connected until stop(). No-op while running."""
        if self.running:
            return
        await self._rearm()  # a stop under way ends first; the next stop() runs anew
        self.attempt = 0
        self.last_error = ""
        self._set_state(RestreamState.CONNECTING)
        self._supervisor = Supervisor(
            self._args, name=f"restream-{self.id}-{secrets.token_hex(2)}", ffmpeg=self._launcher(),
            policy=self._policy, stop_grace=3.0,
            on_start=self._on_start, on_exit=self._on_exit, on_line=self._on_line,
        )
        await self._supervisor.start()

    def _on_start(self, process: FfmpegProcess) -> None:
        if self._state is RestreamState.RETRYING:
            self._set_state(RestreamState.CONNECTING)

    def _on_line(self, line: str) -> None:
        if not line.startswith("push: "):
            return
        word, _, rest = line[6:].partition(" ")
        now = time.monotonic()
        if word == "live":
            self._live_since = now
            self._sent, self._sent_at, self._bitrate = 0, now, 0
            self.attempt = 0
            self.lives += 1
            self._set_state(RestreamState.LIVE)
        elif word == "sent" and rest.isdigit():
            sent = int(rest)
            if now > self._sent_at:
                self._bitrate = round((sent - self._sent) * 8 / 1000 / (now - self._sent_at))
            self._sent, self._sent_at = sent, now
            self._emit()
        elif word == "done":
            logger.info("Restream(%s) %s", self.id, rest)
        elif word == "error":
            self.last_error = self.redact(rest)[:200]

    def _on_exit(self, result: FfmpegExit) -> None:
        if result.stopped or self._state is RestreamState.STOPPED:
            return
        if not self.last_error:
            self.last_error = self.redact(result.describe())[:200]
        self.attempt += 1
        self._set_state(RestreamState.RETRYING)

    async def stop(self) -> None:
        """Stop pushing (the child writes its trailer); idempotent,
        concurrent callers await one stop; start() may follow."""
        await super().stop()

    def _stop_begins(self) -> None:
        if self._state is not RestreamState.IDLE:
            self._set_state(RestreamState.STOPPED)

    async def _stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()

    async def close(self) -> None:
        """stop() and forget the key file."""
        await self.stop()
        if self._keydir is not None:
            self._keydir.cleanup()
            self._keydir = None
