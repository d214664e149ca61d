"""The shared store for several nodes: state and events in one Redis.

Only the transport lives here (rooms/store.py holds the protocol). Each
multi-key change is one Lua script, so it is atomic across nodes. Keys,
under a configurable prefix P:

    P:forum:F:participants   hash  participant id -> JSON
    P:forum:F:viewers        set   ids of the participants taking a seat
    P:forum:F:seats:H        set   ids of those seats that holder H (a token's sub) holds
    P:forum:F:sources        hash  source id -> JSON
    P:forum:F:chat           hash  message id -> JSON
    P:forum:F:chat:order     list  message ids, oldest first (bounded)
    P:programs               hash  forum id -> ProgramState JSON
    P:node:N                 string  NodeInfo JSON, expires (PX) = liveness
    P:nodes                  set   every node that ever beat and was not reaped
    P:node:N:participants    set   ["F","id"] of the participants N holds
    P:node:N:sources         set   ["F","id"] of the sources N holds
    P:lease:F                string  the instance id owning forum F, expires (PX) = its lease
    P:events                 pub/sub channel of {"type","node_id","data"}
    P:inbox:N                pub/sub channel of node N's requests and replies
                             ({"id","from","kind","body"} / {"id","result"|"error"})

Scripts build some keys from the prefix (the per-node indexes, reaping),
so this wants a single Redis, not a Redis Cluster. Liveness uses Redis's
own clock (key expiry), so nodes' clock skew does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from config.redaction import redact_url
from rooms.chat import ChatMessage
from rooms.errors import RoomError
from rooms.events import RoomEvent, event_from_json, event_to_json, record_from_json, record_to_json
from rooms.models import MediaSource, Participant, ProgramState
from rooms.store import (
    UNBOUNDED_SOURCE_KINDS,
    Admission,
    Counts,
    JsonObject,
    NodeInfo,
    Reaped,
    Store,
    Swap,
    counts_against_capacity,
    counts_against_source_bounds,
)

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# KEYS: participants hash, viewers set, node index, the holder's seats set ('' holder: unused)
# ARGV: id, JSON, takes a seat, capacity, member, prefix, seats per holder (0: no bound),
#       the holder, the forum's seats key base (P:forum:F:seats:)
# returns 1 admitted, 0 forum full, 2 the holder holds its seats already
_ADMIT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_holder = ''
if old then old_holder = cjson.decode(old)['holder'] or '' end
if ARGV[3] == '1' then
  if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
    if ARGV[8] ~= '' and tonumber(ARGV[7]) > 0
       and redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[7]) then
      return 2
    end
    if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
      return 0
    end
  end
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
if old_holder ~= '' then
  redis.call('SREM', ARGV[9] .. old_holder, ARGV[1])
end
if ARGV[3] == '1' and ARGV[8] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[1])
end
if old then
  redis.call('SREM', ARGV[6] .. ':node:' .. cjson.decode(old)['node_id'] .. ':participants', ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""

# KEYS: record hash, [viewers set]; ARGV: id, member, prefix, index name, [seats key base]
_REMOVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[1]) end
if ARGV[5] then
  local holder = cjson.decode(old)['holder']
  if holder and holder ~= '' then redis.call('SREM', ARGV[5] .. holder, ARGV[1]) end
end
redis.call('SREM', ARGV[3] .. ':node:' .. cjson.decode(old)['node_id'] .. ':' .. ARGV[4], ARGV[2])
return old
"""

