"""Simulive with a moved agenda clock on a real node: a recorded speaker's
video starts at its slot and goes on air (a viewer decodes it), plays at
real-time rate (RTP timestamps against the wall clock over 20 s), and
stops when its slot ends; in manual mode it plays as a source but is not
taken."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rooms.models import Event, Forum, ForumKind, Role, Session, Speaker, SpeakerMode, Text
from signaling.app_keys import HOSTS, LIBRARY, ROOMS, SCHEDULER
from tests.machine_time import RunQueueWait
from tests.eventually import eventually
from tests.operator_app import Node, RecordingViewer, SioClient, make_video, running_node

pytestmark = pytest.mark.timeout(150)

T0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)
SLOT = dt.timedelta(seconds=30)


class MovedClock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def simulive_event(video: Path) -> Event:
    speaker = Speaker("rec", Text("Rec Orded"), SpeakerMode.RECORDED, video=video)
    start = T0 + dt.timedelta(minutes=1)

    def forum(forum_id: str) -> Forum:
        return Forum(forum_id, Text(forum_id.upper()), ForumKind.SUB, capacity=10,
                     sessions=(Session(f"{forum_id}-s1", Text("Talk"), start, start + SLOT, ("rec",)),))

    return Event(id="sim", name=Text("Sim"), timezone="UTC", days=(T0.date(),),
                 forums=(forum("sim"), forum("manual")), speakers={"rec": speaker})


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "talk.mp4", 24, "320x240")


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for client in reversed(made):
        await client.close()


async def _viewer(node: Node, forum_id: str, clients: list[Any]) -> tuple[SioClient, RecordingViewer]:
    client = SioClient()
    viewer = RecordingViewer()
    clients.extend([viewer, client])
    await client.connect(node, node.token(Role.VIEWER, [forum_id], "Guest"))
    await client.call("join", {"forum_id": forum_id})
    answer = await client.call("watch", {"forum_id": forum_id, "sdp": await viewer.offer()})
    await viewer.accept(answer["sdp"])
    return client, viewer


async def test_recorded_session_starts_at_its_slot_on_air_in_real_time(tmp_path: Path, video: Path,
                                                                     clients: list[Any]) -> None:
    clock = MovedClock(T0)
    event = simulive_event(video)
    async with running_node(tmp_path / "node", event=event, agenda_now=clock) as node:
        runner = node.app[SCHEDULER]
        client, viewer = await _viewer(node, "sim", clients)
        await runner.step()  # the unmoved clock: nothing is due
        assert node.app[HOSTS].running_playouts("sim") == []

        clock.now = T0 + dt.timedelta(minutes=1, milliseconds=100)
        runner.poke()
        running = await asyncio.wait_for(runner.started.get(), 60)  # includes normalizing once
        assert running.playout.forum_id in ("sim", "manual")
        second = await asyncio.wait_for(runner.started.get(), 30)
        by_forum = {r.playout.forum_id: r for r in (running, second)}
        assert by_forum["sim"].on_air is True
        program = await client.next_push("program", lambda p: p["program"] == by_forum["sim"].source_id)
        assert program["source"]["kind"] == "recorded"
        first = await viewer.wait_size((320, 240), timeout=30)
        waited = RunQueueWait()

        # 20 s of playout in real time: the media clock keeps to the wall clock at the viewer, off by
        # no more than a tolerance plus what the machine withheld (the rate: python -m bench.playout)
        await viewer.video_frames.wait_until(lambda _: viewer.frames[-1].at - first.at >= 20.0, 60)
        frames = [f for f in viewer.frames if f.at >= first.at and (f.width, f.height) == (320, 240)]
        media_s = ((frames[-1].pts - frames[0].pts) & 0xFFFFFFFF) / 90000
        wall_s = frames[-1].at - frames[0].at
        assert abs(media_s - wall_s) <= 0.3 + waited.seconds(), (media_s, wall_s, waited.seconds())

        # the slot ends (before the 24 s file does): stopped, the slate on air
        clock.now = T0 + dt.timedelta(minutes=1) + SLOT
        runner.poke()
        await client.next_push("program", lambda p: p["program"] is None and p["slate"], timeout=10)
        assert node.app[HOSTS].running_playouts("sim") == []


async def test_manual_forum_plays_the_video_but_does_not_take_it(tmp_path: Path, video: Path,
                                                                 clients: list[Any]) -> None:
    clock = MovedClock(T0)
    event = simulive_event(video)
    async with running_node(tmp_path / "node", event=event, agenda_now=clock) as node:
        op = SioClient()
        clients.append(op)
        await op.connect(node, node.token(Role.OPERATOR, ["manual"]))
        await op.call("join", {"forum_id": "manual"})
        assert (await op.call("set_manual", {"forum_id": "manual", "manual": True}))["program"]["manual"]
        clock.now = T0 + dt.timedelta(minutes=1, seconds=1)
        node.app[SCHEDULER].poke()
        started = {}
        for _ in range(2):
            running = await asyncio.wait_for(node.app[SCHEDULER].started.get(), 60)
            started[running.playout.forum_id] = running
        assert started["manual"].on_air is False and started["sim"].on_air is True
        source_id = started["manual"].source_id
        sources = await op.next_push("sources", lambda p: any(s["id"] == source_id and s["state"] == "live"
                                                              for s in p["sources"]))
        assert sources["forum_id"] == "manual"
        program = await node.app[ROOMS].program("manual")
        assert program.program is None and program.slate
        # the operator takes it when ready
        ack = await op.call("take", {"forum_id": "manual", "source_id": source_id})
        assert ack["program"]["program"] == source_id
        # labelled from the agenda (session title and speaker), not by its file name, wherever
        # sources are listed: the sources push, the program (ack, join), the playouts list
        label = "Talk — Rec Orded"
        assert next(s["name"] for s in sources["sources"] if s["id"] == source_id) == label
        assert ack["program"]["source"]["name"] == label
        assert (await op.call("join", {"forum_id": "manual"}))["program"]["source"]["name"] == label
        [playout] = node.app[HOSTS].running_playouts("manual")
        assert playout.to_json()["name"] == label and playout.to_json()["file"] == "talk.mp4"
        # the operator plays the same talk from the library: labelled the same
        again = await op.call("playout_start", {"forum_id": "manual", "media": playout.item.id})
        assert again["playout"]["name"] == label, again
        assert (await node.app[ROOMS].sources("manual"))[-1].name == label



async def test_a_node_started_mid_slot_joins_the_talk_where_it_is(tmp_path: Path, video: Path,
                                                                  clients: list[Any]) -> None:
    """A (re)start 12 s into a recorded slot: the talk is not skipped, it
    goes on air from its keyframe at 12 s, not from its opening."""
    slot_start = T0 + dt.timedelta(minutes=1)
    clock = MovedClock(slot_start + dt.timedelta(seconds=12))
    event = simulive_event(video)
    async with running_node(tmp_path / "node", event=event, agenda_now=clock) as node:
        client, viewer = await _viewer(node, "sim", clients)
        runner = node.app[SCHEDULER]
        poked = time.monotonic()
        runner.poke()
        started = {}
        for _ in range(2):
            running = await asyncio.wait_for(runner.started.get(), 60)  # includes normalizing once
            started[running.playout.forum_id] = running
        assert started["sim"].on_air is True
        playout = next(p for p in node.app[HOSTS].running_playouts("sim") if p.source_id == started["sim"].source_id)
        await client.next_push("program", lambda p: p["program"] == started["sim"].source_id)
        await viewer.wait_size((320, 240), timeout=30)
        assert playout.player.position >= 12.0  # the file's 24 s, joined at its keyframe at 12 s
        # ... and played on from there in real time (not from the opening, not in a burst)
        assert playout.player.position <= 12.0 + (time.monotonic() - poked) + 0.5
        assert runner.stats.skipped == []


async def test_a_recorded_speakers_own_upload_plays_in_their_slot(tmp_path: Path, video: Path,
                                                                  clients: list[Any]) -> None:
    """The speaker uploads from their invite token (tus); operators see it
    arrive; at the slot their upload plays, not the event file's video."""
    import aiohttp

    from tests.test_media_uploads import create, patch

    clock = MovedClock(T0)
    async with running_node(tmp_path / "node", event=simulive_event(video), agenda_now=clock) as node:
        operator = SioClient()
        clients.append(operator)
        await operator.connect(node, node.token(Role.OPERATOR, ["sim"], "Op"))
        await operator.call("join", {"forum_id": "sim"})
        own = make_video(tmp_path / "my-talk.mp4", 3, "240x160")
        speaker = node.token(Role.SPEAKER, ["sim"], "Rec Orded")  # as `forumcast invite` names them
        base = f"{node.url}/api/forums/sim"
        async with aiohttp.ClientSession() as http:
            status, location = await create(http, base, speaker, own.stat().st_size, "my-talk.mp4")
            assert status == 201
            response = await patch(http, node.url + location, speaker, 0, own.read_bytes())
            assert response.status == 204
        done = await operator.next_push("media_job", lambda j: j["state"] == "done" and j["name"] == "my-talk.mp4",
                                      timeout=60)
        item = node.app[LIBRARY].get(done["media"])
        assert item.speaker_id == "rec" and item.uploaded_by == "Rec Orded" and item.width == 240

        clock.now = T0 + dt.timedelta(minutes=1, milliseconds=100)
        node.app[SCHEDULER].poke()
        await node.app[SCHEDULER].started.get()

        def playing_in_sim() -> list[str]:
            return [p.item.id for p in node.app[HOSTS].running_playouts("sim")]

        await eventually(playing_in_sim, timeout=60, what="the slot starts in forum sim")
        assert playing_in_sim() == [item.id]
