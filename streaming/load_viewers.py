"""One worker process of `forumcast loadtest` (signaling/loadtest.py):
light WebRTC viewers (streaming/light_viewer.py) that each POST a
recvonly offer to `/whep/{forum}` (RFC 9725), complete ICE and DTLS, are
counted off their sockets, and DELETE their session at the end.

    python -m streaming.load_viewers    (a JSON spec on stdin, the results on stdout)

The spec: {"url", "forum", "viewers": [{"id", "token", "start_at" (Unix
s)}], "end_at" (Unix s), "ice_addresses", "sample_every",
"connect_timeout" (s)}. The results: {"viewers": [ViewerResult as a
dict], "cpu_s": this process's CPU seconds, "rx_path": which receive path
counted (streaming/rtp_count.py: C, or Python when the extension is not
built or FORUMCAST_RX_PYTHON=1)}. Tokens come on stdin, never
argv. The coordinator starts these as processes and never imports the
packet path.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

EXIT_OK = 0


@dataclass(frozen=True)
class ViewerResult:
    viewer_id: str
    error: str = ""
    joined_ms: float | None = None
    first_video_ms: float | None = None
    packets: int = 0
    bytes: int = 0
    video: int = 0
    audio: int = 0
    expected: int = 0
    lost: int = 0
    checked: int = 0
    auth_failures: int = 0
    seconds: float = 0.0  # connected until the end of the run

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / 1000 / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.video > 0 and self.audio > 0 and self.auth_failures == 0


def error_text(status: int, body: str) -> str:
    try:
        error = json.loads(body)["error"]
        return f"{status} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {body[:200]}"


async def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from streaming.light_viewer import LightViewer, ViewerPool  # aiortc: only in workers
    from streaming.rtp_count import RX_PATH

    url, forum = spec["url"], spec["forum"]
    pool = ViewerPool(sample_every=spec["sample_every"], concurrency=10_000,
                      ice_addresses=tuple(spec["ice_addresses"]))
    sessions: dict[str, str] = {}
    errors: dict[str, str] = {}
    viewers: dict[str, LightViewer] = {}
    loop = asyncio.get_running_loop()
    mono_at = loop.time() - time.time()  # wall -> loop clock

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=spec["connect_timeout"])) as http:

        async def one(viewer_id: str, token: str | None, start_at: float) -> None:
            await asyncio.sleep(max(0.0, start_at + mono_at - loop.time()))

            async def signal(_: str, offer: str) -> str:
                headers = {"Content-Type": "application/sdp"}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with http.post(f"{url}/whep/{forum}", data=offer, headers=headers) as response:
                    body = await response.text()
                    if response.status != 201:
                        raise ConnectionError("WHEP " + error_text(response.status, body))
                    sessions[viewer_id] = urllib.parse.urljoin(url + "/", response.headers.get("Location", ""))
                    return body

            before = len(pool.errors)
            viewer = await pool.connect_one(viewer_id, signal, spec["connect_timeout"])
            if viewer is None:
                errors[viewer_id] = pool.errors[before] if len(pool.errors) > before else "failed"
            else:
                viewers[viewer_id] = viewer

        tasks = [asyncio.create_task(one(v["id"], v["token"], v["start_at"])) for v in spec["viewers"]]
        await asyncio.sleep(max(0.0, spec["end_at"] + mono_at - loop.time()))
        for task in tasks:
            task.cancel()  # a viewer still connecting at the end is reported as such
        await asyncio.gather(*tasks, return_exceptions=True)
        end = time.monotonic()
        results = []
        for v in spec["viewers"]:
            viewer_id = v["id"]
            viewer = viewers.get(viewer_id)
            if viewer is None:
                results.append(ViewerResult(viewer_id, error=errors.get(viewer_id, "not connected by the end")))
                continue
            c = viewer.counts()
            first = viewer.first_video_s
            results.append(ViewerResult(
                viewer_id, joined_ms=(viewer.joined_s or 0.0) * 1000,
                first_video_ms=first * 1000 if first is not None else None,
                packets=c.rtp, bytes=c.rtp_bytes, video=c.video, audio=c.audio,
                expected=c.expected, lost=c.lost, checked=c.checked, auth_failures=c.auth_failures,
                seconds=end - viewer.started_at - (viewer.joined_s or 0.0),
            ))
        for location in sessions.values():
            try:
                async with http.delete(location):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                pass  # the seat also comes back when the peer closes
        await pool.close()
    return {"viewers": [asdict(r) for r in results], "cpu_s": time.process_time(), "rx_path": RX_PATH}


def main() -> int:
    """The spec on stdin, the results on stdout."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run_worker(spec))), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
