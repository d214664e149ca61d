"""socket.io against the real server process: refusals at connect, join,
every kind of bad payload answered with the documented error ack while the
connection (and the forum) carry on, and the media path through publish
and watch with real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from rooms.models import Role
from tests.server_process import ServerProcess, start_server
from tests.signaling_peers import PublisherPeer, ViewerPeer, candidate_addresses

pytestmark = pytest.mark.timeout(120)

FORUM = "ai"
OTHER_FORUM = "main"
ACK_TIMEOUT = 20.0


class Client:
    """A socketio.AsyncClient that records what the server pushes."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.pushes: dict[str, asyncio.Queue[Any]] = {}
        self.connect_errors: asyncio.Queue[Any] = asyncio.Queue()
        for event in ("program", "sources", "viewers", "error", "preview", "chat_message", "chat_removed",
                      "moderation", "backstage"):
            self.pushes[event] = asyncio.Queue()
            self.sio.on(event, self._recorder(event))
        self.sio.on("connect_error", self._on_connect_error)

    def _recorder(self, event: str) -> Any:
        async def record(data: Any) -> None:
            self.pushes[event].put_nowait(data)
        return record

    async def _on_connect_error(self, data: Any) -> None:
        self.connect_errors.put_nowait(data)

    async def connect(self, server: ServerProcess, token: str | None) -> None:
        auth = {"token": token} if token is not None else {}
        await self.sio.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=10)

    async def call(self, event: str, *payload: Any) -> Any:
        return await self.sio.call(event, *payload, timeout=ACK_TIMEOUT)

    async def next_push(self, event: str, predicate: Any = lambda _: True, timeout: float = 20.0) -> Any:
        """The first `event` push that satisfies `predicate`."""
        async def find() -> Any:
            while True:
                data = await self.pushes[event].get()
                if predicate(data):
                    return data
        return await asyncio.wait_for(find(), timeout)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()


async def connected(server: ServerProcess, clients: list[Client], role: Role, forums: list[str] | None = None,
                    name: str = "Tester") -> Client:
    client = Client()
    clients.append(client)
    await client.connect(server, server.token(role, forums, name))
    return client


def error_code(ack: Any) -> str:
    assert isinstance(ack, dict) and "error" in ack, f"expected an error ack, got {ack!r}"
    assert set(ack["error"]) == {"code", "message"} and ack["error"]["message"]
    return str(ack["error"]["code"])


# --- connecting -----------------------------------------------------------------


@pytest.mark.parametrize("kind,expected", [
    ("none", "token_missing"), ("garbage", "token_invalid"), ("expired", "token_expired"),
    ("not_a_string", "token_invalid"),
])
async def test_connect_is_refused_with_a_reason(server: ServerProcess, kind: str, expected: str) -> None:
    tokens: dict[str, Any] = {"none": None, "garbage": "not.a.jwt", "expired": server.expired_token(Role.VIEWER),
                              "not_a_string": 42}
    client = Client()
    auth = {} if tokens[kind] is None else {"token": tokens[kind]}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=10)
    refusal = await asyncio.wait_for(client.connect_errors.get(), 10)
    assert refusal["data"]["code"] == expected
    assert refusal["message"] == refusal["data"]["message"]
    assert not client.sio.connected


# --- join -------------------------------------------------------------------------


async def test_join_answers_the_forum_snapshot(server: ServerProcess, clients: list[Client]) -> None:
    client = await connected(server, clients, Role.VIEWER, [FORUM], name="Guest One")
    ack = await client.call("join", {"forum_id": FORUM})
    assert ack["forum"]["id"] == FORUM and ack["forum"]["name"]["en"]
    assert ack["participant"]["role"] == "viewer" and ack["participant"]["name"] == "Guest One"
    assert ack["program"]["forum_id"] == FORUM and "version" in ack["program"]
    assert isinstance(ack["sources"], list)
    assert ack["viewers"]["viewers"] >= 1 and ack["viewers"]["total"] >= ack["viewers"]["viewers"]
    # joining again is idempotent
    again = await client.call("join", {"forum_id": FORUM})
    assert again["participant"]["id"] == ack["participant"]["id"]


