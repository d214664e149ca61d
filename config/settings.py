"""Typed settings: a TOML file, then FORUMCAST_* environment variables, then
explicit overrides (the CLI). Later sources win.

Every value is checked once, here, at start: a wrong setting stops the
process with a message naming the key, the value, where it came from and
why. The defaults run one node with no external service (in-memory state,
the packaged sample event, the ffmpeg from the imageio-ffmpeg wheel).

Nothing depends on the working directory: state lives in one data
directory per user and platform (platformdirs: ~/.local/share/forumcast
on Linux, $XDG_DATA_HOME respected), so `forumcast token` run anywhere
signs with the secret the server started elsewhere checks. A relative
data_dir given on the command line or in the environment is resolved
once, against the directory the command was started in.

This module imports nothing from rooms/, signaling/, streaming/ or recorder/.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

logger = logging.getLogger(__name__)

ENV_PREFIX = "FORUMCAST_"
CONFIG_ENV = "FORUMCAST_CONFIG"  # names the TOML file when no path is given
SAMPLE_EVENT = Path(__file__).resolve().parent / "events" / "summit.toml"
SECRET_FILE = "token_secret"
MEDIA_DIR = "media"
APP_NAME = "forumcast"
MIN_SECRET_LENGTH = 32  # HS256 wants a 256-bit key; shorter ones are guessable


class SettingsError(ValueError):
    """A setting that cannot be used; the message names key, value and why."""


def default_data_dir() -> Path:
    """The per-user data directory (absolute): platformdirs' user data dir,
    e.g. ~/.local/share/forumcast or $XDG_DATA_HOME/forumcast on Linux,
    ~/Library/Application Support/forumcast on macOS. Not created here."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)).resolve()


