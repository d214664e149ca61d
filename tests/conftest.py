from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.cluster import Cluster, start_cluster
from tests.processes import RedisServer, start_redis
from tests.server_process import ServerProcess, start_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run, on a free loopback port."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database for each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    """Nodes a and b on one real Redis (tests/cluster.py); a module that
    needs other settings defines its own `cluster`."""
    with start_cluster(redis_url) as started:
        yield started


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The real server as a child process, one per test module (a module
    that needs other settings defines its own `server`)."""
    process = start_server()
    try:
        yield process
    finally:
        process.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session with a 30 s bound per request."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
