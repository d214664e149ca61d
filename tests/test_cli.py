"""The `forumcast` command, run as a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from config.settings import SAMPLE_EVENT
from rooms.models import Role
from rooms.tokens import TokenService
from tests.processes import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORUMCAST_")}
    env["FORUMCAST_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT)
    env.update(venue_ports())
    env.update(extra)
    return env


def venue_ports() -> dict[str, str]:
    """Venue listeners on ports of their own, so servers of parallel test
    workers never collide on the defaults."""
    return {"FORUMCAST_RTMP_PORT": str(free_port_block(32)), "FORUMCAST_SRT_PORT": str(free_port_block(32))}


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """No FORUMCAST_* setting, HOME and XDG_DATA_HOME in a temp home (never
    the real one): the data directory is the per-user default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORUMCAST_", "XDG_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONPATH=str(ROOT))
    env.update(venue_ports())
    env.update(extra)
    return env


@dataclass
class Serving:
    url: str
    log: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(*args: str, env: dict[str, str], cwd: Path = ROOT,
                  command: Sequence[str] = (sys.executable, "-m", "signaling.cli")) -> AsyncIterator[Serving]:
    """`forumcast serve` (`command` serve ...) on a free loopback port, from
    `cwd`, until the block ends; then SIGTERM, and kill if it lingers
    (always reaped)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *command, "serve", "--host", "127.0.0.1", "--port", str(port), *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    server = Serving(f"http://127.0.0.1:{port}")
    assert process.stderr is not None
    stderr = process.stderr

    async def started() -> None:
        while True:
            line = (await stderr.readline()).decode()
            if not line:
                raise AssertionError("serve exited early:\n" + "".join(server.log))
            server.log.append(line)
            if "data directory" in line:  # the last line of the start
                return

    try:
        await asyncio.wait_for(started(), 60)
        yield server
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def forumcast(*args: str, env: dict[str, str], timeout: float = 60,
                    cwd: Path = ROOT) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_event_sample_ok(tmp_path: Path) -> None:
    code, out, err = await forumcast("check-event", str(SAMPLE_EVENT), env=clean_env(tmp_path))
    assert code == 0, err
    assert out.strip() == "ok: 21 forums, 64 sessions"


async def test_check_event_broken_lists_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[event]\nid = "x"\nname = "X"\ntimezone = "Nowhere/City"\ndays = [2026-11-08]\n\n'
        '[[forums]]\nid = "f"\nname = "F"\ncapacity = -1\n'
    )
    code, out, err = await forumcast("check-event", str(broken), env=clean_env(tmp_path))
    assert code == 1
    lines = out.strip().splitlines()
    assert "event.timezone: 'Nowhere/City' is not a known IANA time zone (e.g. Asia/Shanghai)" in lines
    assert "forums[0].capacity: -1: must be greater than 0" in lines
    assert "2 problems" in err
    assert "Traceback" not in out + err


async def test_check_event_syntax_error_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[event\n")
    code, out, _ = await forumcast("check-event", str(bad), env=clean_env(tmp_path))
    assert code == 1 and out.startswith("line 1: TOML syntax error")
    missing = tmp_path / "none.toml"
    code, out, err = await forumcast("check-event", str(missing), env=clean_env(tmp_path))
    assert code == 1 and out == f"{missing}: no such file\n"  # its path once
    assert err.count("none.toml") == 1, err  # the summary line
    code, _, err = await forumcast("serve", "--event", str(missing), env=clean_env(tmp_path))
    assert code == 2 and err.count("none.toml") == 1, err


async def test_check_event_misspelled_time_zone_reports_session_times(tmp_path: Path) -> None:
    text = SAMPLE_EVENT.read_text(encoding="utf-8").replace('"Asia/Shanghai"', '"Asia/Shangai"')
    text = text.replace('start = "2026-11-08T09:00"', 'start = "2026-11-07T09:00"', 1)  # before the event
    (tmp_path / "media").symlink_to(SAMPLE_EVENT.parent / "media")
    event = tmp_path / "summit.toml"
    event.write_text(text, encoding="utf-8")
    code, out, err = await forumcast("check-event", str(event), env=clean_env(tmp_path))
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("event.timezone: 'Asia/Shangai' is not a known IANA time zone")
    assert any("2026-11-07 09:00 is not on an event day" in line and "read in UTC" in line for line in lines), out
    assert "2 problems" in err


async def test_token_prints_token_and_link(tmp_path: Path) -> None:
    env = clean_env(tmp_path, FORUMCAST_PUBLIC_URL="https://summit.example.org")
    code, out, err = await forumcast("token", "--role", "speaker", "--forum", "ai", "--name", "Chen Jing",
                                     "--ttl", "2h", env=env)
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    secret = (tmp_path / "token_secret").read_text().strip()
    grant = TokenService(secret).verify(fields["token"])
    assert (grant.role, grant.forums, grant.name) == (Role.SPEAKER, frozenset({"ai"}), "Chen Jing")
    assert fields["link"] == f"https://summit.example.org/speak/ai?token={fields['token']}"


async def test_token_refusals_exit_2_without_traceback(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    cases = [
        (["--role", "pilot", "--forum", "ai"], "unknown role 'pilot'"),
        (["--role", "viewer", "--forum", "atlantis"], "unknown forum 'atlantis'"),
        (["--role", "viewer", "--forum", "ai", "--ttl", "soon"], "--ttl='soon': not a duration"),
    ]
    for extra, message in cases:
        code, out, err = await forumcast("token", "--name", "X", *extra, env=env)
        assert code == 2, (extra, err)
        assert message in err and "Traceback" not in err
    # names the server would refuse are refused here too (rooms/validation.py)
    for name, message in (("N" * 110, "at most 64"), ("Two\nLines", "printable")):
        code, out, err = await forumcast("token", "--name", name, "--role", "viewer", "--forum", "ai", env=env)
        assert code == 2 and message in err and "token:" not in out, (name, err)


async def test_invite_refuses_names_by_line_and_escapes_formulas(tmp_path: Path) -> None:
    guests = tmp_path / "guests.csv"
    guests.write_text('name,forums\nAda,ai\n"Bad\nName",ai\n' + "N" * 110 + ",ai\n")
    code, out, err = await forumcast("invite", str(guests), env=clean_env(tmp_path))
    assert code == 2 and "line 4:" in err and "line 5:" in err and not out, err
    guests.write_text('name,forums\n"=HYPERLINK(""http://evil"",""x"")",ai\n')
    code, out, err = await forumcast("invite", str(guests), env=clean_env(tmp_path))
    assert code == 0, err
    assert out.splitlines()[1].startswith('"\'=HYPERLINK(')


async def test_invite_writes_csv(tmp_path: Path) -> None:
    guests = tmp_path / "guests.csv"
    guests.write_text("name,email,language,forums,role\nAda,ada@example.com,en,ai,\n")
    out_csv = tmp_path / "out.csv"
    code, _, err = await forumcast("invite", str(guests), "-o", str(out_csv), env=clean_env(tmp_path))
    assert code == 0, err
    header, row = out_csv.read_text().strip().splitlines()
    assert header == "name,email,language,forums,role,token,invite_link"
    assert "/watch/ai?token=" in row
    guests.write_text("name,email,language,forums,role\nAda,broken,en,ai,\n")
    code, _, err = await forumcast("invite", str(guests), env=clean_env(tmp_path))
    assert code == 2 and "line 2: bad email 'broken'" in err


async def test_bad_settings_exit_2(tmp_path: Path) -> None:
    code, _, err = await forumcast("serve", "--port", "abc", env=clean_env(tmp_path))
    assert code == 2 and "port='abc' (command line): not an integer" in err and "Traceback" not in err
    config = tmp_path / "forumcast.toml"
    config.write_text("port = 70000\n")
    code, _, err = await forumcast("serve", "--config", str(config), env=clean_env(tmp_path))
    assert code == 2 and "port=70000 in forumcast.toml: must be 1-65535" in err
    broken = tmp_path / "broken.toml"
    broken.write_text('[event]\nid = "x"\n')
    code, _, err = await forumcast("serve", "--event", str(broken), env=clean_env(tmp_path))
    assert code == 2 and "event.timezone: missing" in err and "Traceback" not in err


async def test_serve_port_in_use_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await forumcast("serve", "--host", "127.0.0.1", "--port", str(port), env=clean_env(tmp_path))
    assert code == 2 and f"cannot serve on 127.0.0.1:{port}" in err and "Traceback" not in err


async def test_serve_smoke(tmp_path: Path) -> None:
    """The real server: start, answer, stop cleanly on SIGTERM."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--node-id", "smoke-node", cwd=ROOT, env=clean_env(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []
    try:
        assert process.stderr is not None

        async def wait_for_line(needle: str) -> None:
            while True:
                line = (await process.stderr.readline()).decode()  # type: ignore[union-attr]
                if not line:
                    raise AssertionError("serve exited early:\n" + "".join(log))
                log.append(line)
                if needle in line:
                    return

        await asyncio.wait_for(wait_for_line(f"on http://127.0.0.1:{port}"), 30)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok", "node_id": "smoke-node"}
            async with client.get(f"http://127.0.0.1:{port}/api/forums") as response:
                assert response.status == 200
                body = json.loads(await response.text())
                assert len(body["forums"]) == 21 and body["event"]["timezone"] == "Asia/Shanghai"
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        code = await asyncio.wait_for(process.wait(), 10)
        log.append(rest.decode())
        assert code == 0, "".join(log)
        assert "stopped" in rest.decode() and "Traceback" not in "".join(log)
        assert (tmp_path / "token_secret").is_file()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("text", ["90", "90s", "30m", "12h", "7d", "2w"])
def test_parse_ttl(text: str) -> None:
    from signaling.cli import parse_ttl

    seconds = {"90": 90, "90s": 90, "30m": 1800, "12h": 43200, "7d": 604800, "2w": 1209600}[text]
    assert parse_ttl(text) == seconds


async def test_serve_unreachable_redis_exit_2(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    code, _, err = await forumcast("serve", "--port", str(free_port()), "--redis", url, env=clean_env(tmp_path))
    assert code == 2, err
    assert f"cannot reach Redis at {url}" in err and "Traceback" not in err


async def test_token_minted_in_one_directory_opens_a_server_started_in_another(tmp_path: Path) -> None:
    """The data directory is per user, not per working directory: a link
    minted in ~ opens the server started in the checkout."""
    home, here, there = tmp_path / "home", tmp_path / "a", tmp_path / "b"
    for folder in (home, here, there):
        folder.mkdir()
    env = home_env(home)
    data_dir = home / ".local" / "share" / "forumcast"
    code, out, err = await forumcast("token", "--role", "speaker", "--forum", "ai", "--name", "Dr. Li Wei",
                                     env=env, cwd=here)
    assert code == 0, err
    token = out.split("token: ", 1)[1].split()[0]
    async with serving(env=env, cwd=there) as server:
        assert any(f"data directory {data_dir} " in line for line in server.log), server.log
        async with aiohttp.ClientSession() as client:
            # the token check comes before the body's: 415 means the token was accepted
            async with client.post(f"{server.url}/whip/ai", data="not sdp",
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}) as answer:
                assert answer.status == 415, await answer.text()
    assert (data_dir / "token_secret").is_file()
    assert [*here.iterdir(), *there.iterdir()] == [], "state was written to a working directory"


async def test_relative_data_dir_is_resolved_where_the_command_starts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    env = home_env(tmp_path / "home", FORUMCAST_DATA_DIR="state")
    async with serving(env=env, cwd=tmp_path / "a") as server:
        assert any(f"data directory {tmp_path / 'a' / 'state'} " in line for line in server.log), server.log


async def test_serve_demo_runs_the_sample_event_now(tmp_path: Path) -> None:
    """A first `serve --demo`: a session live now, a recorded talk due within
    two minutes, a Demo label in /api and on every page; the file unchanged."""
    original = SAMPLE_EVENT.read_bytes()
    async with serving("--demo", env=clean_env(tmp_path)) as server:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/api/forums") as response:
                body = await response.json()
            assert body["event"]["demo"] is True
            now = datetime.fromisoformat(body["now"])
            live = [forum["id"] for forum in body["forums"] if forum["live"]]
            assert live, "no session is live"
            due = []
            for forum in body["forums"]:
                upcoming = forum["next"]
                if upcoming and 0 < (datetime.fromisoformat(upcoming["start"]) - now).total_seconds() <= 120:
                    async with client.get(f"{server.url}/api/forums/{forum['id']}") as response:
                        detail = await response.json()
                    modes = {speaker["id"]: speaker["mode"] for speaker in detail["speakers"]}
                    if any(modes.get(sid) == "recorded" for sid in upcoming["speakers"]):
                        due.append(forum["id"])
            assert due, "no recorded talk is due within 120 s"
            for page in ("/lobby", "/watch/main", "/speak/main", "/control/main", "/watch/nowhere"):
                async with client.get(server.url + page) as response:
                    assert 'class="demo-badge"' in await response.text(), page
    assert SAMPLE_EVENT.read_bytes() == original
    async with serving(env=clean_env(tmp_path)) as server:  # without --demo: no label
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/api/forums") as response:
                assert (await response.json())["event"]["demo"] is False
            async with client.get(f"{server.url}/lobby") as response:
                assert "demo-badge" not in await response.text()
