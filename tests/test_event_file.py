from __future__ import annotations

import datetime as dt
import shutil
import zoneinfo
from pathlib import Path

import pytest

from config.settings import SAMPLE_EVENT
from rooms.event_file import EventFileError, Problem, check_event, load_event
from rooms.models import ForumKind, SpeakerMode

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")

GOOD = """
[event]
id = "mini"
name = { en = "Mini Summit", zh = "小型峰会" }
timezone = "Asia/Shanghai"
days = [2026-11-08, "2026-11-09"]

[[speakers]]
id = "ann"
name = "Ann"
mode = "live"

[[speakers]]
id = "rec"
name = { en = "Rec", zh = "录" }
mode = "recorded"
video = "clip.mp4"

[[forums]]
id = "main"
kind = "main"
name = "Main"
capacity = 100

[[forums.sessions]]
id = "open"
start = "2026-11-08T09:00"
end = "2026-11-08T10:00"
title = "Opening"
speakers = ["ann"]

[[forums.sessions]]
id = "talk"
start = 2026-11-08T10:00:00
end = "2026-11-08T10:30"
title = { en = "Talk", zh = "报告" }
speakers = ["rec"]

[[forums.restreams]]
id = "web"
name = "Web"
url = "rtmps://live.example.com/app"
key_env = "KEY_WEB"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    path = tmp_path / "event.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> dict[str, str]:
    problems = check_event(write(tmp_path, text))
    assert problems, "expected problems"
    return {p.path: p.message for p in problems}


def test_sample_event_passes() -> None:
    assert check_event(SAMPLE_EVENT) == []
    event = load_event(SAMPLE_EVENT)
    assert event.timezone == "Asia/Shanghai" and not event.public
    assert len(event.days) == 2
    main = [f for f in event.forums if f.kind is ForumKind.MAIN]
    subs = [f for f in event.forums if f.kind is ForumKind.SUB]
    assert len(main) == 1 and len(subs) == 20
    # the main forum is on the morning of day one; sub-forums after it
    assert all(s.start.date() == event.days[0] and s.end.hour <= 12 for s in main[0].sessions)
    assert all(s.start >= main[0].sessions[-1].end for f in subs for s in f.sessions)
    assert {s.start.date() for f in subs for s in f.sessions} == set(event.days)
    recorded = [s for s in event.speakers.values() if s.mode is SpeakerMode.RECORDED]
    assert recorded and all(s.video is not None and s.video.is_file() for s in recorded)
    assert all(f.name.zh for f in event.forums)
    assert any(r.url.startswith("rtmps://") and r.key_env for f in event.forums for r in f.restreams)


def test_good_file_loads_with_aware_local_times(tmp_path: Path) -> None:
    event = load_event(write(tmp_path, GOOD))
    forum = event.forum("main")
    assert forum is not None and forum.capacity == 100 and forum.recorded
    open_, talk = forum.sessions
    assert open_.start == dt.datetime(2026, 11, 8, 9, 0, tzinfo=SHANGHAI)
    assert open_.start.utcoffset() == dt.timedelta(hours=8)
    assert talk.start == dt.datetime(2026, 11, 8, 10, 0, tzinfo=SHANGHAI)  # a TOML local date-time works too
    assert talk.title.zh == "报告"
    assert event.speakers["rec"].video == (tmp_path / "clip.mp4").resolve()
    assert event.days == (dt.date(2026, 11, 8), dt.date(2026, 11, 9))
    assert forum.restreams[0].key_env == "KEY_WEB"


def test_syntax_error_reports_the_line(tmp_path: Path) -> None:
    problems = check_event(write(tmp_path, '[event]\nid = "x"\nname = = "y"\n'))
    assert len(problems) == 1
    assert problems[0].path == "line 3"
    assert "TOML syntax error" in problems[0].message


def test_missing_file(tmp_path: Path) -> None:
    problems = check_event(tmp_path / "nope.toml")
    assert len(problems) == 1 and "no such file" in problems[0].message
    # whoever prints the problem names the file; the message does not repeat it
    assert "nope.toml" not in problems[0].message
    with pytest.raises(EventFileError) as caught:
        load_event(tmp_path / "nope.toml")
    assert str(caught.value).count("nope.toml") == 1


def test_unreadable_files_name_their_path_once(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b'[event]\nname = "caf\xe9"\n')
    for name, why in (("dir.toml", "is a directory"), ("latin1.toml", "not UTF-8")):
        with pytest.raises(EventFileError) as caught:
            load_event(tmp_path / name)
        assert why in str(caught.value)
        assert str(caught.value).count(name) == 1, str(caught.value)


def test_misspelled_time_zone_still_checks_session_times(tmp_path: Path) -> None:
    # every session-time problem is still found, read in a fallback zone and marked
    text = GOOD.replace('"Asia/Shanghai"', '"Asia/Shangai"') + """