def _default_node_id() -> str:
    name = socket.gethostname() or "node"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64]
    return cleaned or "node"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    event_file: Path = SAMPLE_EVENT
    redis_url: str | None = None  # None: in-memory store, single node
    node_id: str = dataclasses.field(default_factory=_default_node_id)
    # everything a node keeps between runs (absolute): token_secret, media/
    # (the library, uploads in progress under media/tmp/); see secret_path,
    # media_dir. FORUMCAST_DATA_DIR / --data-dir / data_dir in the TOML file.
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    # repr=False: a logged Settings never shows it; None: generated once, kept in data_dir
    token_secret: str | None = dataclasses.field(default=None, repr=False)
    public_url: str = ""  # base of invite links; "" -> http://{host}:{port}
    ffmpeg: str | None = None  # None: imageio-ffmpeg's binary
    ice_addresses: tuple[str, ...] = ()  # empty: every local interface
    udp_port: int = 7882  # one UDP port for all WebRTC media (ICE/DTLS/SRTP) on each ICE address (the firewall's one rule); 0: a port per peer
    fanout_batch: bool = True  # viewers' packets protected and sent in one C call per packet (streaming/fanout_batch.py); false: one Python call per viewer
    ice_tcp: bool = True  # with udp_port: ICE-TCP (RFC 6544, passive) on the same port number, for peers without UDP
    keyframe_request_interval_ms: int = 500
    slate_grace_ms: int = 1000
    ice_timeout_s: float = 30.0  # a publisher not connected this long after its answer: ice_failed (viewers: viewer_connect_timeout_s)
    publisher_timeout_s: float = 20.0  # a WHIP/WebRTC publisher not heard from for this long is gone
    rtmp_port: int = 1935
    srt_port: int = 9000
    # where venue encoders connect (RTMP gate, SRT listener); loopback by
    # default so a fresh install exposes nothing: set 0.0.0.0 at the venue
    ingest_host: str = "127.0.0.1"
    max_upload_bytes: int = 2 * 1024**3  # checked from Upload-Length / Content-Length before a byte is stored
    normalize_max_fps: int = 30  # recorded talks: the real maximum frame rate, capped here
    max_conversions_per_token: int = 2  # unfinished uploads/conversions per token (429 beyond)
    max_conversions_per_forum: int = 4
    chat_max_length: int = 500
    chat_rate_per_minute: int = 10
    heartbeat_interval_s: float = 2.0
    node_ttl_s: float = 6.0
    # placement (rooms/placement.py): a node is full at this many WebRTC viewers or this
    # share of one core (its process's CPU over the last heartbeat)
    node_max_viewers: int = 500
    node_max_cpu: float = 0.8
    # the tree of edges (rooms/edge_tree.py): a node serves this many edge links per forum
    # before new edges are sent to pull from an existing edge, at most edge_max_depth hops
    # from the origin. Each link costs its server one viewer's fan-out (~1/500 of a node): 8
    # keep that under 2% of a node while one hop serves 8 x 500 = 4,000 viewers; 3 levels reach
    # 8 + 64 + 512 edges, each level one hop (~100 ms) more behind the origin
    edge_fanout: int = 8
    edge_max_depth: int = 3
    # one owner per forum (rooms/forum_ownership.py): a dead owner's forum is taken over
    # within lease_ttl_ms + lease_ttl_ms/10; a forum nobody needed for forum_idle_s is given up
    lease_ttl_ms: int = 5000
    forum_idle_s: float = 60.0
    public_event: bool | None = None  # None: what the event file says
    demo: bool = False  # True: the event is moved to run now (rooms/demo.py), labelled "Demo"
    # demo mode's "now" (Unix s); 0: when the node starts. Nodes of one cluster must agree
    # on it or each runs its own agenda (a restarted node would replay the recorded talk):
    # `serve --workers` sets one for all its workers
    demo_now: float = 0.0
    # bounds per token holder and per forum (docs/DESIGN.md "Bounds"); 0 lifts one
    seats_per_token: int = 2  # viewer seats one invite holds at once in a forum (a phone and a laptop)
    sources_per_token: int = 4  # live sources one token publishes at once in a forum
    sources_per_forum: int = 32  # sources of every kind in a forum (slate and venue feeds excepted)
    viewer_connect_timeout_s: float = 10.0  # a viewer whose ICE/DTLS is not up by then is closed, its seat freed
    # /metrics without a token from loopback addresses (a Prometheus on this host); off: an admin token
    metrics_loopback_open: bool = False
    # STUN/TURN URLs handed to clients (pages, WHIP/WHEP Link headers); TURN ones get
    # coturn REST-API credentials from turn_secret (coturn's static-auth-secret), valid turn_credential_ttl_s
    ice_servers: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_credential_ttl_s: int = 6 * 3600
    # the program encode every output of a forum shares (restream, HLS, recording)
    output_width: int = 1280
    output_height: int = 720
    output_fps: int = 30
    output_video_kbps: int = 3000
    output_audio_kbps: int = 128
    output_preset: str = "veryfast"  # x264
    record_sessions: bool = True  # record sessions of forums marked `recorded` while live
    record_iso: bool = False  # also record each live source of a recording forum, copy only (an "iso")
    hls_dvr_window_s: int = 0  # 0: a 12 s live window; else the seconds of rewind the HLS playlist offers

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        if not self.public_url:
            host = self.host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"  # a wildcard bind is not an address to link to
            elif ":" in host:
                host = f"[{host}]"
            object.__setattr__(self, "public_url", f"http://{host}:{self.port}")

    @property
    def secret_path(self) -> Path:
        """data_dir/token_secret: the HS256 key, mode 0600."""
        return self.data_dir / SECRET_FILE

    @property
    def media_dir(self) -> Path:
        """data_dir/media: the normalized media library and its uploads."""
        return self.data_dir / MEDIA_DIR


# --- value parsers: each returns the typed value or raises ValueError(why) ---


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            raise ValueError("not an integer") from None
    raise ValueError("not an integer")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError("not a number") from None
    raise ValueError("not a number")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("not a boolean (true or false)")


def _as_optional_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        if lowered in ("", "auto", "event"):
            return None
    raise ValueError("not a boolean (true/false, or empty for what the event file says)")


def _port(value: Any) -> int:
    number = _as_int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be 1-65535")
    return number


def _port_or_zero(value: Any) -> int:
    number = _as_int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be 0 (off: a port per peer) or 1-65535")
    return number


def _positive_int(value: Any) -> int:
    number = _as_int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_int(value: Any) -> int:
    number = _as_int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _positive_float(value: Any) -> float:
    number = _as_float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _non_negative_float(value: Any) -> float:
    number = _as_float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be 0 or a positive number")
    return number


def _host(value: Any) -> str:
    text = _as_str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if any(ch.isspace() for ch in text) or "/" in text:
        raise ValueError("not a host name or IP address")
    return text


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    text = _as_str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text).expanduser()


def _data_dir(value: Any) -> Path:
    # absolute from here on: the node never resolves it against a later cwd
    path = _path(value).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError("exists and is not a directory")
    return path