async def test_viewer_count_is_pushed_to_the_forum(server: ServerProcess, clients: list[Client]) -> None:
    first = await connected(server, clients, Role.VIEWER, [FORUM])
    joined = await first.call("join", {"forum_id": FORUM})
    before = joined["viewers"]["viewers"]
    second = await connected(server, clients, Role.VIEWER, [FORUM])
    await second.call("join", {"forum_id": FORUM})
    push = await first.next_push("viewers", lambda d: d["viewers"] == before + 1)
    assert push["forum_id"] == FORUM
    await second.close()
    gone = await first.next_push("viewers", lambda d: d["viewers"] == before)
    assert gone["total"] >= gone["viewers"]


async def test_chat_reaches_everyone_and_questions_the_operators_first(
        server: ServerProcess, clients: list[Client]) -> None:
    guest = await connected(server, clients, Role.VIEWER, [FORUM], "Guest <b>")
    other = await connected(server, clients, Role.VIEWER, [FORUM], "Other")
    operator = await connected(server, clients, Role.OPERATOR, [FORUM], "Ops")
    for client in (guest, other, operator):
        await client.call("join", {"forum_id": FORUM})
    assert error_code(await guest.call("chat", {"forum_id": OTHER_FORUM, "text": "hi"})) == "not_joined"
    assert error_code(await guest.call("chat", {"forum_id": FORUM, "text": "  "})) == "invalid"
    assert error_code(await guest.call("chat", {"forum_id": FORUM, "text": "x" * 501})) == "too_large"
    assert error_code(await guest.call("chat", {"forum_id": FORUM, "text": "q", "kind": "shout"})) == "invalid"
    posted = await guest.call("chat", {"forum_id": FORUM, "text": "<i>hello</i>"})
    chat_id = posted["message"]["id"]
    seen = await other.next_push("chat_message", lambda m: m["id"] == chat_id)
    assert seen["text"] == "<i>hello</i>" and seen["name"] == "Guest <b>"  # as sent: pages render text
    await operator.next_push("moderation", lambda m: m["id"] == chat_id)

    asked = await guest.call("chat", {"forum_id": FORUM, "text": "why?", "kind": "question"})
    question_id = asked["message"]["id"]
    queued = await operator.next_push("moderation", lambda m: m["id"] == question_id)
    assert queued["kind"] == "question" and not queued["public"]
    history = await other.call("chat_history", {"forum_id": FORUM})
    assert question_id not in [m["id"] for m in history["messages"]]  # not before it is approved
    assert question_id in [m["id"] for m in (await operator.call("chat_history", {"forum_id": FORUM}))["messages"]]

    assert error_code(await guest.call("moderate", {"forum_id": FORUM, "message_id": question_id,
                                                    "action": "approve"})) == "forbidden"
    assert error_code(await operator.call("moderate", {"forum_id": FORUM, "message_id": question_id,
                                                       "action": "delete"})) == "invalid"
    await operator.call("moderate", {"forum_id": FORUM, "message_id": question_id, "action": "approve"})
    shown = await other.next_push("chat_message", lambda m: m["id"] == question_id)
    assert shown["approved"] and shown["public"]
    await operator.call("moderate", {"forum_id": FORUM, "message_id": question_id, "action": "hide"})
    gone = await other.next_push("chat_removed", lambda m: m["id"] == question_id)
    assert gone["forum_id"] == FORUM
    assert other.pushes["moderation"].empty()  # the queue is the operators' only


