"""Is a node there now? Fresher than its heartbeat.

A node's heartbeat lives `node_ttl_s` (6 s) after its last beat, so a
node SIGKILLed a moment ago still looks alive in the registry. Its bus
inbox does not: Redis drops a dead process's subscriptions as soon as
its connection closes (the kernel closes the socket with the process),
and a request to a node nobody listens for fails at once (rooms/store.py
`request`: PUBLISH reached no subscriber). Placement and the edge tree
ask this before they send anyone to a node.
"""

from __future__ import annotations

from rooms.errors import RoomError
from rooms.store import EventBus

PING = "ping"  # no handler knows it: any answer (an "invalid" refusal included) means "listening"
PING_TIMEOUT_S = 1.0  # a node that cannot answer within this is no place to send a viewer either


async def answering(bus: EventBus, node_id: str, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """True when `node_id` (an instance id) answers a request on the bus
    now, its answer being a refusal or not; False when nobody listens
    for it or it stays silent `timeout_s` s (RoomError "unavailable")."""
    if node_id == bus.node_id:
        return True
    try:
        await bus.request(node_id, PING, {}, timeout_s)
    except RoomError as exc:
        return exc.code != "unavailable"
    return True
