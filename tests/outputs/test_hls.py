"""HLS on a whole node: the playlist needs a viewer token, advances, its
segments (~2 s, signed, immutable) decode with libavformat; old ones go."""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from config.settings import Settings
from rooms.event_file import load_event
from rooms.models import Role
from signaling.hls_api import HLS
from tests.eventually import eventually
from tests.operator_app import Node, running_node
from tests.outputs.helpers import probe

pytestmark = pytest.mark.timeout(240)
FORUM = "ai"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as running:
        yield running


def media_sequence(playlist: str) -> int:
    match = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist)
    assert match, playlist
    return int(match.group(1))


@pytest.mark.slow
async def test_playlist_advances_segments_are_2_s_signed_and_cacheable(node: Node, tmp_path: Path) -> None:
    base = f"{node.url}/hls/{FORUM}"
    token = node.token(Role.VIEWER, [FORUM])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/index.m3u8") as r:
            assert r.status == 401
        async with http.get(f"{base}/index.m3u8", params={"token": node.token(Role.VIEWER, ["main"])}) as r:
            assert r.status == 403
        async with http.get(f"{node.url}/hls/nope/index.m3u8", params={"token": token}) as r:
            assert r.status == 404

        async def playlist() -> str:
            async with http.get(f"{base}/index.m3u8", params={"token": token}) as r:
                if r.status != 200:
                    return ""
                assert r.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
                assert r.headers["Cache-Control"] == "private, max-age=1"
                return await r.text()

        async def with_segments(n: int) -> str:
            text = await playlist()
            return text if text.count("#EXTINF") >= n else ""

        first = await eventually(lambda: with_segments(3), timeout=120, interval=0.5, what="3 segments")

        async def slid() -> str:
            text = await with_segments(6)
            return text if text and media_sequence(text) > media_sequence(first) else ""

        text = await eventually(slid, timeout=120, interval=0.5, what="the window sliding")
        assert media_sequence(text) > media_sequence(first)
        durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", text)]
        assert all(1.5 <= d <= 2.5 for d in durations), durations
        init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
        assert init is not None
        uris = [init.group(1)] + [line for line in text.splitlines() if line and not line.startswith("#")]
        assert all("sig=" in u and "exp=" in u for u in uris)
        joined = tmp_path / "hls.mp4"
        with joined.open("wb") as out:
            for uri in uris:
                async with http.get(f"{base}/{uri}") as r:
                    assert r.status == 200, uri
                    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                    assert r.headers["Content-Type"] in ("video/mp4", "video/iso.segment")
                    out.write(await r.read())
        name = uris[1].split("?")[0]
        async with http.get(f"{base}/{name}") as r:
            assert r.status == 403  # unsigned
        async with http.get(f"{base}/{name}?exp=99999999999&sig=00") as r:
            assert r.status == 403
    info = probe(joined)
    assert info["video"][:3] == ("h264", 320, 180) and info["audio"] == ("aac", 48000)
    output = node.app[HLS].outputs[FORUM]
    assert len(list(output.directory.glob("seg-*.m4s"))) <= 6 + 3  # old segments deleted


async def test_a_public_events_playlist_needs_no_token(tmp_path: Path) -> None:
    """As socket.io lets a public event's guests watch without an invite,
    so does HLS (the watch page's fallback); a token sent is still checked."""
    event = dataclasses.replace(load_event(Settings().event_file), public=True)
    async with running_node(tmp_path / "node", event=event, output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as node:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/hls/{FORUM}/index.m3u8", params={"token": "garbage"}) as r:
                assert r.status == 401

            async def playlist() -> str:
                async with http.get(f"{node.url}/hls/{FORUM}/index.m3u8") as r:
                    assert r.status in (200, 503), r.status  # 503: the first segments are being made
                    return await r.text() if r.status == 200 else ""

            text = await eventually(playlist, timeout=120, interval=0.5, what="the playlist")
            assert "#EXTINF" in text


def test_the_dvr_window_setting_lists_enough_segments() -> None:
    from pathlib import Path as P

    from streaming.hls_output import hls_args, window_segments

    assert window_segments(0) == 6 and window_segments(5) == 6 and window_segments(121) == 61
    args = hls_args("tcp://127.0.0.1:1", P("/tmp/x"), "ab", segment_s=2, window=window_segments(600))
    assert args[args.index("-hls_list_size") + 1] == "300"


async def test_nodes_of_one_event_accept_each_others_segment_urls(tmp_path: Path) -> None:
    """The signing key is derived from the event's token secret: a playlist
    from one node signs URLs every node of the event (or a CDN in front of
    them) accepts; a node with another secret refuses them."""
    secret = secrets.token_urlsafe(48)
    async with running_node(tmp_path / "a", token_secret=secret) as a, \
            running_node(tmp_path / "b", token_secret=secret) as b, running_node(tmp_path / "c") as c:
        query = a.app[HLS].signed_query(FORUM, time.time())
        assert query == b.app[HLS].signed_query(FORUM, time.time())
        async with aiohttp.ClientSession() as http:
            for node, status in ((a, 404), (b, 404), (c, 403)):  # 404: signed right, no such segment here
                async with http.get(f"{node.url}/hls/{FORUM}/seg-ab-00001.m4s?{query}") as r:
                    assert r.status == status, (node.url, await r.text())


async def test_a_nodes_hls_never_empties_another_nodes_on_a_shared_data_dir(tmp_path: Path) -> None:
    """serve --workers: the nodes share the data dir; each forum's HLS
    directory was data_dir/hls/<forum>, emptied by whichever node started
    (or stopped) that forum's HLS, in a handover the other's live segments.
    Now per server run; a dead run's are removed at a start."""
    import subprocess

    from streaming.child_processes import run_id, start_ticks

    data = tmp_path / "node"
    other = subprocess.Popen(["sleep", "600"])  # another node on this data dir, serving HLS
    try:
        theirs = data / "hls" / f"{other.pid}-{start_ticks(other.pid)}" / FORUM
        crashed = data / "hls" / "999999999-1" / FORUM
        for directory in (theirs, crashed):
            directory.mkdir(parents=True)
            (directory / "seg-0-00001.m4s").write_bytes(b"segment")
        async with running_node(data, output_width=320, output_height=180, output_fps=15, output_video_kbps=300,
                                output_audio_kbps=64, output_preset="ultrafast") as node:
            token = node.token(Role.VIEWER, [FORUM])
            async with aiohttp.ClientSession() as http:
                async def playlist() -> bool:
                    async with http.get(f"{node.url}/hls/{FORUM}/index.m3u8", params={"token": token}) as r:
                        return r.status == 200

                await eventually(playlist, timeout=120, interval=0.5, what="the playlist")
            mine = node.app[HLS].outputs[FORUM].directory
            assert mine == data / "hls" / run_id() / FORUM
            assert (theirs / "seg-0-00001.m4s").read_bytes() == b"segment"
            assert not crashed.parent.exists()
    finally:
        other.kill()
        other.wait()