async def test_backstage_messages_go_between_speakers_and_operators_only(
        server: ServerProcess, clients: list[Client]) -> None:
    guest = await connected(server, clients, Role.VIEWER, [FORUM], "Guest")
    speaker = await connected(server, clients, Role.SPEAKER, [FORUM], "Speaker <i>")
    operator = await connected(server, clients, Role.OPERATOR, [FORUM], "Ops")
    for client in (guest, speaker, operator):
        await client.call("join", {"forum_id": FORUM})
    assert error_code(await guest.call("chat", {"forum_id": FORUM, "text": "hi", "kind": "backstage"})) == "forbidden"
    assert error_code(await speaker.call("chat", {"forum_id": FORUM, "text": "x" * 501,
                                                  "kind": "backstage"})) == "too_large"
    asked = (await speaker.call("chat", {"forum_id": FORUM, "text": "<b>ready?</b>", "kind": "backstage"}))["message"]
    seen = await operator.next_push("backstage", lambda m: m["id"] == asked["id"])
    assert seen["text"] == "<b>ready?</b>" and seen["name"] == "Speaker <i>" and not seen["public"]
    answer = (await operator.call("chat", {"forum_id": FORUM, "text": "you are next", "kind": "backstage"}))["message"]
    await speaker.next_push("backstage", lambda m: m["id"] == answer["id"])
    history = (await speaker.call("chat_history", {"forum_id": FORUM}))["messages"]
    assert {asked["id"], answer["id"]} <= {m["id"] for m in history}
    assert not {asked["id"], answer["id"]} & {m["id"] for m in (await guest.call("chat_history",
                                                                                  {"forum_id": FORUM}))["messages"]}
    assert guest.pushes["backstage"].empty() and guest.pushes["chat_message"].empty()


# --- bad payloads: an error ack, and the connection carries on -----------------------

HUGE_SDP = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + "a=x-padding:" + "x" * (70 * 1024) + "\r\n"
SMALL_BAD_SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # no media section

BAD_REQUESTS: list[tuple[str, str, tuple[Any, ...], str]] = [
    ("join not a dict", "join", ("ai",), "invalid"),
    ("join a list", "join", ([1, 2],), "invalid"),
    ("join no payload", "join", (), "invalid"),
    ("join missing forum_id", "join", ({},), "invalid"),
    ("join forum_id not a string", "join", ({"forum_id": 7},), "invalid"),
    ("join forum_id with a slash", "join", ({"forum_id": "../etc"},), "invalid"),
    ("join unknown forum", "join", ({"forum_id": "no-such-forum"},), "not_found"),
    ("join another forum", "join", ({"forum_id": OTHER_FORUM},), "conflict"),
    ("publish missing sdp", "publish", ({"forum_id": FORUM},), "invalid"),
    ("publish sdp not a string", "publish", ({"forum_id": FORUM, "sdp": {"v": 0}},), "invalid"),
    ("publish huge sdp", "publish", ({"forum_id": FORUM, "sdp": HUGE_SDP},), "too_large"),
    ("publish not sdp", "publish", ({"forum_id": FORUM, "sdp": "hello"},), "invalid_sdp"),
    ("publish no media", "publish", ({"forum_id": FORUM, "sdp": SMALL_BAD_SDP},), "invalid_sdp"),
    ("publish unknown forum", "publish", ({"forum_id": "nope", "sdp": SMALL_BAD_SDP + "m=video 9 x 96\r\n"},),
     "not_found"),
    ("unpublish someone else's", "unpublish", ({"source_id": "src-123"},), "not_found"),
    ("watch huge sdp", "watch", ({"forum_id": FORUM, "sdp": HUGE_SDP},), "too_large"),
    ("watch source_id wrong type", "watch", ({"forum_id": FORUM, "sdp": "v=0", "source_id": 5},), "invalid"),
    ("unwatch unknown", "unwatch", ({"viewer_id": "x.w9"},), "not_found"),
    ("leave not a dict", "leave", ("now",), "invalid"),
    ("chat not a dict", "chat", ("hi",), "invalid"),
    ("chat text not a string", "chat", ({"forum_id": FORUM, "text": 5},), "invalid"),
    ("chat text huge", "chat", ({"forum_id": FORUM, "text": "x" * 5000},), "too_large"),
    ("chat control characters", "chat", ({"forum_id": FORUM, "text": "a\x07b"},), "invalid"),
    ("chat another forum", "chat", ({"forum_id": OTHER_FORUM, "text": "hi"},), "not_joined"),
    ("chat_history unknown forum", "chat_history", ({"forum_id": "nope"},), "not_joined"),
    ("moderate no action", "moderate", ({"forum_id": FORUM, "message_id": "m1"},), "invalid"),
    ("moderate unknown message", "moderate", ({"forum_id": FORUM, "message_id": "m1", "action": "hide"},),
     "not_found"),
    ("moderate unknown forum", "moderate", ({"forum_id": "nope", "message_id": "m1", "action": "hide"},),
     "not_found"),
    ("unknown event", "shout", ({"text": "hi"},), "unknown_event"),
]


