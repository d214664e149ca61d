"""Restream to two stand-in platforms (real ffmpeg RTMP listeners, one
behind TLS) from one program encode; a platform that goes away for 5 s
is reconnected, the other never notices; the key stays secret."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from streaming.forum_outputs import ProgramOutputs
from streaming.restream import RestreamError, RestreamStatus, check_url
from tests.eventually import eventually
from tests.outputs.helpers import SMALL, probe, program_bus, slate_feed
from tests.outputs.platforms import Platform

KEY_A = "live_a1b2c3d4e5f6-secret"
KEY_B = "sk-tls-9z8y7x6w5v4u-secret"


def test_urls_with_credentials_or_other_schemes_are_refused() -> None:
    assert check_url("rtmps://live.example.com:443/app") == "rtmps://live.example.com:443/app"
    for bad in ("http://x/app", "rtmp://u:p@x/app", "rtmp://x/app?key=1", "rtmp:///app", "rtmp://x:99999/a"):
        with pytest.raises(RestreamError):
            check_url(bad)


@pytest.mark.slow
async def test_two_platforms_one_dropping_for_5_s(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    # the TLS stand-in's certificate is self-signed: trust it as OpenSSL's default CA
    plain = Platform("plain", tmp_path, KEY_A)
    secure = Platform("secure", tmp_path, KEY_B, tls=True)
    plain_file = await plain.start()
    await secure.start()
    assert secure.cert is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(secure.cert))

    feed, slate = await slate_feed("Main Hall", "slate", 640, 360)
    tall, tall_slate = await slate_feed("Phone", "phone", 240, 320)
    bus = program_bus()
    bus.switch_to(feed)
    outputs = ProgramOutputs(lambda forum_id: bus, SMALL)
    events: list[dict[str, object]] = []
    went_live: dict[str, float] = {}

    def on_status(forum_id: str, status: object, restream_id: str) -> None:
        assert isinstance(status, RestreamStatus)
        events.append(status.to_json())
        if status.state == "live":
            went_live.setdefault(restream_id, time.monotonic())

    outputs.add_listener(on_status)
    forum = outputs.forum("main")
    a = forum.add("Plain platform", plain.url, KEY_A)
    b = forum.add("TLS platform", secure.url, KEY_B)
    try:
        await forum.start(a.id)
        await forum.start(b.id)
        await eventually(lambda: a.state == "live" and b.state == "live", timeout=90,
                         what="both destinations live")
        await eventually(lambda: a.status().bitrate_kbps > 0, timeout=30, what="a bitrate")
        bus.switch_to(tall)  # a take to a source of another size, mid-restream
        await eventually(lambda: bus.on_air == "phone", timeout=30, what="the take")
        # the TLS platform goes away for 5 s
        await secure.crash()
        gone_at = time.monotonic()
        await eventually(lambda: b.state in ("retrying", "connecting"), timeout=30, what="b retrying")
        await eventually(lambda: time.monotonic() - gone_at >= 5.0, timeout=30, what="5 s of outage")
        bus.switch_to(feed)  # and back (as the slate covering a dropped source would)
        await eventually(lambda: bus.on_air == "slate", timeout=30, what="the cut back")
        second = await secure.start()
        back_at = time.monotonic()
        await eventually(lambda: b.state == "live" and b.lives == 2, timeout=60, what="b live again")
        print(f"b live again {time.monotonic() - back_at:.1f} s after the platform's return")
        # (a static slate encodes to a few kb/s: the file is checked after the stop)
        await eventually(lambda: b.status().uptime_s >= 3, timeout=30, what="b live for 3 s")
        assert a.state == "live" and a.lives == 1  # never noticed
        status = b.status().to_json()
        assert status["attempt"] == 0 and status["state"] == "live"
        encoder = forum.encoder
        assert encoder is not None and encoder.tee.first_keyframe_at is not None
        program_began = encoder.tee.first_keyframe_at  # a started with the encoder's first keyframe
        await forum.stop(a.id)
        streamed = time.monotonic() - program_began
        await forum.stop(b.id)
    finally:
        await outputs.close()
        await slate.stop()
        await tall_slate.stop()
        await plain.stop()
        await secure.stop()
    assert forum.encoder is None  # no output needs it any more

    for path in (plain_file, second):
        info = probe(path)
        assert info["video"][:3] == ("h264", 320, 180), path
        assert info["audio"] == ("aac", 48000), path
    plain_info = probe(plain_file)
    pts = plain_info["video_pts"]
    assert isinstance(pts, list)
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert min(steps) > 0 and max(steps) < 0.5  # monotonic, no gap across the takes or the other's outage
    duration = float(plain_info["duration"])  # type: ignore[arg-type]
    print(f"plain platform file {duration:.2f} s for {streamed:.2f} s streamed")
    assert abs(duration - streamed) < 1.0

    retrying = [e for e in events if e.get("state") == "retrying"]
    assert retrying and all(e["last_error"] for e in retrying)
    # (the stand-in platforms' own command lines name the key they expect: not ours)
    ours = [r.getMessage() for r in caplog.records if "(platform-" not in r.getMessage()]
    text = "\n".join(ours) + repr(events) + "".join(str(r.status()) for r in (a, b))
    for key in (KEY_A, KEY_B):
        assert key not in text


def test_event_file_destinations_take_their_key_from_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    from config.settings import SAMPLE_EVENT
    from rooms.event_file import load_event

    caplog.set_level(logging.INFO)
    main = load_event(SAMPLE_EVENT).forum("main")
    assert main is not None and len(main.restreams) == 2
    outputs = ProgramOutputs(lambda forum_id: program_bus(), SMALL)
    skipped = outputs.load_event_destinations("main", main.restreams, {"FORUMCAST_KEY_MAIN_WEBCAST": KEY_A})
    assert skipped == ["video-site"]  # its variable is unset: not added, said in the log
    statuses = [s.to_json() for s in outputs.forum("main").statuses()]
    assert [(s["id"], s["state"], s["url"]) for s in statuses] == [
        ("webcast", "idle", "rtmps://live.example.com:443/app")]
    assert "FORUMCAST_KEY_MAIN_VIDEO" in caplog.text and KEY_A not in caplog.text + repr(statuses)


def test_a_push_failure_is_told_in_words_not_as_a_python_exception() -> None:
    """The control page showed 'ConnectionRefusedError: [Errno 111] Connection refused'."""
    import av

    from streaming.restream_push import in_words

    refused = in_words(av.error.ConnectionRefusedError(111, "Connection refused"))
    assert refused.startswith("the platform refused the connection") and "Error" not in refused
    assert in_words(ConnectionResetError(104, "Connection reset by peer")).startswith("the platform closed")
    assert in_words(TimeoutError("timed out")).startswith("the platform did not answer")
    assert "Error" not in in_words(RuntimeError("odd"))
