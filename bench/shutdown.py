"""How long a node takes to stop while several forums record.

Starts the real server (tests/server_process.py) at the configured
output profile (default 720p30 veryfast), starts a manual recording on
`--forums` forums over REST, waits until each has `--segments` complete
segments, sends SIGTERM and times the exit; then reports how many
recordings were finalized and how many ffmpeg children needed a signal
(the server log's "did not end" lines).

    python3 -m bench.shutdown [--forums 4] [--segments 2] [--small]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import urllib.request

from recorder.recording import complete_segments, load_meta
from rooms.models import Role
from tests.eventually import eventually_blocking
from tests.server_process import ServerProcess, start_server

SMALL_ENV = {
    "FORUMCAST_OUTPUT_WIDTH": "320", "FORUMCAST_OUTPUT_HEIGHT": "180", "FORUMCAST_OUTPUT_FPS": "15",
    "FORUMCAST_OUTPUT_VIDEO_KBPS": "300", "FORUMCAST_OUTPUT_PRESET": "ultrafast",
}


def _call(server: ServerProcess, method: str, path: str, token: str) -> dict[str, object]:
    req = urllib.request.Request(server.url + path, method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as response:
        body: dict[str, object] = json.loads(response.read() or b"{}")
        return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forums", type=int, default=4)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="320x180 ultrafast instead of the default profile")
    args = parser.parse_args()
    server = start_server(extra_env={"FORUMCAST_RECORD_SESSIONS": "false", **(SMALL_ENV if args.small else {})})
    try:
        admin = server.token(Role.ADMIN)
        listing = _call(server, "GET", "/api/forums", admin)
        forums = [str(f["id"]) for f in listing["forums"]][: args.forums]  # type: ignore[index, union-attr]
        started = {f: str(_call(server, "POST", f"/api/forums/{f}/recording/start", admin)["id"]) for f in forums}
        root = server.data_dir / "recordings"
        eventually_blocking(lambda: all(len(complete_segments(root / f / rid)) >= args.segments
                                        for f, rid in started.items()),
                            timeout=240, what=f"{args.segments} complete segments in each recording")
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=180)
        took = time.monotonic() - sent
        log = server.log_path.read_text(errors="replace")
        finalized = sum(1 for f, rid in started.items()
                        if (info := load_meta(root / f / rid)) is not None and info.state == "finalized")
        print(f"{len(forums)} recorded forums ({'320x180 ultrafast' if args.small else 'default profile'}): "
              f"SIGTERM -> exit {took:.1f} s, {finalized}/{len(forums)} finalized, "
              f"{log.count('did not end')} 'did not end' lines in the log")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