async def test_bad_payloads_get_error_acks_and_the_connection_carries_on(
        server: ServerProcess, clients: list[Client]) -> None:
    operator = await connected(server, clients, Role.OPERATOR, [FORUM, OTHER_FORUM])
    bystander = await connected(server, clients, Role.VIEWER, [FORUM])
    assert "error" not in await operator.call("join", {"forum_id": FORUM})
    assert "error" not in await bystander.call("join", {"forum_id": FORUM})
    seen: dict[str, str] = {}
    for label, event, payload, expected in BAD_REQUESTS:
        ack = await operator.call(event, *payload)
        seen[label] = error_code(ack)
        # the same connection still answers a good request right after
        still = await operator.call("join", {"forum_id": FORUM})
        assert still["forum"]["id"] == FORUM, f"after {label}: {still!r}"
    assert seen == {label: expected for label, _, _, expected in BAD_REQUESTS}
    assert operator.sio.connected and bystander.sio.connected
    # and the forum carries on for others
    assert (await bystander.call("join", {"forum_id": FORUM}))["forum"]["id"] == FORUM


async def test_a_token_expiring_while_connected_is_told_and_disconnected(
        server: ServerProcess, clients: list[Client]) -> None:
    client = Client()
    clients.append(client)
    disconnected = asyncio.Event()
    client.sio.on("disconnect", lambda *_: disconnected.set())
    await client.connect(server, server.token(Role.VIEWER, [FORUM], ttl_seconds=2))
    joined = await client.call("join", {"forum_id": FORUM})
    assert joined["expires_at"] > 0
    pushed = await client.next_push("error", timeout=10)
    assert pushed["error"]["code"] == "token_expired"
    await asyncio.wait_for(disconnected.wait(), 10)


async def test_a_flood_is_rate_limited_and_others_carry_on(server: ServerProcess, clients: list[Client]) -> None:
    flooder = await connected(server, clients, Role.VIEWER, [FORUM])
    bystander = await connected(server, clients, Role.VIEWER, [FORUM])
    await flooder.call("join", {"forum_id": FORUM})
    viewer = ViewerPeer()
    try:
        # each watch builds a peer connection on the server: 48 at once overflow the inbox (32)
        offer = {"forum_id": FORUM, "sdp": await viewer.offer()}
        acks = await asyncio.gather(*(flooder.call("watch", offer) for _ in range(48)))
    finally:
        await viewer.close()
    codes = [ack["error"]["code"] if "error" in ack else "ok" for ack in acks]
    assert "rate_limited" in codes and "ok" in codes and set(codes) == {"ok", "rate_limited"}, codes
    assert (await bystander.call("join", {"forum_id": FORUM}))["forum"]["id"] == FORUM
    assert (await flooder.call("join", {"forum_id": FORUM}))["forum"]["id"] == FORUM  # and it recovers


