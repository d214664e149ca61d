"""Several forumcast nodes on one real Redis, as child processes: the
harness of the two-node tests.

`start_cluster(redis_url, names)` starts one server per name
(tests/server_process.py: each its own HTTP port, venue ports, data
directory and log), all with the same token secret and Redis, each
heart-beating its public URL, and returns once every node sees every
other in `GET /api/cluster`. `Cluster.stop()` stops and reaps them all;
`kill(node)` is a SIGKILL (a crash: no lease released, nothing cleaned).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from rooms.models import Role
from tests.eventually import eventually_blocking
from tests.server_process import ServerProcess, start_server

# short, so a takeover happens within a test (the setting's default is 5000; measure it with
# FORUMCAST_TEST_LEASE_TTL_MS=5000)
LEASE_TTL_MS = int(os.environ.get("FORUMCAST_TEST_LEASE_TTL_MS", "3000"))


@dataclass
class Cluster:
    nodes: dict[str, ServerProcess] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ServerProcess:
        return self.nodes[name]

    def cluster_view(self, name: str) -> dict[str, Any]:
        """`GET /api/cluster` as node `name` sees it."""
        node = self.nodes[name]
        request = urllib.request.Request(
            node.url + "/api/cluster", headers={"Authorization": f"Bearer {node.token(Role.ADMIN)}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    def node_id(self, name: str) -> str:
        """The instance id node `name` runs under (its leases' owner)."""
        return str(self.cluster_view(name)["node_id"])

    def owner(self, forum_id: str, asked: str) -> str | None:
        owner = self.cluster_view(asked)["owners"][forum_id]
        return None if owner is None else str(owner)

    def kill(self, name: str) -> None:
        """SIGKILL: the node dies holding its leases, as in a crash."""
        node = self.nodes[name]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.cleanup()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(redis_url: str, names: tuple[str, ...] = ("a", "b"), extra_env: dict[str, str] | None = None,
                  lease_ttl_ms: int = LEASE_TTL_MS, extra_args: list[str] | None = None) -> Cluster:
    """Start the nodes (`extra_args` to each `serve`, e.g. ["--event", path])."""
    secret = secrets.token_urlsafe(48)
    cluster = Cluster()
    try:
        for name in names:
            env = {
                "FORUMCAST_REDIS_URL": redis_url,
                "FORUMCAST_NODE_ID": f"node-{name}",
                "FORUMCAST_LEASE_TTL_MS": str(lease_ttl_ms),
                # a busy shared machine must not make a node "full" and move viewers (placement's
                # CPU criterion is tested in tests/test_placement.py)
                "FORUMCAST_NODE_MAX_CPU": "1000",
                **(extra_env or {}),
            }
            cluster.nodes[name] = start_server(extra_env=env, extra_args=extra_args, secret=secret)

        def everyone_sees_everyone() -> bool:
            views = {name: cluster.cluster_view(name) for name in names}
            ids = {view["node_id"] for view in views.values()}
            return all({n["node_id"] for n in view["nodes"]} >= ids for view in views.values())

        eventually_blocking(everyone_sees_everyone, timeout=30, what="every node to see every other")
    except BaseException:
        cluster.stop()
        raise
    return cluster
