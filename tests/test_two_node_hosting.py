"""Two forumcast nodes on one real Redis, with ForumHosts: only the
owner of a forum's lease hosts it (tests/cluster.py starts the nodes).

- a recorded slot starts exactly once across both nodes;
- an operator's take on node B changes the program hosted on node A;
- SIGKILL node A: node B hosts the forum within the lease + 2 s, B's
  viewer sees the slate, a speaker who reconnects (to B) goes on air.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from rooms.models import Role
from streaming.forum_host import SLATE_SIZE
from tests.cluster import LEASE_TTL_MS, Cluster, start_cluster
from tests.eventually import eventually
from tests.operator_app import RecordingViewer, SizedPublisher, make_video
from tests.server_process import ServerProcess

FORUM = "live"
RECORDED_FORUM = "simulive"
SPEAKER_SIZES = {"A": (320, 240), "B": (240, 160)}


def event_now(tmp_path: Path, recorded_started_s: float, video: Path) -> Path:
    """An event with a live forum (a session now) and a simulive one whose
    recorded talk started `recorded_started_s` ago (negative: starts later)."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def at(seconds: float) -> str:
        return (now + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")

    days = sorted({(now + dt.timedelta(hours=h)).date().isoformat() for h in (-3, 0, 3)})
    path = tmp_path / "now.toml"
    path.write_text(
        f'[event]\nid = "now"\nname = {{ en = "Now", zh = "现在" }}\ntimezone = "UTC"\n'
        f'days = [{", ".join(days)}]\npublic = false\n\n'
        '[[speakers]]\nid = "ada"\nname = { en = "Ada Lovelace", zh = "阿达" }\n'
        'affiliation = { en = "Engines", zh = "引擎" }\nmode = "live"\n\n'
        '[[speakers]]\nid = "chen"\nname = { en = "Chen Jing", zh = "陈静" }\n'
        f'affiliation = {{ en = "AI", zh = "AI" }}\nmode = "recorded"\nvideo = "{video}"\n\n'
        f'[[forums]]\nid = "{FORUM}"\nkind = "sub"\nname = {{ en = "Live", zh = "直播" }}\n'
        'room = { en = "Room", zh = "会议室" }\ncapacity = 50\n\n'
        f'[[forums.sessions]]\nid = "live-1"\nstart = "{at(-600)}"\nend = "{at(3000)}"\n'
        'title = { en = "Live talk", zh = "直播" }\nspeakers = ["ada"]\n\n'
        f'[[forums]]\nid = "{RECORDED_FORUM}"\nkind = "sub"\nname = {{ en = "Simulive", zh = "录播" }}\n'
        'room = { en = "Room 2", zh = "会议室2" }\ncapacity = 50\n\n'
        f'[[forums.sessions]]\nid = "rec-1"\nstart = "{at(-recorded_started_s)}"\n'
        f'end = "{at(-recorded_started_s + 1800)}"\n'
        'title = { en = "Recorded talk", zh = "录播" }\nspeakers = ["chen"]\n',
        encoding="utf-8")
    return path


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    video = make_video(tmp_path / "talk.mp4", 90, size="320x240", rate=15)  # long enough to join mid-talk
    event = event_now(tmp_path, recorded_started_s=20, video=video)
    with start_cluster(redis_url, extra_args=["--event", str(event)]) as started:
        yield started


def playout_starts(node: ServerProcess, forum_id: str) -> list[str]:
    """The recorded talks the node's agenda started in the forum (its log)."""
    text = node.log_path.read_text(errors="replace")
    return re.findall(rf"AgendaScheduler: \S+ plays in {re.escape(forum_id)} as \S+ from \d+ s", text)


async def whip(http: aiohttp.ClientSession, node: ServerProcess, token: str, peer: SizedPublisher) -> str:
    """Publish on `node`, following a redirect to the owner; the WHIP resource URL."""
    offer = await peer.offer()
    url = f"{node.url}/whip/{FORUM}"
    for _ in range(2):
        response = await http.post(url, data=offer, allow_redirects=False,
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        if response.status == 307:
            url = response.headers["Location"]
            continue
        assert response.status == 201, await response.text()
        await peer.accept(await response.text())
        return url.split("/whip/")[0] + response.headers["Location"]
    raise AssertionError("redirected twice")


async def whep(http: aiohttp.ClientSession, node: ServerProcess, viewer: RecordingViewer) -> None:
    offer = await viewer.offer()
    response = await http.post(f"{node.url}/whep/{FORUM}", data=offer, headers={
        "Authorization": f"Bearer {node.token(Role.VIEWER, [FORUM], 'Guest')}", "Content-Type": "application/sdp"})
    assert response.status == 201, await response.text()
    await viewer.accept(await response.text())


async def sources(node: ServerProcess, http: aiohttp.ClientSession, forum_id: str, kind: str) -> list[str]:
    """The ids of the forum's live sources of `kind` (the shared store, through `node`)."""
    response = await http.get(f"{node.url}/api/forums/{forum_id}")
    return [s["id"] for s in (await response.json()).get("sources", []) if s["kind"] == kind and s["state"] == "live"]


@pytest.mark.slow
async def test_a_recorded_slot_starts_exactly_once_across_both_nodes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]

    def starts() -> dict[str, int]:
        return {name: len(playout_starts(cluster[name], RECORDED_FORUM)) for name in ("a", "b")}

    await eventually(lambda: sum(starts().values()) >= 1, timeout=60, what="the recorded talk to start")
    owner = cluster.owner(RECORDED_FORUM, "a")
    hosting = "a" if owner == cluster.node_id("a") else "b"
    other = "b" if hosting == "a" else "a"
    assert RECORDED_FORUM in cluster.cluster_view(hosting)["hosted"]
    assert RECORDED_FORUM not in cluster.cluster_view(other)["hosted"]
    await eventually(lambda: sources(a, http, RECORDED_FORUM, "recorded"), timeout=30, what="the playout live")
    # the other node's scheduler saw the same slot and left it to the owner (its log says so)
    await eventually(lambda: f"in {RECORDED_FORUM} plays on the node hosting the forum" in cluster[other].log(),
                     timeout=30, what="the other node to leave the slot to the owner")
    assert starts() == {hosting: 1, other: 0}
    assert len(await sources(b, http, RECORDED_FORUM, "recorded")) == 1
    joined = playout_starts(cluster[hosting], RECORDED_FORUM)[0]
    from_s = int(joined.rsplit("from ", 1)[1].split()[0])
    assert from_s >= 20  # the slot began 20 s before the nodes: it joined where the talk is


@pytest.mark.slow
async def test_a_take_on_node_b_changes_the_program_hosted_on_node_a(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    speakers = {name: SizedPublisher(*size) for name, size in SPEAKER_SIZES.items()}
    viewer = RecordingViewer()
    try:
        token = a.token(Role.SPEAKER, [FORUM], "Speaker")
        ids: dict[str, str] = {}

        async def new_source() -> list[str]:
            return [s for s in await sources(a, http, FORUM, "live") if s not in ids.values()]

        for name, peer in speakers.items():
            await whip(http, a, token, peer)  # the first publish makes a the owner
            ids[name] = (await eventually(new_source, timeout=30, what=f"speaker {name} live"))[0]
        assert cluster.owner(FORUM, "b") == cluster.node_id("a")
        assert FORUM in cluster.cluster_view("a")["hosted"] and FORUM not in cluster.cluster_view("b")["hosted"]
        await whep(http, a, viewer)
        ops = b.token(Role.OPERATOR, [FORUM], "Ops on B")
        for name in ("A", "B", "A"):
            asked = time.monotonic()
            response = await http.post(f"{b.url}/api/forums/{FORUM}/program", json={"source": ids[name]},
                                       headers={"Authorization": f"Bearer {ops}"})
            assert response.status == 200, await response.text()
            await viewer.wait_size(SPEAKER_SIZES[name], timeout=30, after=asked)
        refused = await http.post(f"{b.url}/api/forums/{FORUM}/program", json={"source": "no-such-source"},
                                  headers={"Authorization": f"Bearer {ops}"})
        assert refused.status in (404, 409)  # the owner's refusal, with its code, through b
        assert (await refused.json())["error"]["code"] in ("not_found", "conflict")
        assert FORUM not in cluster.cluster_view("b")["hosted"]  # b forwarded, it never hosted the forum
    finally:
        await viewer.close()
        for peer in speakers.values():
            await peer.close()


@pytest.mark.slow
async def test_sigkill_a_then_b_hosts_within_the_lease_and_2_s_its_viewer_sees_the_slate_and_a_speaker_returns(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster["a"], cluster["b"]
    speaker, returning = SizedPublisher(*SPEAKER_SIZES["A"]), SizedPublisher(*SPEAKER_SIZES["B"])
    viewer = RecordingViewer()
    try:
        token = a.token(Role.SPEAKER, [FORUM], "Speaker")
        await whip(http, a, token, speaker)
        assert cluster.owner(FORUM, "b") == cluster.node_id("a")
        await whep(http, b, viewer)  # b's viewer: b needs the forum too
        b_id = cluster.node_id("b")

        killed_at = time.monotonic()
        cluster.kill("a")
        await eventually(lambda: FORUM in cluster.cluster_view("b")["hosted"], timeout=60,
                         what="b to host the forum")
        took_s = time.monotonic() - killed_at
        print(f"b hosts {took_s:.2f} s after a's SIGKILL (lease {LEASE_TTL_MS} ms)")
        assert cluster.owner(FORUM, "b") == b_id
        assert took_s <= LEASE_TTL_MS / 1000 + 2.0
        await viewer.wait_size(SLATE_SIZE, timeout=30, after=killed_at)

        back = time.monotonic()
        await whip(http, b, token, returning)  # the speaker's encoder reconnects, to the node that answers
        await viewer.wait_size(SPEAKER_SIZES["B"], timeout=30, after=back)  # on air again
    finally:
        await viewer.close()
        await speaker.close()
        await returning.close()
