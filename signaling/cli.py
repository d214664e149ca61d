"""The `forumcast` command: serve, token, invite, loadtest, check-event.

Exit codes: 0 ok; 1 check-event found problems (loadtest: some viewers
did not receive); 2 the command could not
run (bad settings, bad event file, bad arguments, port in use). Expected
failures print one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config.redaction import redact_url
from config.settings import Settings, SettingsError, load_or_create_secret, load_settings
from rooms.errors import RoomError
from rooms.event_file import EventFileError, check_event
from rooms.invites import (
    InviteError,
    default_ttl_seconds,
    invite_link,
    make_invites,
    parse_forums,
    parse_role,
    read_guests,
    write_invites,
)
from rooms.models import Event
from rooms.tokens import TokenService

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CommandError(Exception):
    """A failure to report in one line, with exit code 2."""


def parse_ttl(text: str) -> float:
    """'90' or '90s', '30m', '12h', '7d', '2w' -> seconds."""
    found = _TTL.fullmatch(text.strip().lower())
    if not found or float(found.group(1)) <= 0:
        raise CommandError(f"--ttl={text!r}: not a duration like 3600, 30m, 12h or 7d")
    return float(found.group(1)) * _TTL_UNITS[found.group(2)]


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(
        Path(args.config) if args.config else None,
        event_file=args.event,
        data_dir=args.data_dir,
        **extra,
    )


def _event(settings: Settings) -> Event:
    from signaling.app import load_app_event  # deferred: aiohttp is not needed to check a file

    return load_app_event(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args, host=args.host, port=args.port, redis_url=args.redis, node_id=args.node_id,
        public_url=args.public_url, demo=True if args.demo else None,
    )
    if args.workers is not None:
        return _serve_workers(args, settings)
    from signaling.app import run

    try:
        asyncio.run(run(settings))
    except OSError as exc:
        raise CommandError(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    except Exception as exc:
        if _is_redis_error(exc):
            raise CommandError(f"cannot use Redis at {redact_url(settings.redis_url or '')}: {exc}") from None
        raise
    return EXIT_OK


def _serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    from signaling.local_redis import LocalRedisError
    from signaling.node_workers import PassThrough, WorkersError, serve_workers, worker_count

    try:
        count = worker_count(args.workers)
        passed = PassThrough(config=args.config, event=args.event, log_level=args.log_level, demo=bool(args.demo))
        return asyncio.run(serve_workers(settings, count, passed))
    except (WorkersError, LocalRedisError) as exc:
        raise CommandError(str(exc)) from None


def _is_redis_error(exc: Exception) -> bool:
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, redis.RedisError)


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args, public_url=args.public_url)
    event = _event(settings)
    role = parse_role(args.role)
    forums = parse_forums(";".join(args.forum), event)
    ttl = parse_ttl(args.ttl) if args.ttl else default_ttl_seconds(event)
    tokens = TokenService(load_or_create_secret(settings))
    token = tokens.issue(role, forums, args.name, ttl_seconds=ttl, language=args.language or "")
    print(f"token: {token}")
    print(f"link: {invite_link(settings.public_url, role, forums, token)}")
    print(f"expires: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(time.time() + ttl))}", file=sys.stderr)
    return EXIT_OK


def cmd_invite(args: argparse.Namespace) -> int:
    settings = _settings(args, public_url=args.public_url)
    event = _event(settings)
    guests = read_guests(Path(args.guests), event)
    ttl = parse_ttl(args.ttl) if args.ttl else default_ttl_seconds(event)
    invites = make_invites(guests, TokenService(load_or_create_secret(settings)), settings.public_url, ttl)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                write_invites(invites, out)
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {len(invites)} invites to {args.output}", file=sys.stderr)
    else:
        write_invites(invites, sys.stdout)
    return EXIT_OK


def cmd_check_event(args: argparse.Namespace) -> int:
    path = Path(args.file)
    problems = check_event(path)
    if problems:
        for problem in problems:
            print(str(problem) if problem.path else f"{path}: {problem.message}")
        print(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {path}", file=sys.stderr)
        return EXIT_PROBLEMS
    from rooms.event_file import load_event

    event = load_event(path)
    sessions = sum(len(forum.sessions) for forum in event.forums)
    print(f"ok: {len(event.forums)} forums, {sessions} sessions")
    return EXIT_OK


def cmd_loadtest(args: argparse.Namespace) -> int:
    from signaling import loadtest  # deferred: aiortc is only needed here and in its workers

    try:
        return loadtest.cmd_loadtest(args)
    except loadtest.LoadtestError as exc:
        raise CommandError(f"loadtest: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forumcast", description="The online half of a hybrid conference.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="F", help="settings file (TOML); default $FORUMCAST_CONFIG")
    common.add_argument("--event", metavar="F", help="event file (TOML); default the sample event")
    common.add_argument("--data-dir", metavar="D", help="token secret, media library, recordings")
    common.add_argument("--public-url", metavar="URL", help="base of invite links")

    serve = commands.add_parser("serve", parents=[common], help="run one node")
    serve.add_argument("--host", metavar="H")
    serve.add_argument("--port", metavar="P")
    serve.add_argument("--redis", metavar="URL", help="share state with other nodes through Redis")
    serve.add_argument("--node-id", metavar="ID")
    serve.add_argument("--workers", metavar="N",
                       help="run N nodes on this machine (0 or auto: one per core) on ports port..port+N-1, "
                            "with a local redis-server unless --redis is given")
    serve.add_argument("--demo", action="store_true",
                       help="move the event so it runs now (a live session, a recorded talk in 1-2 min); "
                            "labelled Demo; the file is unchanged")
    serve.set_defaults(handler=cmd_serve)

    token = commands.add_parser("token", parents=[common], help="issue one token and its invite link")
    token.add_argument("--role", required=True, help="viewer, speaker, operator or admin")
    token.add_argument("--forum", required=True, action="append", help="forum id (repeat for several, '*' for all)")
    token.add_argument("--name", required=True, help="the holder's display name")
    token.add_argument("--ttl", help="lifetime like 12h or 7d; default: through the end of the event")
    token.add_argument("--language", help="preferred language, e.g. en or zh")
    token.set_defaults(handler=cmd_token)

    invite = commands.add_parser("invite", parents=[common], help="tokens and links for a guests CSV")
    invite.add_argument("guests", help="CSV with columns name,email,language,forums,role")
    invite.add_argument("-o", "--output", metavar="OUT", help="write the CSV here (default: stdout)")
    invite.add_argument("--ttl", help="lifetime like 12h or 7d; default: through the end of the event")
    invite.set_defaults(handler=cmd_invite)

    load = commands.add_parser("loadtest", parents=[common],
                               help="light WebRTC viewers (WHEP) against a node: join, first frame, kb/s, loss, CPU")
    from signaling.loadtest import add_arguments  # stdlib + aiohttp only at import

    add_arguments(load)
    load.set_defaults(handler=cmd_loadtest)
    check = commands.add_parser("check-event", help="report every problem in an event file")
    check.add_argument("file")
    check.set_defaults(handler=cmd_check_event)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with usage on bad arguments
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        _fail(f"bad setting: {exc}")
    except EventFileError as exc:
        _fail(str(exc))
    except InviteError as exc:
        _fail(str(exc))
    except RoomError as exc:
        _fail(exc.message)
    except CommandError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # before serve's own signal handling is in place
        return 130
    return EXIT_USAGE


def _fail(message: str) -> None:
    print(f"forumcast: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