[[forums]]
id = "sub"
name = "Sub"
capacity = 10

[[forums.sessions]]
id = "s1"
start = "2026-11-08T14:00"
end = "2026-11-08T15:00"
title = "One"

[[forums.sessions]]
id = "s2"
start = "2026-11-08T14:30"
end = "2026-11-08T14:00"
title = "Overlaps one, ends before it starts"

[[forums.sessions]]
id = "Bad Id"
start = "2026-11-08T14:45"
end = "2026-11-08T15:15"
title = "Overlaps one, bad id"

[[forums.sessions]]
id = "s4"
start = "2026-11-10T09:00"
end = "2026-11-10T10:00"
title = "After the event"
"""
    problems = problems_of(tmp_path, text)
    assert "'Asia/Shangai' is not a known IANA time zone" in problems["event.timezone"]
    marker = "(read in UTC: event.timezone is not usable)"
    assert "not after its start" in problems["forums[1].sessions[1].end"]
    assert "not on an event day" in problems["forums[1].sessions[3].start"]
    assert "not on an event day" in problems["forums[1].sessions[3].end"]
    assert "session forums[1].sessions[2] starts at 2026-11-08 14:45, before session 's1' ends" in problems[
        "forums[1].sessions[2].start"]
    timed = [key for key in problems if key.startswith("forums[1].sessions[") and key.endswith((".start", ".end"))]
    assert "before session 's1' ends" in problems["forums[1].sessions[1].start"]
    assert len(timed) == 5 and all(problems[key].endswith(marker) for key in timed)
    assert "use 1-64 lowercase" in problems["forums[1].sessions[2].id"]
    # with the zone right, the same problems are reported without the marker
    fixed = problems_of(tmp_path, text.replace('"Asia/Shangai"', '"Asia/Shanghai"'))
    assert set(fixed) == set(problems) - {"event.timezone"}
    assert not any(marker in message for message in fixed.values())


def test_every_problem_at_once(tmp_path: Path) -> None:
    broken = """
[event]
id = "Bad Id"
name = { en = "" }
timezone = "Mars/Olympus"
days = ["2026-11-08", "someday"]
colour = "red"

[[speakers]]
id = "ann"
name = "Ann"

[[speakers]]
id = "ann"
name = "Ann again"

[[speakers]]
id = "rec"
name = "Rec"
mode = "recorded"
video = "missing.mp4"

[[speakers]]
id = "rec2"
name = "Rec2"
mode = "recorded"

[[forums]]
id = "main"
name = "Main"
capacity = 0

[[forums.sessions]]
id = "a"
start = "2026-11-08T09:00"
end = "2026-11-08T08:00"
title = "Backwards"

[[forums]]
id = "main"
name = "Main twice"
capacity = "lots"
"""
    problems = problems_of(tmp_path, broken)
    assert "use 1-64 lowercase" in problems["event.id"]
    assert "English" in problems["event.name.en"]
    assert "'Mars/Olympus' is not a known IANA time zone" in problems["event.timezone"]
    assert "'someday' is not a date" in problems["event.days[1]"]
    assert "unknown key" in problems["event.colour"]
    assert "duplicate speaker id 'ann'" in problems["speakers[1].id"]
    assert "no such file: missing.mp4" in problems["speakers[2].video"]
    assert "a recorded speaker needs a video" in problems["speakers[3].video"]
    assert "must be greater than 0" in problems["forums[0].capacity"]
    assert "duplicate forum id 'main'" in problems["forums[1].id"]
    assert "must be an integer" in problems["forums[1].capacity"]
    with pytest.raises(EventFileError) as caught:
        load_event(write(tmp_path, broken))
    assert len(caught.value.problems) == len(problems)
    assert "problems" in str(caught.value) and "event.timezone" in str(caught.value)


def test_session_problems(tmp_path: Path) -> None:
    text = GOOD + """
[[forums]]
id = "sub"
name = "Sub"
capacity = 10

[[forums.sessions]]
id = "s1"
start = "2026-11-08T14:00"
end = "2026-11-08T15:00"
title = "One"
speakers = ["ann", "ghost"]

[[forums.sessions]]
id = "s2"
start = "2026-11-08T14:30"
end = "2026-11-08T15:30"
title = "Overlaps one"

