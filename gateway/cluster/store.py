"""The room directory in Redis: the keys, and the scripts that keep each change atomic.

Keys (all under PREFIX; one Redis, or a primary with replicas: a script reads keys it is not
given in KEYS, which Redis Cluster would refuse):

* `live-sfu:nodes`: a set of node ids, an index of the node records below (an id whose
  record expired is removed by whoever lists the nodes next);
* `live-sfu:node:{id}`: the node's record, JSON (its URL, load, draining, its rooms), written
  by the node's heartbeat with a TTL of NODE_TTL: a node that stops heartbeating vanishes;
* `live-sfu:room:{name}`: the id of the room's home node, with a TTL of ROOM_TTL that the
  home refreshes while it holds the room.

A room is reserved by `CLAIM`: it sets the home only if the room has none, or if its home's
record is gone (a killed node's rooms are free as soon as the node's record expired), and
returns the home in force; so two nodes racing for a new room get the same answer. Only the
home refreshes (`REFRESH`) or deletes (`RELEASE`) it: compare-and-set, compare-and-delete.

Nothing here knows HTTP; every call raises redis.exceptions.RedisError (or OSError) when
Redis cannot be reached, and the caller decides what that means.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

PREFIX = "live-sfu:"
NODES_KEY = PREFIX + "nodes"
NODE_PREFIX = PREFIX + "node:"
ROOM_PREFIX = PREFIX + "room:"
# A request waits at most this long for Redis (per attempt; one retry on a dropped
# connection, which is how the client reconnects after Redis restarted).
REDIS_TIMEOUT_S = 1.0
# Errors that mean "Redis is not reachable now" (the node then refuses what needs it).
UNREACHABLE = (RedisError, OSError)

# KEYS[1] room key; ARGV: node id wanted, TTL ms, node key prefix. Returns the home in force.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return owner
  end
  if redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return owner
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS[1] room key; ARGV[1] node key prefix. The home, or nil when none is alive.
_HOME = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then
  return owner
end
return false
"""

# KEYS: room keys; ARGV: node id, TTL ms. Per room: '' refreshed (or set again when Redis
# lost it), else the other node that holds it now.
_REFRESH = """
local result = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    result[i] = ''
  elseif not owner then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    result[i] = ''
  else
    result[i] = owner
  end
end
return result
"""

# KEYS: room keys; ARGV[1] node id. Deletes those this node holds; returns how many.
_RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""

# KEYS[1] the node set; ARGV[1] node key prefix. The records of the live nodes; ids whose
# record expired leave the set.
_LIST_NODES = """
local records = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. id)
  if record then
    table.insert(records, record)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return records
"""


def room_key(room: str) -> str:
    return ROOM_PREFIX + room


def node_key(node_id: str) -> str:
    return NODE_PREFIX + node_id


def connect(url: str, password: str = "") -> Redis:
    """A client of the Redis at `url` (no connection is made before the first command).

    Short timeouts and one quick retry: a request must not hang on an unreachable Redis, and
    the retry on a dropped connection is what reconnects after Redis restarted.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "socket_timeout": REDIS_TIMEOUT_S,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
    }
    if password:
        options["password"] = password
    return Redis.from_url(url, **options)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RoomStore:
    """The directory's operations, each one round trip to Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._home = redis.register_script(_HOME)
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)
        self._list_nodes = redis.register_script(_LIST_NODES)

    async def claim(self, room: str, node_id: str, ttl: float) -> str:
        """Make `node_id` the room's home unless a live node already is; the home in force."""
        owner = await self._claim(keys=[room_key(room)], args=[node_id, _ms(ttl), NODE_PREFIX])
        return str(owner)

    async def home(self, room: str) -> str | None:
        """The room's home node if it has one that is alive."""
        owner = await self._home(keys=[room_key(room)], args=[NODE_PREFIX])
        return str(owner) if owner else None

    async def node(self, node_id: str) -> dict[str, Any] | None:
        """One node's record, or None when it has none (not registered, or expired)."""
        record = await self.redis.get(node_key(node_id))
        return _decode(record) if record else None

    async def heartbeat(
        self,
        node_id: str,
        record: dict[str, Any],
        node_ttl: float,
        rooms: Sequence[str],
        room_ttl: float,
        released: Sequence[str],
    ) -> tuple[dict[str, Any] | None, list[str], list[dict[str, Any]]]:
        """One round trip: write this node's record, refresh its `rooms` (and set those Redis
        lost), delete `released` if still its own, and read every live node's record.
        Returns (the record it replaced; per room of `rooms`, "" or the other node that holds
        it; the records)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(
                node_key(node_id),
                json.dumps(record, separators=(",", ":")),
                px=_ms(node_ttl),
                get=True,
            )
            pipe.sadd(NODES_KEY, node_id)
            if rooms:
                await self._refresh(
                    keys=[room_key(r) for r in rooms], args=[node_id, _ms(room_ttl)], client=pipe
                )
            if released:
                await self._release(
                    keys=[room_key(r) for r in released], args=[node_id], client=pipe
                )
            await self._list_nodes(keys=[NODES_KEY], args=[NODE_PREFIX], client=pipe)
            results = await pipe.execute()
        replaced = _decode(results[0]) if results[0] else None
        owners = [str(o) for o in results[2]] if rooms else []
        records = [r for raw in results[-1] if (r := _decode(raw)) is not None]
        return replaced, owners, records

    async def release(self, node_id: str, rooms: Sequence[str]) -> int:
        """Delete the rooms this node still holds (compare-and-delete); how many went."""
        if not rooms:
            return 0
        return int(await self._release(keys=[room_key(r) for r in rooms], args=[node_id]))

    async def deregister(self, node_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(node_key(node_id))
            pipe.srem(NODES_KEY, node_id)
            await pipe.execute()


def _decode(raw: object) -> dict[str, Any] | None:
    """A node record; None for anything that is not one (a foreign or older writer)."""
    try:
        value = json.loads(str(raw))
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    return value
