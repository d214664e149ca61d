"""A pip-installed forumcast serves every page with everything it loads:
the wheel is built from the checkout's files (no build/, egg-info or
node_modules), installed into a fresh venv without the system's packages,
and started from an empty directory with an empty home."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from tests.test_cli import serving, venue_ports

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["/lobby", "/watch/main", "/speak/main", "/control/main", "/favicon.ico", "/watch/no-such-forum"]
_HTML_REFS = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"]+)\"""")
_JS_IMPORTS = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+\.js)["']""")
_CSS_URLS = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)""")


def _checkout_files(target: Path) -> None:
    """Copy what git tracks or would track (not ignored) into `target`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _run(*args: str | Path, cwd: Path, timeout: float) -> None:
    done = subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr.decode(errors='replace')[-4000:]}"


def assets_of(base: str, page: str, text: str) -> set[str]:
    """Same-origin URLs a page, script or stylesheet at `page` loads."""
    if page.endswith(".js"):
        found = _JS_IMPORTS.findall(text)
    elif page.endswith(".css"):
        found = _CSS_URLS.findall(text)
    else:
        found = _HTML_REFS.findall(text)
    urls = {urllib.parse.urljoin(base + page, ref) for ref in found if not ref.startswith("data:")}
    return {urllib.parse.urlsplit(url).path for url in urls if url.startswith(base)}


@pytest.mark.slow
async def test_the_installed_wheel_serves_every_asset_its_pages_load(tmp_path: Path) -> None:
    source, wheels, empty, home = (tmp_path / name for name in ("src", "wheels", "empty", "home"))
    for folder in (source, wheels, empty, home):
        folder.mkdir()
    await asyncio.to_thread(_checkout_files, source)
    await asyncio.to_thread(_run, sys.executable, "-m", "pip", "wheel", ".", "-w", wheels, "--no-deps", "-q",
                            cwd=source, timeout=600)
    wheel = next(wheels.glob("forumcast-*.whl"))
    venv = tmp_path / "venv"
    await asyncio.to_thread(_run, sys.executable, "-m", "venv", venv, cwd=tmp_path, timeout=300)
    python = venv / "bin" / "python"
    # dependencies from the configured index, or pip's cache: nothing from the system's site-packages
    await asyncio.to_thread(_run, python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path, timeout=1200)

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FORUMCAST_", "XDG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), **venue_ports())
    async with serving("--demo", env=env, cwd=empty, command=[str(venv / "bin" / "forumcast")]) as server:
        assert str(ROOT) not in "".join(server.log)  # it runs the installed copy
        seen: dict[str, int] = {}
        queue = list(PAGES)
        async with aiohttp.ClientSession() as client:
            while queue:
                path = queue.pop()
                if path in seen:
                    continue
                async with client.get(server.url + path) as response:
                    seen[path] = response.status
                    text = await response.text()
                queue.extend(assets_of(server.url, path, text) - set(seen))
    assets = {path: status for path, status in seen.items() if path not in PAGES}
    assert "/static/vendor/socket.io.min.js" in assets and any(path.endswith(".css") for path in assets)
    assert any(path.startswith("/static/js/") for path in assets)  # module imports were followed
    assert {path: status for path, status in assets.items() if status != 200} == {}
    assert all(seen[page] == 200 for page in PAGES[:-1]) and seen[PAGES[-1]] == 404
    assert [*empty.iterdir()] == []