[[forums.sessions]]
id = "s3"
start = "2026-11-10T09:00"
end = "2026-11-10T10:00"
title = "After the event"

[[forums.sessions]]
id = "s4"
start = "2026-11-09T11:00"
end = "2026-11-09T11:00"
title = "Zero length"

[[forums.sessions]]
id = "open"
start = "2026-11-09T12:00"
end = "2026-11-09T13:00"
title = "Duplicate id"

[[forums.sessions]]
id = "s6"
start = "half past two"
end = "2026-11-09T15:00"
title = "Bad time"
"""
    problems = problems_of(tmp_path, text)
    assert "unknown speaker 'ghost'" in problems["forums[1].sessions[0].speakers[1]"]
    assert "starts at 2026-11-08 14:30, before session 's1' ends at 2026-11-08 15:00" in problems[
        "forums[1].sessions[1].start"
    ]
    assert "2026-11-10 09:00 is not on an event day (2026-11-08, 2026-11-09)" in problems["forums[1].sessions[2].start"]
    assert "not after its start" in problems["forums[1].sessions[3].end"]
    assert "duplicate session id 'open'" in problems["forums[1].sessions[4].id"]
    assert "'half past two' is not a date-time" in problems["forums[1].sessions[5].start"]
    assert "not on an event day" in problems["forums[1].sessions[2].end"]
    assert len(problems) == 7


def test_sessions_are_local_to_the_event_time_zone(tmp_path: Path) -> None:
    # 23:30-00:00 Shanghai on the last day is inside the event, 00:00-01:00 the day after is not
    text = GOOD.replace('"2026-11-08T09:00"', '"2026-11-09T23:00"').replace('"2026-11-08T10:00"\ntitle = "Opening"',
                                                                           '"2026-11-10T00:00"\ntitle = "Opening"')
    event = load_event(write(tmp_path, text))
    forum = event.forum("main")
    assert forum is not None and forum.sessions[-1].end == dt.datetime(2026, 11, 10, 0, 0, tzinfo=SHANGHAI)
    late = GOOD.replace('"2026-11-08T09:00"', '"2026-11-10T00:00"').replace(
        '"2026-11-08T10:00"\ntitle = "Opening"', '"2026-11-10T01:00"\ntitle = "Opening"')
    problems = problems_of(tmp_path, late)
    assert "not on an event day" in problems["forums[0].sessions[0].start"]


def test_restream_problems(tmp_path: Path) -> None:
    text = GOOD + """
[[forums.restreams]]
id = "web"
name = "Duplicate"
url = "https://example.com/live"

[[forums.restreams]]
id = "nohost"
name = "No host"
url = "rtmp:///app"
key_env = "not a name"
"""
    problems = problems_of(tmp_path, text)
    assert "duplicate restream id 'web'" in problems["forums[0].restreams[1].id"]
    assert "the scheme must be rtmp:// or rtmps://" in problems["forums[0].restreams[1].url"]
    assert "names no host" in problems["forums[0].restreams[2].url"]
    assert "not an environment variable name" in problems["forums[0].restreams[2].key_env"]


def test_two_recorded_speakers_in_one_session(tmp_path: Path) -> None:
    text = GOOD.replace('speakers = ["rec"]', 'speakers = ["rec", "rec2"]').replace(
        "[[forums]]", '[[speakers]]\nid = "rec2"\nname = "Rec2"\nmode = "recorded"\nvideo = "clip.mp4"\n\n[[forums]]', 1
    )
    problems = problems_of(tmp_path, text)
    assert "more than one recorded speaker (rec, rec2)" in problems["forums[0].sessions[1].speakers"]


def test_sample_with_media_copied_elsewhere_still_resolves(tmp_path: Path) -> None:
    # video paths are relative to the event file, not to the working directory
    shutil.copytree(SAMPLE_EVENT.parent, tmp_path / "events")
    assert check_event(tmp_path / "events" / SAMPLE_EVENT.name) == []
    (tmp_path / "events" / "media" / "chen-jing.mp4").unlink()
    problems = check_event(tmp_path / "events" / SAMPLE_EVENT.name)
    assert problems and all("chen-jing.mp4" in p.message for p in problems)
    assert isinstance(problems[0], Problem) and problems[0].path.endswith(".video")


def test_unknown_forum_kind_and_speaker_mode(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "main"', 'kind = "plenary"').replace('mode = "live"', 'mode = "remote"')
    problems = problems_of(tmp_path, text)
    assert problems["forums[0].kind"] == "'plenary': must be main or sub"
    assert problems["speakers[0].mode"] == "'remote': must be live or recorded"
