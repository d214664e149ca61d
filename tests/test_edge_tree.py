"""rooms/edge_tree.py: where an edge pulls a forum from (pure, no clock)."""

from __future__ import annotations

import pytest

from rooms.edge_tree import TreeNode, ancestors, choose_parent

ORIGIN = "a@1"


def tree(*nodes: TreeNode) -> dict[str, TreeNode]:
    return {n.node_id: n for n in nodes}


def origin(links: int) -> TreeNode:
    return TreeNode(ORIGIN, None, 0, links)


def test_the_origin_while_it_has_edge_link_room() -> None:
    assert choose_parent(ORIGIN, "c@1", tree(origin(0)), fanout=2, max_depth=3) == ORIGIN
    assert choose_parent(ORIGIN, "c@1", tree(origin(1), TreeNode("b@1", ORIGIN, 1, 0)),
                         fanout=2, max_depth=3) == ORIGIN
    # an origin whose heartbeat is not in yet: itself (it knows it hosts)
    assert choose_parent(ORIGIN, "c@1", {}, fanout=1, max_depth=3) == ORIGIN


def test_a_full_origin_sends_the_edge_to_the_shallowest_edge_with_room() -> None:
    nodes = tree(
        origin(2),
        TreeNode("b@1", ORIGIN, 1, 2),  # full
        TreeNode("c@1", ORIGIN, 1, 1),
        TreeNode("d@1", "b@1", 2, 0),
    )
    assert choose_parent(ORIGIN, "e@1", nodes, fanout=2, max_depth=3) == "c@1"
    # c full too: the depth-2 edge
    full = {**nodes, "c@1": TreeNode("c@1", ORIGIN, 1, 2)}
    assert choose_parent(ORIGIN, "e@1", full, fanout=2, max_depth=3) == "d@1"


def test_ties_go_to_fewer_links_then_by_id() -> None:
    nodes = tree(origin(3), TreeNode("c@1", ORIGIN, 1, 1), TreeNode("b@1", ORIGIN, 1, 1),
                 TreeNode("d@1", ORIGIN, 1, 0))
    assert choose_parent(ORIGIN, "e@1", nodes, fanout=3, max_depth=3) == "d@1"
    nodes["d@1"] = TreeNode("d@1", ORIGIN, 1, 1)
    assert choose_parent(ORIGIN, "e@1", nodes, fanout=3, max_depth=3) == "b@1"


def test_never_itself_nor_its_own_descendants_no_cycle() -> None:
    # b re-pulls (its session died) while c and d hang below it
    nodes = tree(
        origin(1),
        TreeNode("b@1", ORIGIN, 1, 1),
        TreeNode("c@1", "b@1", 2, 1),
        TreeNode("d@1", "c@1", 3, 0),
        TreeNode("x@1", ORIGIN, 1, 1),
        TreeNode("y@1", "x@1", 2, 0),
    )
    assert ancestors("d@1", nodes) == ["c@1", "b@1", ORIGIN]
    assert choose_parent(ORIGIN, "b@1", nodes, fanout=1, max_depth=4) == "y@1"
    # only its own subtree has room: the origin after all, never a loop
    nodes["y@1"] = TreeNode("y@1", "x@1", 2, 1)
    assert choose_parent(ORIGIN, "b@1", nodes, fanout=1, max_depth=4) == ORIGIN


def test_the_depth_is_capped() -> None:
    nodes = tree(origin(1), TreeNode("b@1", ORIGIN, 1, 1), TreeNode("c@1", "b@1", 2, 0))
    assert choose_parent(ORIGIN, "d@1", nodes, fanout=1, max_depth=3) == "c@1"  # d at depth 3
    assert choose_parent(ORIGIN, "d@1", nodes, fanout=1, max_depth=2) == ORIGIN  # d would be at 3


def test_a_dead_or_not_yet_live_edge_is_not_a_parent() -> None:
    nodes = tree(origin(1), TreeNode("b@1", ORIGIN, 1, 0), TreeNode("c@1", ORIGIN, 1, 0, live=False))
    assert choose_parent(ORIGIN, "d@1", nodes, fanout=1, max_depth=3) == "b@1"
    assert choose_parent(ORIGIN, "d@1", nodes, fanout=1, max_depth=3, avoid={"b@1"}) == ORIGIN
    # a node that does not pull the forum (no parent) is no parent either
    nodes["b@1"] = TreeNode("b@1", None, 0, 0)
    assert choose_parent(ORIGIN, "d@1", nodes, fanout=1, max_depth=3) == ORIGIN


def test_stale_heartbeats_with_a_loop_end_the_walk() -> None:
    nodes = tree(TreeNode("b@1", "c@1", 2, 0), TreeNode("c@1", "b@1", 2, 0))
    assert ancestors("b@1", nodes) == ["c@1"]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        choose_parent(ORIGIN, "b@1", {}, fanout=0, max_depth=3)
    with pytest.raises(ValueError):
        choose_parent(ORIGIN, "b@1", {}, fanout=1, max_depth=0)
