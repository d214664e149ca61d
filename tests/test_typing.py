"""The packages type-check (STYLE.md item 12): mypy with pyproject.toml's
[tool.mypy] (disallow_untyped_defs, strict optional) over rooms, config,
signaling, streaming and recorder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_mypy_passes(tmp_path: Path) -> None:
    # a fresh cache: the result never depends on an earlier run's (about 5 s cold)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache"), "--no-color-output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"mypy found problems (exit {result.returncode}):\n{output}"