# KEYS: sources hash, new node's index; ARGV: id, JSON, member, prefix
_PUT_SOURCE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('SREM', ARGV[4] .. ':node:' .. cjson.decode(old)['node_id'] .. ':sources', ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return old or false
"""

# KEYS: sources hash, node index; ARGV: id, JSON, member, holder, per holder, per forum,
#       counted ('1' or '0'), unbounded kinds (JSON list), prefix
# returns 1 added (or replaced), 0 the forum is full, 2 the holder is
_ADD_SOURCE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[7] == '1' and not old then
  local exempt = {}
  for _, kind in ipairs(cjson.decode(ARGV[8])) do exempt[kind] = true end
  local forum, mine = 0, 0
  for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
    local s = cjson.decode(raw)
    if not exempt[s['kind']] then
      forum = forum + 1
      if (s['holder'] or '') == ARGV[4] then mine = mine + 1 end
    end
  end
  if tonumber(ARGV[5]) > 0 and mine >= tonumber(ARGV[5]) then return 2 end
  if tonumber(ARGV[6]) > 0 and forum >= tonumber(ARGV[6]) then return 0 end
end
if old then
  redis.call('SREM', ARGV[9] .. ':node:' .. cjson.decode(old)['node_id'] .. ':sources', ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

# compare-and-set one hash field on its exact stored text ('' = absent)
_CAS_FIELD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

_APPEND_CHAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
local extra = redis.call('LLEN', KEYS[2]) - tonumber(ARGV[3])
for i = 1, extra do
  redis.call('HDEL', KEYS[1], redis.call('LPOP', KEYS[2]))
end
return 1
"""

# KEYS: node key, nodes set, node participants index, node sources index
_REAP = """
local prefix, node = ARGV[1], ARGV[2]
local function reap(index, kind, also)
  local gone = {}
  for _, member in ipairs(redis.call('SMEMBERS', index)) do
    local ref = cjson.decode(member)
    local hash = prefix .. ':forum:' .. ref[1] .. ':' .. kind
    local raw = redis.call('HGET', hash, ref[2])
    if raw and cjson.decode(raw)['node_id'] == node then
      redis.call('HDEL', hash, ref[2])
      if also then
        redis.call('SREM', prefix .. ':forum:' .. ref[1] .. ':' .. also, ref[2])
        local holder = cjson.decode(raw)['holder']
        if holder and holder ~= '' then
          redis.call('SREM', prefix .. ':forum:' .. ref[1] .. ':seats:' .. holder, ref[2])
        end
      end
      table.insert(gone, raw)
    end
  end
  return gone
end
local participants = reap(KEYS[3], 'participants', 'viewers')
local sources = reap(KEYS[4], 'sources', nil)
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
local registered = redis.call('SREM', KEYS[2], node)
return {participants, sources, registered}
"""


# forum leases: KEYS: the lease key; ARGV: owner, ttl ms
# take if free (SET NX PX), or renew if already ours; 1 ours, 0 another's
_ACQUIRE_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# compare-and-pexpire: only the owner extends its lease
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# compare-and-del: only the owner gives its lease up
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _redis_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A Redis outage reaches callers as RoomError("unavailable"), which
    every edge already answers cleanly (HTTP 503, a socket.io error ack)."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise RoomError("unavailable", f"the shared state store (Redis) failed: {exc}") from exc

    return guarded


def _ttl(ttl_ms: int) -> int:
    if ttl_ms < 1:
        raise RoomError("invalid", f"a lease lasts at least 1 ms, not {ttl_ms}")
    return int(ttl_ms)


def _dumps(value: Any) -> str:
    return json.dumps(record_to_json(value), separators=(",", ":"), ensure_ascii=False)


class RedisStore(Store):
    """Two RedisStores on one Redis are two nodes sharing the forums."""

    def __init__(
        self,
        url: str,
        node_id: str,
        prefix: str = "forumcast",
        queue_size: int = 1000,
        chat_keep: int = 500,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        super().__init__(node_id, queue_size)
        self.url = url
        self.prefix = prefix
        self.chat_keep = chat_keep
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.max_connections = max_connections
        self.channel = f"{prefix}:events"
        self.inbox = self._inbox(node_id)
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        self._stopped = False
        # a blocking pool: a burst of calls waits for a connection instead
        # of failing (redis-py's default pool raises past 100)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=10, decode_responses=True
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            await client.ping()
            self._pubsub = await self._subscribe(client)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise RoomError("unavailable", f"cannot reach Redis at {redact_url(self.url)}: {exc}") from exc
        self._client = client
        for name, text in (
            ("admit", _ADMIT), ("remove", _REMOVE), ("put_source", _PUT_SOURCE),
            ("cas", _CAS_FIELD), ("add_source", _ADD_SOURCE), ("append_chat", _APPEND_CHAT), ("reap", _REAP),
            ("acquire_lease", _ACQUIRE_LEASE), ("renew_lease", _RENEW_LEASE), ("release_lease", _RELEASE_LEASE),
        ):
            self._scripts[name] = client.register_script(text)
        self._listener = asyncio.create_task(self._listen_with_retries(), name=f"RedisStore({self.node_id}) listener")
        logger.info("RedisStore(%s) started on %s, prefix %r", self.node_id, redact_url(self.url), self.prefix)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await self._close_pubsub()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._stop_serving()
        self._fanout.close_all()
        logger.info("RedisStore(%s) stopped", self.node_id)

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RoomError("unavailable", f"RedisStore({self.node_id}) is not started")
        return self._client

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        self._redis  # refuses before start()
        return await self._scripts[script](keys=keys, args=args)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @staticmethod
    def _member(forum_id: str, item_id: str) -> str:
        return json.dumps([forum_id, item_id], separators=(",", ":"), ensure_ascii=False)

    # --- participants --------------------------------------------------------

    @_redis_errors
    async def admit(self, participant: Participant, capacity: int, seats_per_holder: int = 0) -> Admission:
        fid = participant.forum_id
        seats = self._seats_base(fid)
        keys = [
            self._key("forum", fid, "participants"),
            self._key("forum", fid, "viewers"),
            self._key("node", participant.node_id, "participants"),
            seats + participant.holder,
        ]
        takes_seat = "1" if counts_against_capacity(participant.role) else "0"
        args = [
            participant.id, _dumps(participant), takes_seat,
            capacity, self._member(fid, participant.id), self.prefix,
            seats_per_holder, participant.holder, seats,
        ]
        result = int(await self._run("admit", keys, args))
        return {1: Admission.ADMITTED, 0: Admission.FULL}.get(result, Admission.HOLDER_FULL)

    def _seats_base(self, forum_id: str) -> str:
        return self._key("forum", forum_id, "seats", "")

    @_redis_errors
    async def remove_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        keys = [self._key("forum", forum_id, "participants"), self._key("forum", forum_id, "viewers")]
        args = [participant_id, self._member(forum_id, participant_id), self.prefix, "participants",
                self._seats_base(forum_id)]
        raw = await self._run("remove", keys, args)
        return None if raw is None else record_from_json(Participant, json.loads(raw))

    @_redis_errors
    async def participants(self, forum_id: str) -> list[Participant]:
        raws = await self._redis.hvals(self._key("forum", forum_id, "participants"))
        found = [record_from_json(Participant, json.loads(raw)) for raw in raws]
        return sorted(found, key=lambda p: (p.joined_at, p.id))

    @_redis_errors
    async def get_participant(self, forum_id: str, participant_id: str) -> Participant | None:
        raw = await self._redis.hget(self._key("forum", forum_id, "participants"), participant_id)
        return None if raw is None else record_from_json(Participant, json.loads(raw))

    @_redis_errors
    async def counts(self, forum_id: str) -> Counts:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.scard(self._key("forum", forum_id, "viewers"))
            pipe.hlen(self._key("forum", forum_id, "participants"))
            viewers, total = await pipe.execute()
        return Counts(int(viewers), int(total))

    # --- sources -------------------------------------------------------------

    @_redis_errors
    async def put_source(self, source: MediaSource) -> MediaSource | None:
        keys = [self._key("forum", source.forum_id, "sources"), self._key("node", source.node_id, "sources")]
        args = [source.id, _dumps(source), self._member(source.forum_id, source.id), self.prefix]
        raw = await self._run("put_source", keys, args)
        return None if raw is None else record_from_json(MediaSource, json.loads(raw))

    @_redis_errors
    async def add_source(self, source: MediaSource, per_forum: int = 0, per_holder: int = 0) -> Admission:
        keys = [self._key("forum", source.forum_id, "sources"), self._key("node", source.node_id, "sources")]
        exempt = json.dumps(sorted(kind.value for kind in UNBOUNDED_SOURCE_KINDS))
        counted = "1" if counts_against_source_bounds(source) else "0"
        args = [source.id, _dumps(source), self._member(source.forum_id, source.id), source.holder,
                per_holder, per_forum, counted, exempt, self.prefix]
        result = int(await self._run("add_source", keys, args))
        return {1: Admission.ADMITTED, 0: Admission.FULL}.get(result, Admission.HOLDER_FULL)

    @_redis_errors
    async def remove_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        keys = [self._key("forum", forum_id, "sources")]
        args = [source_id, self._member(forum_id, source_id), self.prefix, "sources"]
        raw = await self._run("remove", keys, args)
        return None if raw is None else record_from_json(MediaSource, json.loads(raw))

    @_redis_errors
    async def sources(self, forum_id: str) -> list[MediaSource]:
        raws = await self._redis.hvals(self._key("forum", forum_id, "sources"))
        return sorted((record_from_json(MediaSource, json.loads(r)) for r in raws), key=lambda s: s.id)

    @_redis_errors
    async def get_source(self, forum_id: str, source_id: str) -> MediaSource | None:
        raw = await self._redis.hget(self._key("forum", forum_id, "sources"), source_id)
        return None if raw is None else record_from_json(MediaSource, json.loads(raw))

    # --- program state -------------------------------------------------------

    @_redis_errors
    async def _read_program(self, forum_id: str) -> Swap[ProgramState]:
        raw = await self._redis.hget(self._key("programs"), forum_id)
        if raw is None:
            return Swap(ProgramState(forum_id), "")
        return Swap(record_from_json(ProgramState, json.loads(raw)), raw)

    @_redis_errors
    async def _swap_program(self, forum_id: str, token: Any, new: ProgramState) -> bool:
        done = await self._run("cas", [self._key("programs")], [forum_id, token, _dumps(new)])
        return bool(done)

    # --- chat ----------------------------------------------------------------

    @_redis_errors
    async def append_message(self, message: ChatMessage) -> None:
        fid = message.forum_id
        keys = [self._key("forum", fid, "chat"), self._key("forum", fid, "chat", "order")]
        await self._run("append_chat", keys, [message.id, _dumps(message), self.chat_keep])

    @_redis_errors
    async def messages(self, forum_id: str, limit: int = 50) -> list[ChatMessage]:
        if limit <= 0:
            return []
        ids = await self._redis.lrange(self._key("forum", forum_id, "chat", "order"), -limit, -1)
        if not ids:
            return []
        raws = await self._redis.hmget(self._key("forum", forum_id, "chat"), ids)
        return [record_from_json(ChatMessage, json.loads(r)) for r in raws if r is not None]

    @_redis_errors
    async def _read_message(self, forum_id: str, message_id: str) -> Swap[ChatMessage] | None:
        raw = await self._redis.hget(self._key("forum", forum_id, "chat"), message_id)
        return None if raw is None else Swap(record_from_json(ChatMessage, json.loads(raw)), raw)

    @_redis_errors
    async def _swap_message(self, token: Any, new: ChatMessage) -> bool:
        key = self._key("forum", new.forum_id, "chat")
        done = await self._run("cas", [key], [new.id, token, _dumps(new)])
        return bool(done)

    # --- pub/sub -------------------------------------------------------------

    async def _publish(self, event: RoomEvent) -> None:
        payload = json.dumps(event_to_json(event), separators=(",", ":"), ensure_ascii=False)
        for attempt in (1, 2):  # one retry: the pool reconnects on the second
            try:
                await self._redis.publish(self.channel, payload)
                return
            except (RedisError, OSError) as exc:
                if attempt == 2:
                    logger.error("RedisStore(%s) lost event %s: %s", self.node_id, type(event).__name__, exc)
                    raise RoomError("unavailable", f"cannot publish to Redis: {exc}") from exc
                logger.warning("RedisStore(%s) publish failed (%s); retrying once", self.node_id, exc)

    async def _subscribe(self, client: aioredis.Redis) -> Any:
        """A pubsub on the events channel and this node's inbox, returned
        once Redis confirmed both (so what is published after start()
        reaches us)."""
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel, self.inbox)
            confirmed = 0
            for _ in range(100):  # bounded: the confirmations are the first replies
                message = await pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
                    if confirmed == 2:
                        return pubsub
            raise RoomError("unavailable", f"Redis did not confirm the subscription to {self.channel}")
        except BaseException:
            await pubsub.aclose()
            raise

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _listen_with_retries(self) -> None:
        """Deliver every event on the channel; on a Redis failure wait
        (doubling up to retry_max_s) and resubscribe."""
        backoff = self.retry_min_s
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe(self._redis)
                    logger.info("RedisStore(%s) resubscribed to %s", self.node_id, self.channel)
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        backoff = self.retry_min_s
                        if message.get("channel") == self.inbox:
                            self._deliver_to_inbox(message.get("data"))
                        else:
                            self._deliver(message.get("data"))
                raise ConnectionError("the subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, RoomError from _subscribe
                logger.warning("RedisStore(%s) listener failed (%s); retrying in %.1f s", self.node_id, exc, backoff)
                await self._close_pubsub()
                await asyncio.sleep(backoff)  # capped backoff, not synchronisation
                backoff = min(backoff * 2, self.retry_max_s)

    def _deliver(self, data: Any) -> None:
        try:
            event = event_from_json(json.loads(data))
        except Exception as exc:  # whatever a stranger published, the listener lives on
            logger.warning("RedisStore(%s) ignored a bad message on %s: %s", self.node_id, self.channel, exc)
            return
        self._fanout.deliver(event)

    # --- request/reply -------------------------------------------------------

    def _inbox(self, node_id: str) -> str:
        return self._key("inbox", node_id)

    def _deliver_to_inbox(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            logger.warning("RedisStore(%s) ignored a bad message on %s: %s", self.node_id, self.inbox, exc)
            return
        if "kind" in message:
            self._on_request(message)
        else:
            self._on_reply(message)

    async def _send_request(self, node_id: str, message: JsonObject) -> bool:
        # PUBLISH answers how many subscribers got it: 0 means nobody listens
        return await self._send(node_id, message) > 0

    async def _send_reply(self, node_id: str, message: JsonObject) -> None:
        await self._send(node_id, message)

    @_redis_errors
    async def _send(self, node_id: str, message: JsonObject) -> int:
        payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        return int(await self._redis.publish(self._inbox(node_id), payload))

    # --- forum leases ----------------------------------------------------------

    @_redis_errors
    async def acquire_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._run("acquire_lease", [self._key("lease", forum_id)], [owner, _ttl(ttl_ms)]))

    @_redis_errors
    async def renew_lease(self, forum_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._run("renew_lease", [self._key("lease", forum_id)], [owner, _ttl(ttl_ms)]))

    @_redis_errors
    async def release_lease(self, forum_id: str, owner: str) -> bool:
        return bool(await self._run("release_lease", [self._key("lease", forum_id)], [owner]))

    @_redis_errors
    async def lease_owner(self, forum_id: str) -> str | None:
        return cast(str | None, await self._redis.get(self._key("lease", forum_id)))

    # --- nodes ---------------------------------------------------------------

    @_redis_errors
    async def heartbeat(self, node_id: str, load: dict[str, Any], ttl_s: float, public_url: str = "") -> None:
        info = NodeInfo(node_id, dict(load), time.time(), public_url)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("node", node_id), _dumps(info), px=max(1, int(ttl_s * 1000)))
            pipe.sadd(self._key("nodes"), node_id)
            await pipe.execute()

    @_redis_errors
    async def _known_nodes(self) -> list[tuple[str, str | None]]:
        # str, not bytes: the client decodes (decode_responses=True), which
        # redis-py's annotations cannot express
        ids = sorted(cast(set[str], await self._redis.smembers(self._key("nodes"))))
        if not ids:
            return []
        raws = cast(list[str | None], await self._redis.mget([self._key("node", n) for n in ids]))
        return list(zip(ids, raws))

    async def nodes(self) -> list[NodeInfo]:
        return [record_from_json(NodeInfo, json.loads(raw)) for _, raw in await self._known_nodes() if raw is not None]

    async def dead_nodes(self) -> list[str]:
        return [node for node, raw in await self._known_nodes() if raw is None]

    @_redis_errors
    async def reap_node(self, node_id: str) -> Reaped:
        keys = [
            self._key("node", node_id), self._key("nodes"),
            self._key("node", node_id, "participants"), self._key("node", node_id, "sources"),
        ]
        raw_participants, raw_sources, registered = await self._run("reap", keys, [self.prefix, node_id])
        reaped = Reaped(
            node_id,
            [record_from_json(Participant, json.loads(r)) for r in raw_participants],
            [record_from_json(MediaSource, json.loads(r)) for r in raw_sources],
            bool(registered),
        )
        if reaped.participants or reaped.sources:
            logger.info(
                "RedisStore(%s) reaped node %s: %d participants, %d sources",
                self.node_id, node_id, len(reaped.participants), len(reaped.sources),
            )
        return reaped
