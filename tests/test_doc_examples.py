"""The shell examples of README.md and docs/protocol.md run as written.

Every command line of every ```sh block is either run here, against a real
server, or skipped for a reason listed in SKIPPED; a new example that is
neither fails test_every_example_is_run_or_skipped, so examples cannot rot
unnoticed. What the runner changes, and nothing else:
- the server's address replaces http://127.0.0.1:8080 (a free port here);
- an ffmpeg publish runs for a few seconds (`-t` set or added);
- `forumcast` is the checkout's (as `. .venv/bin/activate` gives), `ffmpeg`
  the imageio-ffmpeg one, and HOME is a temp home shared with the server,
  so commands find the server's secret in the per-user data directory.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from config.settings import Settings, ffmpeg_path
from tests.eventually import eventually
from tests.test_cli import home_env, serving

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "protocol.md")
DOCUMENTED = "http://127.0.0.1:8080"
PUBLISH_SECONDS = "4"

RUN = (
    re.compile(r"^forumcast (token|invite|check-event)\b"),
    re.compile(r"^TOKEN=\$\(forumcast token\b"),
    re.compile(r"^ffmpeg\b.* -f whip\b"),
    re.compile(r"^curl\b"),
)
SKIPPED = {
    r"^bash scripts/(serve|test)\b": "installs, then serves or tests: what this test runs inside",
    r"^python -m bench\.": "benchmarks run for minutes and print figures (bench/)",
    r"^forumcast loadtest\b": "runs 200 viewers for a minute; tests/test_loadtest.py runs it with 10",
    r"^\. \.venv/bin/activate$": "the runner puts the checkout's forumcast first on PATH",
    r"^nft add rule inet filter input (udp|tcp) dport 7882 accept$":
        "a host firewall rule; tests/streaming/test_udp_port.py and tests/e2e/test_ice_tcp.py apply such rules "
        "inside network namespaces they make",
}
GUESTS = "name,email,language,forums,role\nAda Lovelace,ada@example.com,en,ai,\nChen Jing,chen@example.com,zh,ai;main,speaker\n"


@dataclass(frozen=True)
class Example:
    file: str
    line: int  # of the block's first command
    commands: tuple[str, ...]  # logical lines (backslash continuations joined)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def examples(path: Path) -> list[Example]:
    """The ```sh / ```bash / ```shell blocks of a Markdown file (indented
    ones too, as in list items)."""
    found: list[Example] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```(sh|bash|shell)\s*$", lines[index])
        index += 1
        if not fence:
            continue
        start, body = index + 1, []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        index += 1
        text = textwrap.dedent("\n".join(body)).replace("\\\n", " ")
        commands = tuple(" ".join(line.split()) for line in text.splitlines() if line.strip())
        found.append(Example(path.relative_to(ROOT).as_posix(), start, commands))
    return found


def all_examples() -> list[Example]:
    return [example for doc in DOCS for example in examples(doc)]


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED.items() if re.search(pattern, command)), None)


def runnable(command: str) -> bool:
    return any(pattern.search(command) for pattern in RUN)


def as_run_here(command: str, url: str) -> str:
    """The command with the documented substitutions (module docstring)."""
    command = command.replace(DOCUMENTED, url)
    if command.startswith("ffmpeg "):
        command = re.sub(r" -t \d+", "", command)
        command = command.replace(" -f whip ", f" -t {PUBLISH_SECONDS} -f whip ", 1)
    return command


def test_every_example_is_run_or_skipped() -> None:
    found = all_examples()
    assert len(found) >= 4 and any(e.file == "docs/protocol.md" for e in found)
    unclassified = [f"{e.where}: {c}" for e in found for c in e.commands
                    if not runnable(c) and skip_reason(c) is None and not c.startswith("#")]
    assert unclassified == [], "say how to run these examples, or why they cannot run here"


def test_ffmpeg_whip_examples_send_stereo_opus() -> None:
    # ffmpeg's WHIP muxer refuses mono Opus: "Unsupported audio channels 1"
    publishes = [c for e in all_examples() for c in e.commands if re.search(r"^ffmpeg\b.* -f whip\b", c)]
    assert publishes
    for command in publishes:
        assert " -ac 2 " in command, command


def _tokens(text: str) -> list[str]:
    return re.findall(r"token[:=] ?([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)", text)


@pytest.mark.slow
async def test_examples_run_as_written(tmp_path: Path) -> None:
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for folder in (home, work, bin_dir):
        folder.mkdir()
    (work / "config").symlink_to(ROOT / "config")  # `check-event config/events/...` from the checkout
    (work / "guests.csv").write_text(GUESTS, encoding="utf-8")
    shim = bin_dir / "forumcast"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m signaling.cli \"$@\"\n")
    shim.chmod(0o755)
    (bin_dir / "ffmpeg").symlink_to(ffmpeg_path(Settings(data_dir=tmp_path)))
    env = home_env(home, FORUMCAST_ICE_ADDRESSES="127.0.0.1")  # loopback-only ICE, as on this machine
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    async with serving(env=env, cwd=work) as server, aiohttp.ClientSession() as client:
        async def accepted(token: str) -> bool:
            # the token is checked before the body: 415 means it opened the forum
            async with client.post(f"{server.url}/whep/ai", data="x", headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "text/plain"}) as answer:
                return answer.status == 415

        operator = await run_block(["forumcast token --role operator --forum ai --name Watcher"], env, work)
        operator_token = _tokens(operator)[0]

        async def live_sources() -> list[dict[str, object]]:
            async with client.get(f"{server.url}/api/forums/ai/sources",
                                  headers={"Authorization": f"Bearer {operator_token}"}) as answer:
                body = await answer.json()
            return [s for s in body["sources"] if s["kind"] == "live" and s["state"] == "live"]

        for example in all_examples():
            commands = [as_run_here(c, server.url) for c in example.commands if runnable(c)]
            if not commands:
                continue
            publishes = any(c.startswith("ffmpeg ") for c in commands)
            run = asyncio.create_task(run_block(commands, env, work, where=example.where))
            if publishes:  # the encoder's source goes live while it runs
                async def live_while_running() -> list[dict[str, object]]:
                    if run.done():  # the encoder stopped first: its error, not a timeout
                        try:
                            run.result()
                        except AssertionError as exc:
                            raise RuntimeError(str(exc)) from None
                    return await live_sources()

                await eventually(live_while_running, timeout=60, what=f"{example.where}: the WHIP source live")
            output = await run
            for token in _tokens(output):
                assert await accepted(token), f"{example.where}: a printed token is refused"
            if any(" invite " in f" {c} " for c in commands):
                with (work / "invites.csv").open(encoding="utf-8") as handle:
                    rows = list(csv.DictReader(handle))
                assert len(rows) == 2 and all([await accepted(row["token"]) for row in rows])
            if any(c.startswith("curl ") and "OPTIONS" in c for c in commands):
                assert "204" in output.splitlines()[0], output


async def run_block(commands: list[str], env: dict[str, str], cwd: Path, where: str = "") -> str:
    """Run the commands as one bash script (so TOKEN=... carries over);
    returns stdout; fails with the script and its stderr on a non-zero exit."""
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 180)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"{where}: exit {process.returncode}\n{script}\n{err.decode()[-3000:]}"
    return out.decode()
