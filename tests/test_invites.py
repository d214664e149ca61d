from __future__ import annotations

import csv
import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from config.settings import SAMPLE_EVENT
from rooms.event_file import load_event
from rooms.invites import (
    OUTPUT_COLUMNS,
    InviteError,
    default_ttl_seconds,
    invite_link,
    make_invites,
    read_guests,
    write_invites,
)
from rooms.models import Event, Role
from rooms.tokens import TokenService

SECRET = "invites-test-secret-long-enough-for-hs256!"
BASE = "https://summit.example.org"

GUESTS = """name,email,language,forums,role
Ada Viewer,ada@example.com,en,ai,
Bo Speaker,bo@example.com,zh,ai,speaker
Cy Operator,cy@example.com,en,main,operator
Di Lobby,,zh,ai;main|cybersecurity,viewer
"Everyone, Esq.",e@example.com,,*,Viewer
"""


@pytest.fixture(scope="module")
def event() -> Event:
    return load_event(SAMPLE_EVENT)


def test_round_trip(event: Event, tmp_path: Path) -> None:
    path = tmp_path / "guests.csv"
    path.write_text("\ufeff" + GUESTS, encoding="utf-8")  # with the BOM Excel writes
    guests = read_guests(path, event)
    tokens = TokenService(SECRET)
    out = io.StringIO()
    write_invites(make_invites(guests, tokens, BASE, ttl_seconds=3600), out)

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0].keys()) == OUTPUT_COLUMNS
    assert [row["name"] for row in rows] == ["Ada Viewer", "Bo Speaker", "Cy Operator", "Di Lobby", "Everyone, Esq."]
    expected = [
        (Role.VIEWER, frozenset({"ai"}), "/watch/ai"),
        (Role.SPEAKER, frozenset({"ai"}), "/speak/ai"),
        (Role.OPERATOR, frozenset({"main"}), "/control/main"),
        (Role.VIEWER, frozenset({"ai", "main", "cybersecurity"}), "/lobby"),
        (Role.VIEWER, None, "/lobby"),
    ]
    for row, (role, forums, page) in zip(rows, expected):
        grant = tokens.verify(row["token"])
        assert (grant.role, grant.forums, grant.name) == (role, forums, row["name"])
        link = urlsplit(row["invite_link"])
        assert f"{link.scheme}://{link.netloc}" == BASE and link.path == page
        assert parse_qs(link.query)["token"] == [row["token"]]
    assert tokens.verify(rows[1]["token"]).language == "zh"
    assert rows[3]["forums"] == "ai;cybersecurity;main" and rows[4]["forums"] == "*"
    # the same email gives the same subject; the address itself is not in the token
    again = make_invites(guests[:1], tokens, BASE, ttl_seconds=60)[0]
    assert tokens.verify(again.token).subject == tokens.verify(rows[0]["token"]).subject
    assert "ada@example.com" not in tokens.verify(again.token).subject

    # the output reads back as a guests file (extra columns aside)
    stripped = "\n".join(",".join(r[c] for c in ("name", "email", "language", "forums", "role")) for r in rows)
    reread = read_guests("name,email,language,forums,role\n" + stripped.replace("Everyone, Esq.", '"Everyone, Esq."'), event)
    assert [(g.name, g.forums, g.role) for g in reread] == [(g.name, g.forums, g.role) for g in guests]


def test_bad_rows_are_all_named(event: Event) -> None:
    text = """name,email,language,forums,role
Good,good@example.com,en,ai,viewer
,nobody@example.com,en,ai,viewer
Bad Email,not-an-email,en,ai,viewer
Bad Forum,x@example.com,en,ai;atlantis,viewer
Bad Role,y@example.com,en,ai,pilot
No Forums,z@example.com,en,,viewer
"""
    with pytest.raises(InviteError) as caught:
        read_guests(text, event)
    problems = caught.value.problems
    assert problems == [
        "line 3: missing name",
        "line 4: bad email 'not-an-email'",
        "line 5: unknown forum 'atlantis'",
        "line 6: unknown role 'pilot' (use one of viewer, speaker, operator, admin)",
        "line 7: no forums given (list forum ids separated by ';', or '*' for all)",
    ]


