"""Child processes of the benchmark: each in its own session, always reaped.

Only the processes started here are signalled, by their own process-group
id, so a Ctrl-C of the harness never leaves a server, publisher or viewer
process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class Child:
    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    async def next_json(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on the child's stdout (other lines are skipped)."""
        assert self.process.stdout is not None

        async def read() -> dict[str, Any]:
            while True:
                line = await self.process.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.log_tail()}")
                try:
                    return json.loads(line)
                except ValueError:
                    continue

        return await asyncio.wait_for(read(), timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 10.0) -> None:
        if self.process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except asyncio.TimeoutError:
                self._signal(signal.SIGKILL)
                await self.process.wait()
        else:
            self._signal(signal.SIGKILL)  # grandchildren (ffmpeg) of a child that already died

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the group we created: the child and its own children
        except ProcessLookupError:
            pass


async def start_module(name: str, module: str, args: list[str], logdir: Path) -> Child:
    """`python -m module args` from the repository root, stdout piped, stderr to a log file."""
    log = logdir / f"{name}.log"
    with open(log, "wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err,
            start_new_session=True,
        )
    return Child(name, process, log)


async def start_exec(name: str, argv: list[str], logdir: Path) -> Child:
    log = logdir / f"{name}.log"
    with open(log, "wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
        )
    return Child(name, process, log)