async def test_requests_outside_the_grant_are_forbidden(server: ServerProcess, clients: list[Client]) -> None:
    viewer = await connected(server, clients, Role.VIEWER, [FORUM])
    assert "error" not in await viewer.call("join", {"forum_id": FORUM})
    offer = SMALL_BAD_SDP + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    # a viewer may not publish, nor watch one named source (operators' preview tiles)
    assert error_code(await viewer.call("publish", {"forum_id": FORUM, "sdp": offer})) == "forbidden"
    assert error_code(await viewer.call(
        "watch", {"forum_id": FORUM, "sdp": offer, "source_id": "src-1"})) == "forbidden"
    # a token for one forum opens no other
    assert error_code(await viewer.call("join", {"forum_id": OTHER_FORUM})) == "forbidden"
    speaker = await connected(server, clients, Role.SPEAKER, [FORUM])
    assert error_code(await speaker.call("publish", {"forum_id": OTHER_FORUM, "sdp": offer})) == "forbidden"
    # publish and watch need a join first
    assert error_code(await speaker.call("publish", {"forum_id": FORUM, "sdp": offer})) == "not_joined"
    assert error_code(await speaker.call("watch", {"forum_id": FORUM, "sdp": offer})) == "not_joined"
    assert (await speaker.call("join", {"forum_id": FORUM}))["participant"]["role"] == "speaker"
    assert viewer.sio.connected and speaker.sio.connected


async def test_leave_then_join_another_forum(server: ServerProcess, clients: list[Client]) -> None:
    client = await connected(server, clients, Role.VIEWER, None)
    assert (await client.call("join", {"forum_id": FORUM}))["forum"]["id"] == FORUM
    assert await client.call("leave") == {"ok": True}
    assert await client.call("leave", {}) == {"ok": True}  # twice is fine
    assert (await client.call("join", {"forum_id": OTHER_FORUM}))["forum"]["id"] == OTHER_FORUM


# --- media through socket.io ------------------------------------------------------------


async def test_watch_answers_with_loopback_candidates_only(server: ServerProcess, clients: list[Client]) -> None:
    client = await connected(server, clients, Role.VIEWER, [FORUM])
    await client.call("join", {"forum_id": FORUM})
    viewer = ViewerPeer()
    try:
        ack = await client.call("watch", {"forum_id": FORUM, "sdp": await viewer.offer()})
        assert "error" not in ack, ack
        assert ack["viewer_id"] and ack["sdp"].startswith("v=0")
        addresses = candidate_addresses(ack["sdp"])
        assert addresses and set(addresses) == {"127.0.0.1"}
        await viewer.accept(ack["sdp"])
        assert await client.call("unwatch", {"viewer_id": ack["viewer_id"]}) == {"ok": True}
        assert error_code(await client.call("unwatch", {"viewer_id": ack["viewer_id"]})) == "not_found"
    finally:
        await viewer.close()


async def test_publish_goes_on_air_and_a_watcher_decodes_it(server: ServerProcess, clients: list[Client]) -> None:
    forum = "open-source"
    observer = await connected(server, clients, Role.VIEWER, [forum])
    await observer.call("join", {"forum_id": forum})
    speaker = await connected(server, clients, Role.SPEAKER, [forum], name="Zhang Min")
    await speaker.call("join", {"forum_id": forum})
    publisher, viewer = PublisherPeer(), ViewerPeer()
    try:
        ack = await speaker.call("publish", {"forum_id": forum, "sdp": await publisher.offer()})
        assert "error" not in ack, ack
        source_id = ack["source_id"]
        assert set(candidate_addresses(ack["sdp"])) == {"127.0.0.1"}
        await publisher.accept(ack["sdp"])
        await asyncio.wait_for(publisher.connected.wait(), 15)

        # the most recent live source goes on air, and the forum hears it
        program = await observer.next_push("program", lambda p: p["program"] == source_id)
        assert program["source"]["name"] == "Zhang Min" and program["source"]["state"] == "live"
        sources = await observer.next_push("sources", lambda s: any(
            x["id"] == source_id and x["state"] == "live" for x in s["sources"]))
        assert sources["forum_id"] == forum

        watched = await observer.call("watch", {"forum_id": forum, "sdp": await viewer.offer()})
        assert "error" not in watched, watched
        await viewer.accept(watched["sdp"])
        await viewer.wait_video(10)
        await viewer.wait_audio(10)
        assert viewer.frame_size is not None and viewer.frame_size[0] > 0

        # an operator's preview tile: one named source; an unknown one is not_found
        operator = await connected(server, clients, Role.OPERATOR, [forum], name="Director")
        await operator.call("join", {"forum_id": forum})
        tile = ViewerPeer()
        try:
            missing = await operator.call("watch", {"forum_id": forum, "sdp": await tile.offer(),
                                                    "source_id": "src-nope"})
            assert error_code(missing) == "not_found"
            preview = await operator.call("watch", {"forum_id": forum, "sdp": tile.pc.localDescription.sdp,
                                                    "source_id": source_id})
            assert "error" not in preview, preview
            await tile.accept(preview["sdp"])
            await tile.wait_video(5)
        finally:
            await tile.close()

        # the speaker's connection closes: its source goes and the slate is back
        await speaker.close()
        await observer.next_push("sources", lambda s: all(x["id"] != source_id for x in s["sources"]))
        back = await observer.next_push("program", lambda p: p["program"] != source_id)
        assert back["program"] is None and back["source"] is None
        assert observer.sio.connected
    finally:
        await viewer.close()
        await publisher.close()


