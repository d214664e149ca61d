"""Manual recording over socket.io: start, the "recording" pushes, stop
(finalized), refusals as error acks."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from recorder.recording import RecordingInfo, complete_segments
from rooms.models import Event, Forum, ForumKind, Role, Session, Text
from signaling.app_keys import HOSTS, SETTINGS
from signaling.recording_api import RECORDER
from tests.eventually import eventually
from tests.operator_app import Node, SioClient, running_node

pytestmark = pytest.mark.timeout(180)
FORUM = "ai"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as running:
        yield running


async def test_recording_start_push_stop_over_socketio(node: Node) -> None:
    operator, viewer = SioClient(), SioClient()
    try:
        await operator.connect(node, node.token(Role.OPERATOR, [FORUM]))
        await operator.call("join", {"forum_id": FORUM})
        await viewer.connect(node, node.token(Role.VIEWER, [FORUM]))
        refused = await viewer.call("recording_start", {"forum_id": FORUM})
        assert refused["error"]["code"] == "forbidden"
        assert (await operator.call("recording_stop", {"forum_id": FORUM}))["error"]["code"] == "not_found"
        assert (await operator.call("recording_start", {"forum_id": FORUM, "session": 5}))["error"]["code"] == "invalid"
        ack = await operator.call("recording_start", {"forum_id": FORUM, "session": "panel"})
        recording = ack["recording"]
        assert recording["state"] == "recording" and recording["session"] == "panel"
        again = await operator.call("recording_start", {"forum_id": FORUM})
        assert again["error"]["code"] == "conflict"
        push = await operator.next_push("recording", lambda p: p["id"] == recording["id"])
        assert push["state"] == "recording"
        directory = node.app[SETTINGS].data_dir / "recordings" / FORUM / recording["id"]
        await eventually(lambda: len(complete_segments(directory)) >= 1, timeout=90, what="a complete segment")
        stopped = (await operator.call("recording_stop", {"forum_id": FORUM}))["recording"]
        assert stopped["state"] == "finalized" and stopped["duration_s"] > 0 and stopped["size"] > 0
        await operator.next_push("recording", lambda p: p["state"] == "finalized")
    finally:
        await operator.sio.disconnect()
        await viewer.sio.disconnect()


async def test_a_live_session_of_a_recorded_forum_records_through_its_host(tmp_path: Path) -> None:
    """Sessions of `recorded` forums record while live (record_sessions),
    through the node's ForumHosts: the forum is hosted (slate on) and the
    recording carries the session's id; the other forum is neither."""
    start = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)

    def forum(forum_id: str, recorded: bool) -> Forum:
        return Forum(forum_id, Text(forum_id.upper()), ForumKind.SUB, capacity=10, recorded=recorded,
                     sessions=(Session(f"{forum_id}-s1", Text("Talk"), start, start + dt.timedelta(hours=1), ()),))

    event = Event(id="rec", name=Text("Rec"), timezone="UTC", days=(start.date(),),
                  forums=(forum("kept", True), forum("other", False)))
    async with running_node(tmp_path / "node", event=event, agenda_now=lambda: start + dt.timedelta(minutes=5),
                            record_sessions=True, output_width=320, output_height=180, output_fps=15,
                            output_video_kbps=300, output_audio_kbps=64, output_preset="ultrafast") as node:
        def recordings() -> list[RecordingInfo]:
            return node.app[RECORDER].recordings()

        await eventually(lambda: [r.session for r in recordings() if r.state == "recording"] == ["kept-s1"],
                         timeout=90, what="the live session recording")
        assert node.app[HOSTS].hosted() == ["kept"]
        host = node.app[HOSTS].get("kept")
        assert host is not None and host.slate is not None
