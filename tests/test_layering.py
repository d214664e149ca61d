"""Dependencies point one way (DESIGN.md): the domain and the settings
never import the transport, the media plane or the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "rooms": {"aiortc", "aioice", "aiohttp", "socketio", "engineio", "redis", "av",
              "streaming", "signaling", "recorder"},
    "config": {"rooms", "signaling", "streaming", "recorder"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in the file, including
    imports inside functions and under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package: str) -> None:
    assert (ROOT / package).is_dir()
    assert violations(package) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import aiohttp.web\nfrom redis.asyncio import Redis\n"
                      "def f():\n    from signaling import app\n    __import__('aiortc')\n")
    assert [m for _, m in imported_modules(sample)] == ["aiohttp", "redis", "signaling", "aiortc"]
