"""Where an edge pulls a forum's program from: the origin while it has
edge-link room, else an existing edge of that forum (a tree of edges, as
OvenMediaEngine's origin -> edge cascades, one level further).

Pure: it reads what each node's heartbeat says about the forum (signaling/
placement.py `NodeLoadMeter`: the edge links it serves, and for an edge
its parent and depth) and answers the node the requesting edge should
pull from; no clock, no network. The wiring (signaling/whep.py) asks it
at the origin when an edge link arrives and answers 307 to the parent's
WHEP (RFC 9725 s4.5), and asks `ancestors` at an edge before it serves
another edge.

Rules:
- the origin (depth 0) serves edge links while it serves fewer than
  `fanout` for the forum;
- else the live edge of the forum with room (fewer than `fanout` links)
  at the least depth (ties: fewest links, then by id), never deeper than
  `max_depth - 1` (so no edge is deeper than `max_depth`), never the
  requester itself nor one of its descendants (an edge never pulls from
  its own subtree: no cycles), never a node in `avoid` (one the wiring
  just found dead);
- no edge fits: the origin after all (one more link there beats a viewer
  with no picture).

Heartbeats lag by up to one interval, so `fanout` is a soft bound: two
edges arriving within one beat may both land on the same parent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TreeNode:
    """One node's place in one forum's tree, from its heartbeat.

    `parent`: the node id it pulls the forum from (None for the origin,
    and for a node not pulling it); `depth`: 0 the origin, 1 an edge
    pulling from it, 2 an edge pulling from such an edge...; `links`: edge
    links it serves for the forum; `live`: its pull gets media (the
    origin is always live)."""

    node_id: str
    parent: str | None
    depth: int
    links: int
    live: bool = True


def ancestors(node_id: str, tree: Mapping[str, TreeNode]) -> list[str]:
    """The node's parents up to the origin, nearest first (a parent
    unknown to `tree` ends the walk; a loop in stale heartbeats too)."""
    chain: list[str] = []
    seen = {node_id}
    current = tree.get(node_id)
    while current is not None and current.parent is not None and current.parent not in seen:
        chain.append(current.parent)
        seen.add(current.parent)
        current = tree.get(current.parent)
    return chain


def choose_parent(
    origin: str,
    requester: str,
    tree: Mapping[str, TreeNode],
    fanout: int,
    max_depth: int,
    avoid: Collection[str] = (),
) -> str:
    """The node id `requester` should pull the forum from (see the module
    docstring); `origin` when the origin has room or no edge fits.
    ValueError when fanout or max_depth is below 1."""
    if fanout < 1 or max_depth < 1:
        raise ValueError(f"fanout ({fanout}) and max_depth ({max_depth}) must be at least 1")
    home = tree.get(origin)
    if home is None or home.links < fanout:
        return origin
    candidates = [
        node for node in tree.values()
        if node.node_id not in (origin, requester)
        and node.node_id not in avoid
        and node.parent is not None
        and node.live
        and 1 <= node.depth < max_depth
        and node.links < fanout
        and requester not in ancestors(node.node_id, tree)
    ]
    if not candidates:
        return origin
    best = min(candidates, key=lambda n: (n.depth, n.links, n.node_id))
    return best.node_id


__all__ = ["TreeNode", "ancestors", "choose_parent"]
