"""Which node a forum's viewer should use (`GET /api/forums/{id}/placement`):
the forum's owner while it has room, else the live node with the most room.

Pure: it reads the nodes' heartbeats (NodeInfo.load: "viewers", the node's
WebRTC viewers; "cpu", its process's CPU over the last heartbeat as a share
of one core, 0.0-1.0+) and the forum's lease owner; no clock, no network.
A node is full at `max_viewers` viewers or `max_cpu` CPU; its room is the
smaller of its two spare shares (1 - viewers/max_viewers, 1 - cpu/max_cpu).
A node without a public URL (its heartbeat unknown) is never chosen, nor
one in `avoid` (the wiring found it dead: signaling/node_liveness.py).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rooms.errors import RoomError
from rooms.store import NodeInfo


@dataclass(frozen=True)
class Placement:
    """The node a viewer should use: its instance id and public base URL."""

    node_id: str
    url: str


def room(node: NodeInfo, max_viewers: int, max_cpu: float) -> float:
    """The node's spare share (<= 0: full), from its heartbeat's load;
    a load figure missing or not a number counts as 0."""
    viewers = _number(node.load.get("viewers"))
    cpu = _number(node.load.get("cpu"))
    return min(1.0 - viewers / max_viewers, 1.0 - cpu / max_cpu)


def place(owner: str | None, nodes: list[NodeInfo], max_viewers: int, max_cpu: float,
          avoid: Collection[str] = ()) -> Placement:
    """The owner while it has room (it serves the forum without a hop),
    else the node with the most room (ties: the owner, then by id); never
    a node in `avoid`. RoomError("unavailable") when no live node has a
    public URL."""
    reachable = [n for n in nodes if n.public_url and n.node_id not in avoid]
    if not reachable:
        raise RoomError("unavailable", "no node of this cluster can be reached now; try again in a few seconds")
    by_id = {n.node_id: n for n in reachable}
    home = by_id.get(owner) if owner is not None else None
    if home is not None and room(home, max_viewers, max_cpu) > 0:
        return Placement(home.node_id, home.public_url)
    best = max(reachable, key=lambda n: (room(n, max_viewers, max_cpu), n.node_id == owner, _desc(n.node_id)))
    return Placement(best.node_id, best.public_url)


def _desc(node_id: str) -> tuple[int, ...]:
    """Sorts ids so that max() picks the smallest (a stable, fair tie-break)."""
    return tuple(-ord(c) for c in node_id)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)