def _event_file(value: Any) -> Path:
    path = _path(value).absolute()  # resolved once, where the command starts
    if not path.is_file():
        raise ValueError("no such file")
    return path


def _redis_url(value: Any) -> str | None:
    if value is None:
        return None
    text = _as_str(value).strip()
    if not text:
        return None  # empty means "no Redis", handy to switch it off from the environment
    if not re.match(r"^(redis|rediss|unix)://", text):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def _node_id(value: Any) -> str:
    text = _as_str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return text


def _token_secret(value: Any) -> str | None:
    if value is None:
        return None
    text = _as_str(value)
    if not text:
        return None
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
    return text


def _public_url(value: Any) -> str:
    text = _as_str(value).strip().rstrip("/")
    if not text:
        return ""
    if not re.match(r"^https?://[^/\s:]+", text):
        raise ValueError("must be an http:// or https:// URL with a host")
    return text


def _ffmpeg(value: Any) -> str | None:
    if value is None:
        return None
    text = _as_str(value).strip()
    if not text:
        return None
    if os.sep not in text:
        found = shutil.which(text)
        if found is None:
            raise ValueError("no such executable on PATH")
        return found
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise ValueError("no such executable file")
    return text


def _ice_addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = [_as_str(part).strip() for part in value]
    else:
        raise ValueError("not a list of IP addresses")
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(items)


_ICE_URL = re.compile(r"(stuns?|turns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(\?transport=(udp|tcp))?")


def _ice_servers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = [_as_str(part).strip() for part in value]
    else:
        raise ValueError("not a list of STUN/TURN URLs")
    for item in items:
        if not _ICE_URL.fullmatch(item):
            raise ValueError(f"{item!r} is not a STUN/TURN URL like stun:host:3478 or "
                             "turn:host:3478?transport=udp (RFC 7064, RFC 7065)")
    return tuple(items)


def _turn_secret(value: Any) -> str | None:
    text = _as_str(value).strip()
    if not text:
        return None
    if len(text) < 16:
        raise ValueError("shorter than 16 characters")
    return text


_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _x264_preset(value: Any) -> str:
    if value not in _X264_PRESETS:
        raise ValueError(f"must be one of {', '.join(_X264_PRESETS)}")
    return str(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "host": _host,
    "port": _port,
    "event_file": _event_file,
    "redis_url": _redis_url,
    "node_id": _node_id,
    "data_dir": _data_dir,
    "token_secret": _token_secret,
    "public_url": _public_url,
    "ffmpeg": _ffmpeg,
    "ice_addresses": _ice_addresses,
    "udp_port": _port_or_zero,
    "fanout_batch": _as_bool,
    "ice_tcp": _as_bool,
    "keyframe_request_interval_ms": _positive_int,
    "slate_grace_ms": _non_negative_int,
    "ice_timeout_s": _positive_float,
    "publisher_timeout_s": _positive_float,
    "rtmp_port": _port,
    "srt_port": _port,
    "ingest_host": _host,
    "max_upload_bytes": _positive_int,
    "normalize_max_fps": _positive_int,
    "max_conversions_per_token": _positive_int,
    "max_conversions_per_forum": _positive_int,
    "chat_max_length": _positive_int,
    "chat_rate_per_minute": _positive_int,
    "heartbeat_interval_s": _positive_float,
    "node_ttl_s": _positive_float,
    "node_max_viewers": _positive_int,
    "node_max_cpu": _positive_float,
    "edge_fanout": _positive_int,
    "edge_max_depth": _positive_int,
    "lease_ttl_ms": _positive_int,
    "forum_idle_s": _positive_float,
    "public_event": _as_optional_bool,
    "demo": _as_bool,
    "demo_now": _non_negative_float,
    "seats_per_token": _non_negative_int,
    "sources_per_token": _non_negative_int,
    "sources_per_forum": _non_negative_int,
    "viewer_connect_timeout_s": _positive_float,
    "metrics_loopback_open": _as_bool,
    "ice_servers": _ice_servers,
    "turn_secret": _turn_secret,
    "turn_credential_ttl_s": _positive_int,
    "output_width": _positive_int,
    "output_height": _positive_int,
    "output_fps": _positive_int,
    "output_video_kbps": _positive_int,
    "output_audio_kbps": _positive_int,
    "output_preset": _x264_preset,
    "record_sessions": _as_bool,
    "record_iso": _as_bool,
    "hls_dvr_window_s": _non_negative_int,
}
_PATH_KEYS = {"event_file", "data_dir"}
_SECRET_KEYS = {"token_secret", "turn_secret"}  # never echo these values in errors

