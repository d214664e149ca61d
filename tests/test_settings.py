from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from config.settings import (
    SAMPLE_EVENT,
    Settings,
    SettingsError,
    ffmpeg_path,
    load_or_create_secret,
    load_settings,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forumcast.toml"
    path.write_text(text)
    return path


def test_defaults_run_one_node_without_services() -> None:
    settings = load_settings(env={})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.redis_url is None
    assert settings.event_file == SAMPLE_EVENT and SAMPLE_EVENT.is_file()
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.ice_addresses == ()
    assert settings.ingest_host == "127.0.0.1"  # venue listeners expose nothing until asked
    assert settings.node_id
    assert settings.public_event is None


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9001\nhost = "127.0.0.1"\nchat_max_length = 100\nnode_id = "from-file"\n')
    settings = load_settings(path, env={"FORUMCAST_PORT": "9002", "FORUMCAST_NODE_ID": "from-env"}, node_id="cli")
    assert settings.port == 9002  # environment beats the file
    assert settings.chat_max_length == 100  # the file beats the default
    assert settings.node_id == "cli"  # the command line beats both
    assert settings.public_url == "http://127.0.0.1:9002"


def test_none_overrides_are_ignored() -> None:
    settings = load_settings(env={"FORUMCAST_PORT": "9003"}, port=None)
    assert settings.port == 9003


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "slate_grace_ms = 250\n")
    assert load_settings(env={"FORUMCAST_CONFIG": str(path)}).slate_grace_ms == 250


def test_env_lists_bools_and_paths(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "FORUMCAST_ICE_ADDRESSES": "127.0.0.1, ::1",
            "FORUMCAST_PUBLIC_EVENT": "true",
            "FORUMCAST_DATA_DIR": str(tmp_path),
            "FORUMCAST_HEARTBEAT_INTERVAL_S": "0.5",
            "FORUMCAST_REDIS_URL": "redis://127.0.0.1:6399/0",
            "FORUMCAST_INGEST_HOST": "0.0.0.0",
        }
    )
    assert settings.ingest_host == "0.0.0.0"
    assert settings.ice_addresses == ("127.0.0.1", "::1")
    assert settings.public_event is True
    assert settings.data_dir == tmp_path
    assert settings.heartbeat_interval_s == 0.5
    assert settings.redis_url == "redis://127.0.0.1:6399/0"


def test_relative_paths_in_file_are_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "state"\n')
    assert load_settings(path, env={}).data_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FORUMCAST_PORT": "abc"}, "FORUMCAST_PORT='abc': not an integer"),
        ({"FORUMCAST_PORT": "0"}, "FORUMCAST_PORT='0': must be 1-65535"),
        ({"FORUMCAST_UDP_PORT": "70000"}, "FORUMCAST_UDP_PORT='70000': must be 0 (off: a port per peer) or 1-65535"),
        ({"FORUMCAST_CHAT_RATE_PER_MINUTE": "-3"}, "FORUMCAST_CHAT_RATE_PER_MINUTE='-3': must be a positive integer"),
        ({"FORUMCAST_ICE_ADDRESSES": "127.0.0.1,nowhere"}, "FORUMCAST_ICE_ADDRESSES='127.0.0.1,nowhere': 'nowhere' is not an IP address"),
        ({"FORUMCAST_REDIS_URL": "http://x"}, "FORUMCAST_REDIS_URL='http://x': must start with redis://"),
        ({"FORUMCAST_PUBLIC_EVENT": "maybe"}, "FORUMCAST_PUBLIC_EVENT='maybe': not a boolean"),
        ({"FORUMCAST_NODE_TTL_S": "soon"}, "FORUMCAST_NODE_TTL_S='soon': not a number"),
        ({"FORUMCAST_EVENT_FILE": "/nonexistent/event.toml"}, "FORUMCAST_EVENT_FILE='/nonexistent/event.toml': no such file"),
        ({"FORUMCAST_FFMPEG": "/nonexistent/ffmpeg"}, "FORUMCAST_FFMPEG='/nonexistent/ffmpeg': no such executable"),
        ({"FORUMCAST_PUBLIC_URL": "ftp://x"}, "FORUMCAST_PUBLIC_URL='ftp://x': must be an http:// or https:// URL"),
        ({"FORUMCAST_NODE_ID": "has space"}, "FORUMCAST_NODE_ID='has space': must be 1-64 characters"),
    ],
)
def test_bad_env_values_name_key_value_and_why(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert expected in str(caught.value)


def test_bad_file_values_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^port=70000 in forumcast.toml: must be 1-65535$"):
        load_settings(write(tmp_path, "port = 70000\n"), env={})
    with pytest.raises(SettingsError, match=r"port=true in forumcast.toml: not an integer"):
        load_settings(write(tmp_path, "port = true\n"), env={})


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"unknown key 'prot' in forumcast.toml"):
        load_settings(write(tmp_path, "prot = 8080\n"), env={})


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"not valid TOML .*line 1"):
        load_settings(write(tmp_path, "port = = 1\n"), env={})
    with pytest.raises(SettingsError, match=r"no such file"):
        load_settings(tmp_path / "missing.toml", env={})


def test_cli_override_errors_and_cross_checks() -> None:
    with pytest.raises(SettingsError, match=r"port='x' \(command line\): not an integer"):
        load_settings(env={}, port="x")
    with pytest.raises(SettingsError, match=r"unknown setting 'colour'"):
        load_settings(env={}, colour="red")
    with pytest.raises(SettingsError, match=r"node_ttl_s=1.0 must be longer than heartbeat_interval_s=2.0"):
        load_settings(env={"FORUMCAST_NODE_TTL_S": "1"})
    with pytest.raises(SettingsError, match=r"rtmp_port=1935: the same TCP port as port=1935"):
        load_settings(env={"FORUMCAST_PORT": "1935"})


def test_short_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"FORUMCAST_TOKEN_SECRET": "hunter2"})
    assert "FORUMCAST_TOKEN_SECRET=<hidden>: must be at least 32 characters" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=str(tmp_path / "var"))
    first = load_or_create_secret(settings)
    path = tmp_path / "var" / "token_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_or_create_secret(settings) == first  # reused after a restart
    configured = Settings(token_secret="s" * 40, data_dir=tmp_path)
    assert load_or_create_secret(configured) == "s" * 40


def test_loose_secret_file_is_tightened(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secret = load_or_create_secret(settings)
    os.chmod(settings.secret_path, 0o644)
    assert load_or_create_secret(settings) == secret
    assert stat.S_IMODE(settings.secret_path.stat().st_mode) == 0o600


def test_ffmpeg_path_defaults_to_imageio_binary() -> None:
    path = ffmpeg_path(Settings())
    assert os.access(path, os.X_OK)
    assert ffmpeg_path(Settings(ffmpeg="/bin/true")) == "/bin/true"


def test_data_dir_is_per_user_not_per_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "share"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.data_dir == home / "share" / "forumcast"
    assert settings.secret_path == home / "share" / "forumcast" / "token_secret"
    assert settings.media_dir == home / "share" / "forumcast" / "media"
    # an explicit relative directory is resolved once, where the command starts
    assert load_settings(env={"FORUMCAST_DATA_DIR": "state"}).data_dir == tmp_path / "state"
    assert load_settings(env={}, data_dir="state").data_dir == tmp_path / "state"
    assert Settings(data_dir=Path("state")).data_dir == tmp_path / "state"
    monkeypatch.chdir(home.parent)
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="FORUMCAST_DATA_DIR='.*file': exists and is not a directory"):
        load_settings(env={"FORUMCAST_DATA_DIR": str(tmp_path / "file")})
