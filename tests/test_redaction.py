"""What logs may show of strings that carry secrets."""

from __future__ import annotations

from config.redaction import mask_secrets, redact_url
from config.settings import load_settings


def test_urls_and_command_lines_lose_their_secrets() -> None:
    line = ("ffmpeg -i rtmp://127.0.0.1:1936/live/forum7-Key_0123456789 "
            "srt://0.0.0.0:9001?mode=listener&passphrase=forum7-Key_0123456789&pbkeylen=16 "
            "redis://user:hunter2hunter2@redis:6379/0 https://x.example/hook?token=abc123&x=1")
    masked = mask_secrets(line)
    for secret in ("forum7-Key_0123456789", "hunter2hunter2", "abc123"):
        assert secret not in masked
    assert "rtmp://127.0.0.1:1936/live/***" in masked and "pbkeylen=16" in masked and "x=1" in masked
    assert redact_url("redis://:pw-secret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_unix_socket_url_stays_a_url_settings_accept() -> None:
    # `serve --workers` prints its local Redis's URL: it must still read unix://, not unix:/
    url = "unix:///var/lib/forumcast/run/redis/12-34/redis.sock"
    assert redact_url(url) == url
    assert load_settings(None, env={}, redis_url=redact_url(url)).redis_url == url


def test_settings_never_show_the_token_secret(tmp_path: object) -> None:
    secret = "s" * 40
    settings = load_settings(env={}, token_secret=secret, data_dir=str(tmp_path))
    assert secret not in repr(settings) and secret not in str(settings)
