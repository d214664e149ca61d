"""signaling/protocol.py: every client payload becomes a typed request or
a RoomError with the documented code."""

from __future__ import annotations

from typing import Any

import pytest

from rooms.errors import RoomError
from rooms.models import ProgramState
from signaling import protocol

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def code_of(parse: Any, payload: Any) -> str:
    with pytest.raises(RoomError) as refused:
        parse(payload)
    assert refused.value.message
    return refused.value.code


def test_good_payloads_become_typed_requests() -> None:
    assert protocol.parse_join({"forum_id": "ai"}) == protocol.JoinRequest("ai")
    assert protocol.parse_publish({"forum_id": "ai", "sdp": OFFER}) == protocol.PublishRequest("ai", OFFER)
    assert protocol.parse_watch({"forum_id": "ai", "sdp": OFFER}).source_id is None
    assert protocol.parse_watch({"forum_id": "ai", "sdp": OFFER, "source_id": "src-1"}).source_id == "src-1"
    assert protocol.parse_unpublish({"source_id": "src-1"}) == protocol.UnpublishRequest("src-1")
    assert protocol.parse_unwatch({"viewer_id": "abc.w1"}) == protocol.UnwatchRequest("abc.w1")
    assert protocol.parse_leave(None) == protocol.parse_leave({}) == protocol.LeaveRequest()


@pytest.mark.parametrize("parse,payload,code", [
    (protocol.parse_join, None, "invalid"),
    (protocol.parse_join, "ai", "invalid"),
    (protocol.parse_join, ["ai"], "invalid"),
    (protocol.parse_join, {}, "invalid"),
    (protocol.parse_join, {"forum_id": 1}, "invalid"),
    (protocol.parse_join, {"forum_id": ""}, "invalid"),
    (protocol.parse_join, {"forum_id": "a/b"}, "invalid"),
    (protocol.parse_join, {"forum_id": "x" * 129}, "invalid"),
    (protocol.parse_publish, {"forum_id": "ai"}, "invalid"),
    (protocol.parse_publish, {"forum_id": "ai", "sdp": 5}, "invalid"),
    (protocol.parse_publish, {"forum_id": "ai", "sdp": "hello"}, "invalid_sdp"),
    (protocol.parse_publish, {"forum_id": "ai", "sdp": "v=0\r\ns=-\r\n"}, "invalid_sdp"),
    (protocol.parse_publish, {"forum_id": "ai", "sdp": OFFER + "a=x\x00\r\n"}, "invalid_sdp"),
    (protocol.parse_publish, {"forum_id": "ai", "sdp": OFFER + "a=" + "x" * 65536}, "too_large"),
    (protocol.parse_watch, {"forum_id": "ai", "sdp": OFFER, "source_id": ["s"]}, "invalid"),
    (protocol.parse_unpublish, {"source_id": None}, "invalid"),
    (protocol.parse_unwatch, {}, "invalid"),
    (protocol.parse_leave, "now", "invalid"),
])
def test_bad_payloads_are_refused_with_their_code(parse: Any, payload: Any, code: str) -> None:
    assert code_of(parse, payload) == code


def test_sdp_limits_count_bytes_and_accept_bytes_bodies() -> None:
    assert protocol.check_sdp(OFFER.encode()) == OFFER
    near = OFFER + "a=" + "x" * (protocol.MAX_SDP_BYTES - len(OFFER) - 2)
    assert len(near.encode()) == protocol.MAX_SDP_BYTES and protocol.check_sdp(near) == near
    wide = OFFER + "a=" + "é" * (protocol.MAX_SDP_BYTES // 2)  # fewer characters than bytes
    assert code_of(protocol.check_sdp, wide) == "too_large"
    assert code_of(protocol.check_sdp, b"\xff\xfe v=0") == "invalid_sdp"


def test_program_json_names_the_source_on_air() -> None:
    from rooms.models import MediaSource, SourceKind, SourceState

    source = MediaSource("src-1", "ai", SourceKind.LIVE, "Zhang Min", SourceState.LIVE)
    body = protocol.program_json(ProgramState("ai", program="src-1", slate=False, version=3), [source])
    assert body["program"] == "src-1" and body["source"]["name"] == "Zhang Min" and body["version"] == 3
    assert protocol.program_json(ProgramState("ai"), [source])["source"] is None


def test_the_servers_own_viewer_ids_pass_the_unwatch_check() -> None:
    """Ids were once built from the socket.io sid, which may start with '-'
    or hold '_' (about 1 connection in 16): unwatch then refused them."""
    from signaling.sio_server import new_viewer_id

    ids = {new_viewer_id(n) for n in range(1, 201)}
    assert len(ids) == 200
    for viewer_id in ids:
        assert protocol.parse_unwatch({"viewer_id": viewer_id}).viewer_id == viewer_id