def test_bad_header(event: Event) -> None:
    with pytest.raises(InviteError) as caught:
        read_guests("name,emial,forums\nA,a@example.com,ai\n", event)
    assert caught.value.problems == ["line 1: unknown column 'emial' (expected name,email,language,forums,role)"]
    with pytest.raises(InviteError, match="missing column 'forums'"):
        read_guests("name,email\nA,a@example.com\n", event)
    with pytest.raises(InviteError, match="the file is empty"):
        read_guests("", event)


def test_links_escape_forum_and_token() -> None:
    assert invite_link(BASE + "/", Role.ADMIN, ["ai"], "a.b-c_d") == f"{BASE}/control/ai?token=a.b-c_d"
    assert invite_link(BASE, Role.SPEAKER, ["ai", "main"], "t") == f"{BASE}/lobby?token=t"


def test_default_ttl_lasts_through_the_event(event: Event) -> None:
    import datetime as dt

    before = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc).timestamp()
    ttl = default_ttl_seconds(event, now=before)
    end_of_last_day = dt.datetime(2026, 11, 9, 16, 0, tzinfo=dt.timezone.utc).timestamp()  # midnight Shanghai
    assert before + ttl > end_of_last_day
    assert default_ttl_seconds(event, now=end_of_last_day + 86400 * 30) == 7 * 24 * 3600


# --- one validation of names for every path (issue 8) -------------------------


def test_names_the_server_refuses_are_refused_by_line(event: Event) -> None:
    long_name = "N" * 110
    text = (
        "name,email,language,forums,role\n"
        "Fine Guest,,en,ai,\n"
        '"Two\nLines",,en,ai,\n'  # a quoted newline: the record spans lines 3-4
        f"{long_name},,en,ai,\n"
        "Tab\there,,en,ai,\n"
    )
    with pytest.raises(InviteError) as caught:
        read_guests(text, event)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("line 4:") and "printable" in problems[0]
    assert problems[1].startswith("line 5:") and "at most 64" in problems[1]
    assert problems[2].startswith("line 6:") and "printable" in problems[2]


def test_what_the_cli_accepts_the_server_admits(event: Event) -> None:
    # the same rule at both ends: a name read_guests keeps passes RoomService's check
    from rooms import validation

    guests = read_guests("name,forums\n" + "Ωmega 名字 " + "x" * 50 + ",ai\n", event)
    assert validation.check_name(guests[0].name) == guests[0].name


def test_token_issue_refuses_what_the_server_refuses() -> None:
    from rooms.errors import RoomError

    tokens = TokenService(SECRET)
    for bad in ("Two\nLines", "N" * 110, "nul\x00", "\t"):
        with pytest.raises(RoomError) as caught:
            tokens.issue(Role.VIEWER, ["ai"], bad)
        assert caught.value.code == "invalid"
    with pytest.raises(RoomError):
        tokens.issue(Role.VIEWER, ["a\nb"], "Fine")


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)",
                                  "\tTab", "\rCR"])
def test_formula_cells_are_escaped(event: Event, cell: str) -> None:
    from rooms.invites import Guest, Invite

    guest = Guest(2, cell, "", "", frozenset({"ai"}), Role.VIEWER)
    out = io.StringIO()
    write_invites([Invite(guest, "tok", "https://x/watch/ai?token=tok")], out)
    row = next(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert row["name"] == "'" + cell  # shown as text, never evaluated


def test_formula_name_from_a_guests_file_is_escaped_in_the_output(event: Event) -> None:
    guests = read_guests('name,forums\n"=HYPERLINK(""http://evil"",""x"")",ai\n', event)
    out = io.StringIO()
    write_invites(make_invites(guests, TokenService(SECRET), BASE, ttl_seconds=60), out)
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["name"].startswith("'=HYPERLINK(")