# --- several nodes ---------------------------------------------------------------------


@pytest.mark.redis
async def test_two_nodes_deliver_each_push_exactly_once(redis_url: str, clients: list[Client]) -> None:
    first = start_server(extra_args=["--redis", redis_url])
    second = start_server(extra_args=["--redis", redis_url], secret=first.secret)
    try:
        forum = "internet-law"
        on_first = await connected(first, clients, Role.VIEWER, [forum])
        assert (await on_first.call("join", {"forum_id": forum}))["viewers"]["viewers"] == 1
        on_second = await connected(second, clients, Role.VIEWER, [forum])
        joined = await on_second.call("join", {"forum_id": forum})
        assert joined["viewers"]["viewers"] == 2  # one shared store
        await on_second.close()
        # node 2's join and leave reach node 1's client, each exactly once: collect
        # every push up to the leave's and count the join's
        seen: list[int] = []
        while not seen or seen[-1] != 1 or 2 not in seen:
            push = await asyncio.wait_for(on_first.pushes["viewers"].get(), 20)
            seen.append(push["viewers"])
        assert seen.count(2) == 1, seen
        assert on_first.sio.connected
    finally:
        for client in clients:
            await client.close()  # before the servers stop: they wait for open websockets
        first.cleanup()
        second.cleanup()


async def test_chat_and_questions_cross_nodes_once(redis_url: str, clients: list[Client]) -> None:
    """A guest on one node, an operator and another guest on the other:
    the question reaches the operator's queue, the approval every guest,
    each push once."""
    first = start_server(extra_args=["--redis", redis_url])
    second = start_server(extra_args=["--redis", redis_url], secret=first.secret)
    try:
        forum = "internet-law"
        guest = await connected(first, clients, Role.VIEWER, [forum], "Guest")
        operator = await connected(second, clients, Role.OPERATOR, [forum], "Ops")
        other = await connected(second, clients, Role.VIEWER, [forum], "Other")
        for client in (guest, operator, other):
            await client.call("join", {"forum_id": forum})
        chat_id = (await guest.call("chat", {"forum_id": forum, "text": "hello from node 1"}))["message"]["id"]
        asked = await guest.call("chat", {"forum_id": forum, "text": "a question", "kind": "question"})
        question_id = asked["message"]["id"]
        await operator.next_push("moderation", lambda m: m["id"] == question_id)
        await operator.call("moderate", {"forum_id": forum, "message_id": question_id, "action": "approve"})
        await guest.next_push("chat_message", lambda m: m["id"] == question_id)  # back on node 1
        await other.call("chat", {"forum_id": forum, "text": "last"})
        # everything before "last" is delivered before it: count what the guest on node 2 got
        got: list[str] = []
        while not got or got[-1] != "last":
            got.append((await asyncio.wait_for(other.pushes["chat_message"].get(), 20))["text"])
        assert got == ["hello from node 1", "a question", "last"], got
        assert other.pushes["moderation"].empty()
    finally:
        for client in clients:
            await client.close()
        first.cleanup()
        second.cleanup()
