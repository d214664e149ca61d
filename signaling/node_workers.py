"""`forumcast serve --workers N`: N node processes on one machine, one per core.

One Python process is one core. Each worker is a full node of a cluster
(`serve --redis URL --node-id <base>-<i> --public-url ...` on port + i,
its ICE UDP port udp_port + i when `udp_port` is set), so placement
(`GET /api/forums/{id}/placement`) sends viewers to any of them and each
forum is hosted by its lease owner only (its agenda, recorded talks and
recordings happen once). Without `--redis`, a local redis-server is
started for them (signaling/local_redis.py: a Unix socket in a 0700
directory, no password needed, none on argv).

The parent only supervises (signaling/supervised_process.py): a worker
that dies is restarted with backoff (the same node id, so the new run
reaps the dead one's records at once), SIGTERM/SIGINT is forwarded as
SIGTERM to every worker (each gives up its leases and finalizes its
recordings), then the redis-server is stopped, last; everything is
reaped. A worker that cannot start stops the whole cluster: exit 2.

Secrets stay off argv: the Redis URL goes to the workers in their
environment (FORUMCAST_REDIS_URL), the token secret is in the data dir
(or the environment the workers inherit). All workers share the data dir;
what in it is per process is per server run (run/secrets/<run>,
run/children pid files naming their server, media/tmp/<run>, hls/<run>;
recordings and tus uploads name the run writing them, a start takes over
only a dead run's; the media library's index and conversions are under
flocks): docs/DESIGN.md "Several nodes".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from config.redaction import redact_url
from config.settings import Settings, load_or_create_secret
from signaling.local_redis import LocalRedis
from signaling.supervised_process import ChildStartError, SupervisedProcess
from streaming.child_processes import ChildRegistry
from streaming.ffmpeg_process import RestartPolicy

NODE_ID_MAX = 64  # config.settings' node_id rule
WORKER_STOP_GRACE_S = 60.0  # a node's stop: in-flight requests 5 s, then recordings finalized
WORKER_READY_TIMEOUT_S = 180.0  # a first start prepares the event's videos: a loaded machine is slow


class WorkersError(Exception):
    """`--workers` cannot run as asked (one line for the user)."""


def worker_count(text: str, cpu_count: int | None = None) -> int:
    """`--workers` value -> how many: a positive number, or 0 / "auto" for
    one per core (os.cpu_count()). Raises WorkersError."""
    cleaned = text.strip().lower()
    if cleaned in ("auto", "0"):
        return max(1, cpu_count if cpu_count is not None else (os.cpu_count() or 1))
    if not cleaned.isdigit():
        raise WorkersError(f"--workers={text!r}: a number of processes, or 0 / auto for one per core")
    count = int(cleaned)
    if count > 256:
        raise WorkersError(f"--workers={count}: at most 256")
    return count


@dataclass(frozen=True)
class WorkerPlan:
    """One worker: its node id, HTTP port, public URL and ICE UDP port (0: a port per peer)."""

    index: int
    node_id: str
    port: int
    public_url: str
    udp_port: int


def plan_workers(settings: Settings, count: int) -> list[WorkerPlan]:
    """Worker i: node id `<node_id>-<i>`, port + i, the public URL's port
    + i (the node's own port + i when the URL names none), udp_port + i.
    Raises WorkersError when a port would pass 65535."""
    last = count - 1
    if settings.port + last > 65535:
        raise WorkersError(f"port={settings.port}: {count} workers need ports up to {settings.port + last}")
    if settings.udp_port and settings.udp_port + last > 65535:
        raise WorkersError(f"udp_port={settings.udp_port}: {count} workers need UDP ports up to "
                           f"{settings.udp_port + last}")
    base = settings.node_id[: NODE_ID_MAX - len(f"-{last}")]
    public = urlsplit(settings.public_url)
    public_port = public.port or settings.port
    if public_port + last > 65535:
        raise WorkersError(f"public_url={settings.public_url}: {count} workers need ports up to "
                           f"{public_port + last}")
    plans = []
    for i in range(count):
        host = public.hostname or settings.host
        netloc = f"[{host}]" if ":" in host else host
        url = urlunsplit((public.scheme, f"{netloc}:{public_port + i}", public.path, "", ""))
        plans.append(WorkerPlan(i, f"{base}-{i}", settings.port + i, url,
                                settings.udp_port + i if settings.udp_port else 0))
    return plans


@dataclass(frozen=True)
class PassThrough:
    """What every worker's `serve` repeats of the parent's command line."""

    config: str | None
    event: str | None
    log_level: str
    demo: bool


def worker_command(settings: Settings, plan: WorkerPlan, passed: PassThrough) -> list[str]:
    """The worker's argv (no secret: the Redis URL goes in its environment)."""
    command = [sys.executable, "-m", "signaling.cli", "--log-level", passed.log_level, "serve",
               "--host", settings.host, "--port", str(plan.port), "--node-id", plan.node_id,
               "--public-url", plan.public_url, "--data-dir", str(settings.data_dir)]
    if passed.config:
        command += ["--config", str(Path(passed.config).absolute())]
    if passed.event:
        command += ["--event", str(Path(passed.event).absolute())]
    if passed.demo:
        command.append("--demo")
    return command


def worker_environment(plan: WorkerPlan, redis_url: str, demo_now: float | None) -> dict[str, str]:
    """The parent's environment (the user's FORUMCAST_* settings) plus this worker's own."""
    env = dict(os.environ)
    env["FORUMCAST_REDIS_URL"] = redis_url  # not argv: a URL may carry a password
    env["FORUMCAST_UDP_PORT"] = str(plan.udp_port)
    if demo_now is not None:
        env["FORUMCAST_DEMO_NOW"] = repr(demo_now)  # one agenda for every worker and restart
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _local_address(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class HealthCheck:
    """`GET /healthz` answers 200: the node has started every part and listens."""

    def __init__(self, host: str, port: int) -> None:
        host = _local_address(host)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"

    async def __call__(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(self.url) as response:
                return response.status == 200


async def serve_workers(settings: Settings, count: int, passed: PassThrough,
                        ready: asyncio.Event | None = None) -> int:
    """Run the cluster until SIGTERM/SIGINT (see the module docstring).
    Returns 0 after a clean stop. Raises WorkersError (a worker or the
    local Redis could not start: everything started is stopped first) or
    LocalRedisError (no redis-server)."""
    plans = plan_workers(settings, count)
    load_or_create_secret(settings)  # once, before N workers race to create it
    run = settings.data_dir / "run"
    registry = ChildRegistry(run / "workers")
    await asyncio.to_thread(registry.reap_strays)  # a SIGKILLed parent's workers, if any outlived it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    redis: LocalRedis | None = None
    workers: list[SupervisedProcess] = []
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            redis = LocalRedis(settings.data_dir, registry)
            await _until_stopped(redis.start(), stop)
            redis_url = redis.url
        demo_now = (settings.demo_now or time.time()) if settings.demo else None
        workers = [
            SupervisedProcess(plan.node_id, worker_command(settings, plan, passed),
                              env=worker_environment(plan, redis_url, demo_now),
                              ready=HealthCheck(settings.host, plan.port), ready_timeout=WORKER_READY_TIMEOUT_S,
                              policy=RestartPolicy(initial=1.0, maximum=30.0), stop_grace=WORKER_STOP_GRACE_S,
                              registry=registry)
            for plan in plans
        ]
        await _until_stopped(_start_all(workers), stop)
        _announce(plans, redis_url, redis is not None)
        if ready is not None:
            ready.set()
        await stop.wait()
        print("forumcast: stopping the workers", file=sys.stderr, flush=True)
    except ChildStartError as error:
        raise WorkersError(str(error)) from None
    except OSError as error:  # a binary that cannot run
        raise WorkersError(f"cannot start a child process: {error}") from None
    except _Stopped:
        pass  # a signal during start-up: stop what started
    finally:
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        if redis is not None:
            await redis.stop()  # last: the workers' stops still write to it
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


class _Stopped(Exception):
    """A stop signal arrived while starting."""


async def _until_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Await `starting` unless a stop signal comes first (then cancel it and raise _Stopped)."""
    task = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChildStartError):
            await task
        raise _Stopped()
    task.result()


async def _start_all(workers: Sequence[SupervisedProcess]) -> None:
    """Start every worker at once; the first failure is raised once all have settled."""
    results = await asyncio.gather(*(worker.start() for worker in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _announce(plans: Sequence[WorkerPlan], redis_url: str, local: bool) -> None:
    where = "a local redis-server (supervised, stopped last)" if local else "Redis"
    print(f"forumcast: {len(plans)} workers on {where} at {redact_url(redis_url)}", flush=True)
    for plan in plans:
        udp = f" (ICE UDP port {plan.udp_port})" if plan.udp_port else ""
        print(f"worker {plan.node_id}: {plan.public_url}{udp}", flush=True)
    if plans[0].udp_port:
        print(f"open UDP ports {plans[0].udp_port}-{plans[-1].udp_port} in the firewall (one per worker)",
              flush=True)
    print(f"pages: {plans[0].public_url}/lobby (any worker serves them; placement sends viewers where "
          "there is room)", flush=True)
