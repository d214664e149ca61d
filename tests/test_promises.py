"""docs/DESIGN.md "What we promise" names the tests that check each
promise: every test it names exists (so the section cannot drift from
the suite)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_test_the_promises_name_exists() -> None:
    design = (REPO / "docs" / "DESIGN.md").read_text()
    assert "## What we promise" in design
    section = design.split("## What we promise", 1)[1].split("\n## ", 1)[0]
    for heading in ("### What survives a crash", "### Secrets"):
        assert heading in section
    text = re.sub(r"\s*\n\s*", "", section)  # names may wrap across lines
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) >= 5
    for path, name in named:
        source = REPO / path
        assert source.is_file(), f"DESIGN.md names {path}, which does not exist"
        if name:
            assert re.search(rf"def {name}\b", source.read_text()), f"DESIGN.md names {path}::{name}: not found"
