"""docs/DESIGN.md "What we promise" stays true: the bounds it names are
settings with the defaults it states, its refusal codes are 429s, and every
test it names exists (so the section cannot drift from the suite)."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings
from rooms.errors import HTTP_STATUS

ROOT = Path(__file__).resolve().parent.parent


def _section(title: str) -> str:
    text = (ROOT / "docs" / "DESIGN.md").read_text("utf-8")
    start = text.index(f"### {title}\n")
    end = text.find("\n##", start + 4)
    return text[start:] if end < 0 else text[start:end]


def test_the_bounds_named_are_settings_with_the_stated_defaults() -> None:
    bounds = _section("Bounds")
    stated = re.findall(r"`([a-z_]+)`[^`(]*\(default (\d+)", bounds.replace("\n", " "))
    assert len(stated) >= 4, stated
    defaults = Settings()
    for name, value in stated:
        assert hasattr(defaults, name), f"DESIGN.md names a setting {name!r} that does not exist"
        assert float(getattr(defaults, name)) == float(value), f"{name}: DESIGN.md says {value}"


def test_the_refusals_named_are_429s() -> None:
    bounds = _section("Bounds")
    for code in ("full", "too_many_seats", "too_many_sources", "rate_limited"):
        assert f"`{code}`" in bounds
        assert HTTP_STATUS[code] == 429


def test_the_tests_cited_exist() -> None:
    cited = set(re.findall(r"tests/[a-z_/]+\.py", _section("Bounds")))
    assert cited
    for path in cited:
        assert (ROOT / path).is_file(), path


def test_every_test_the_promises_name_exists() -> None:
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    assert "## What we promise" in design
    section = design.split("## What we promise", 1)[1].split("\n## ", 1)[0]
    for heading in ("### What survives a crash", "### Secrets"):
        assert heading in section
    text = re.sub(r"\s*\n\s*", "", section)  # names may wrap across lines
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) >= 5
    for path, name in named:
        source = ROOT / path
        assert source.is_file(), f"DESIGN.md names {path}, which does not exist"
        if name:
            assert re.search(rf"def {name}\b", source.read_text()), f"DESIGN.md names {path}::{name}: not found"
