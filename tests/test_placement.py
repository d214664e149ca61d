"""rooms/placement.py: which node a viewer should use (pure: no network, no clock)."""

from __future__ import annotations

import pytest

from rooms.errors import RoomError
from rooms.placement import Placement, place, room
from rooms.store import NodeInfo

MAX_VIEWERS, MAX_CPU = 100, 0.8


def node(node_id: str, viewers: object = 0, cpu: object = 0.0, url: str | None = None) -> NodeInfo:
    return NodeInfo(node_id, {"viewers": viewers, "cpu": cpu}, last_seen=0.0,
                    public_url=f"http://{node_id}.test" if url is None else url)


def test_the_owner_while_it_has_room() -> None:
    nodes = [node("a", viewers=90, cpu=0.5), node("b")]
    assert place("a", nodes, MAX_VIEWERS, MAX_CPU) == Placement("a", "http://a.test")


def test_a_full_owner_sends_viewers_to_the_node_with_the_most_room() -> None:
    nodes = [node("a", viewers=100), node("b", viewers=60), node("c", viewers=10, cpu=0.6)]
    # c has fewer viewers but its CPU leaves it 25% room; b has 40%
    assert place("a", nodes, MAX_VIEWERS, MAX_CPU).node_id == "b"
    busy_cpu = [node("a", viewers=1, cpu=0.9), node("b", viewers=99)]
    assert place("a", busy_cpu, MAX_VIEWERS, MAX_CPU).node_id == "b"  # CPU full counts as full


def test_no_owner_yet_or_an_owner_not_reachable_means_the_most_room() -> None:
    nodes = [node("a", viewers=50), node("b", viewers=20)]
    assert place(None, nodes, MAX_VIEWERS, MAX_CPU).node_id == "b"
    assert place("gone", nodes, MAX_VIEWERS, MAX_CPU).node_id == "b"
    no_url = [node("a", url=""), node("b", viewers=80)]
    assert place("a", no_url, MAX_VIEWERS, MAX_CPU) == Placement("b", "http://b.test")


def test_ties_go_to_the_owner_then_the_smallest_id() -> None:
    everyone_full = [node("a", viewers=100), node("b", viewers=100), node("c", viewers=100)]
    assert place("b", everyone_full, MAX_VIEWERS, MAX_CPU).node_id == "b"
    assert place(None, [node("c"), node("b")], MAX_VIEWERS, MAX_CPU).node_id == "b"


def test_a_load_that_is_not_a_number_counts_as_none() -> None:
    assert room(node("a", viewers="many", cpu=None), MAX_VIEWERS, MAX_CPU) == 1.0
    assert room(node("a", viewers=True), MAX_VIEWERS, MAX_CPU) == 1.0


def test_no_reachable_node_is_unavailable() -> None:
    with pytest.raises(RoomError) as caught:
        place("a", [node("a", url="")], MAX_VIEWERS, MAX_CPU)
    assert caught.value.code == "unavailable"


def test_a_node_found_dead_is_never_answered_even_the_owner_with_room() -> None:
    nodes = [node("a"), node("b", viewers=50), node("c", viewers=60)]
    assert place("a", nodes, MAX_VIEWERS, MAX_CPU, avoid={"a"}).node_id == "b"
    assert place("a", nodes, MAX_VIEWERS, MAX_CPU, avoid={"a", "b"}).node_id == "c"
    with pytest.raises(RoomError) as caught:
        place("a", nodes, MAX_VIEWERS, MAX_CPU, avoid={"a", "b", "c"})
    assert caught.value.code == "unavailable"