assert set(_PARSERS) == {f.name for f in dataclasses.fields(Settings)}, "a setting has no parser"


def _show(key: str, value: Any) -> str:
    if key in _SECRET_KEYS:
        return "<hidden>"
    if isinstance(value, bool):
        return str(value).lower()  # as TOML writes it
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def _parse(key: str, value: Any, label: str, where: str, base: Path | None) -> Any:
    """Parse one value; `label` is how the user wrote the key, `where` the
    source (" in forumcast.toml", "" for the environment)."""
    if key in _PATH_KEYS and base is not None and isinstance(value, str) and value:
        # paths in a settings file are relative to that file, not to the cwd
        candidate = Path(value).expanduser()
        value = candidate if candidate.is_absolute() else base / candidate
    try:
        return _PARSERS[key](value)
    except ValueError as exc:
        raise SettingsError(f"{label}={_show(key, value)}{where}: {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"settings file {str(path)!r}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"settings file {str(path)!r}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {str(path)!r}: not valid TOML ({exc})") from None
    for key in data:
        if key not in _PARSERS:
            known = ", ".join(sorted(_PARSERS))
            raise SettingsError(f"unknown key {key!r} in {path.name}: known keys are {known}")
    return data


def load_settings(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build Settings from `path` (or $FORUMCAST_CONFIG), then `env` (default
    os.environ), then `overrides` (None values are ignored, so a CLI can pass
    its unset options straight through)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, Any] = {}

    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    if path is not None:
        path = Path(path)
        for key, raw in _read_file(path).items():
            values[key] = _parse(key, raw, key, f" in {path.name}", path.resolve().parent)

    for key in _PARSERS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            values[key] = _parse(key, environ[name], name, "", None)

    for key, raw in overrides.items():
        if key not in _PARSERS:
            raise SettingsError(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = _parse(key, raw, key, " (command line)", None)

    settings = Settings(**values)
    if settings.node_ttl_s <= settings.heartbeat_interval_s:
        raise SettingsError(
            f"node_ttl_s={settings.node_ttl_s} must be longer than "
            f"heartbeat_interval_s={settings.heartbeat_interval_s}, or live nodes expire"
        )
    if settings.lease_ttl_ms < 300:
        raise SettingsError(f"lease_ttl_ms={settings.lease_ttl_ms}: under 300 ms a renewal cannot keep up")
    if settings.port == settings.rtmp_port:
        raise SettingsError(
            f"rtmp_port={settings.rtmp_port}: the same TCP port as port={settings.port}"
        )
    if any(url.startswith(("turn:", "turns:")) for url in settings.ice_servers) and not settings.turn_secret:
        raise SettingsError(
            "ice_servers lists a TURN server but turn_secret is not set: clients would get no "
            "credentials (set it to coturn's static-auth-secret)"
        )
    return settings


def ffmpeg_path(settings: Settings) -> str:
    """The ffmpeg binary to run: the configured one, or imageio-ffmpeg's."""
    if settings.ffmpeg:
        return settings.ffmpeg
    import imageio_ffmpeg  # deferred: only media code needs it

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def load_or_create_secret(settings: Settings) -> str:
    """The HS256 secret for tokens: the configured one, else the one persisted
    in data_dir/token_secret (mode 0600), created on first start."""
    if settings.token_secret:
        return settings.token_secret
    path = settings.secret_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"data_dir={str(settings.data_dir)!r}: cannot create ({exc.strerror})") from None
    secret = secrets.token_urlsafe(48)
    try:
        # O_EXCL: two nodes starting at once on one data_dir agree on one secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as exc:
        raise SettingsError(f"token secret {str(path)!r}: cannot create ({exc.strerror})") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    logger.info("generated a new token secret in %s", path)
    return secret


def _read_secret(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("token secret %s was readable by others (mode %o): set to 0600", path, mode)
        os.chmod(path, 0o600)
    text = path.read_text().strip()
    if len(text) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"token secret {str(path)!r}: shorter than {MIN_SECRET_LENGTH} characters; "
            "delete it to generate a new one (outstanding tokens stop working)"
        )
    return text
