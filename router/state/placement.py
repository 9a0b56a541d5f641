"""Where each conversation's turns go: a tier replica per affinity key, in-process or in
Redis so that every router replica sends a conversation to the same engine.

A hash ring alone places few conversations unevenly (eight keys on two replicas can
land seven to one), and its load bound then moves the overflow from turn to turn, each
move a cold prefix. Remembered, a conversation is placed once and stays.

A new conversation goes where the fewest conversations are active (`held`): every turn
marks its conversation active on its replica, so every router replica counts the
conversations all of them placed. Calls in flight alone cannot place at a player's pace:
between turns a router mostly sees none anywhere, and placement becomes a coin toss that
leaves one replica holding most of the prefixes.

Entries expire with the sessions they belong to (state.ttl_s). A store that cannot
answer is a miss, never a failed call: the ring decides instead (router/affinity.py).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis

from router.stats import Clock

# In-process entries kept, least recently used forgotten first: a client inventing
# session ids cannot grow the router without bound.
MAX_ENTRIES = 100_000


class Placements(Protocol):
    async def get(self, tier: str, key: bytes) -> str | None:
        """The key's replica, if placed; the conversation counts as active there from now."""
        ...

    async def put(self, tier: str, key: bytes, address: str) -> None:
        """Place (or move) the key, active on `address` from now."""
        ...

    async def held(self, tier: str, addresses: Iterable[str], idle_s: float) -> dict[str, int]:
        """Per address: the conversations placed there with a turn in the last `idle_s`."""
        ...

    async def close(self) -> None: ...


class MemoryPlacements:
    """One router's placements."""

    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], tuple[str, float]] = OrderedDict()
        # Per tier and replica, its keys by their last turn, oldest first: counting the
        # active ones forgets the idle ones from the front, so a count costs what it drops.
        self._active: dict[tuple[str, str], OrderedDict[bytes, float]] = {}

    def _mark(self, tier: str, key: bytes, address: str) -> None:
        active = self._active.setdefault((tier, address), OrderedDict())
        active[key] = self._clock()
        active.move_to_end(key)

    def _forget(self, tier: str, key: bytes, address: str) -> None:
        active = self._active.get((tier, address))
        if active is not None:
            active.pop(key, None)

    async def get(self, tier: str, key: bytes) -> str | None:
        entry = self._entries.get((tier, key))
        if entry is None:
            return None
        address, expires = entry
        if self._clock() >= expires:
            del self._entries[(tier, key)]
            self._forget(tier, key, address)
            return None
        self._entries.move_to_end((tier, key))
        self._mark(tier, key, address)
        return address

    async def put(self, tier: str, key: bytes, address: str) -> None:
        before = self._entries.get((tier, key))
        if before is not None and before[0] != address:
            self._forget(tier, key, before[0])
        self._entries[(tier, key)] = (address, self._clock() + self._ttl_s)
        self._entries.move_to_end((tier, key))
        self._mark(tier, key, address)
        while len(self._entries) > self._max:
            (dropped_tier, dropped), (dropped_at, _) = self._entries.popitem(last=False)
            self._forget(dropped_tier, dropped, dropped_at)

    async def held(self, tier: str, addresses: Iterable[str], idle_s: float) -> dict[str, int]:
        since = self._clock() - idle_s
        counts = {}
        for address in addresses:
            active = self._active.get((tier, address), OrderedDict())
            while active and next(iter(active.values())) < since:
                active.popitem(last=False)
            counts[address] = len(active)
        return counts

    async def close(self) -> None:
        self._entries.clear()
        self._active.clear()


# A turn's lookup marks its conversation active where it is placed, in the same round
# trip: KEYS[1] the placement; ARGV: now (s), the key's digest, the active sets' prefix,
# their TTL (ms). A placement changes only by `put`, so the address read is current. The
# scripts name the active sets themselves, which one Redis (router.state's) allows and a
# Redis Cluster would not.
GET_AND_MARK = """
local address = redis.call('GET', KEYS[1])
if address then
  local active = ARGV[3] .. address
  redis.call('ZADD', active, ARGV[1], ARGV[2])
  redis.call('PEXPIRE', active, ARGV[4])
end
return address
"""

# A placement, or a move: the key leaves the old replica's active set. ARGV as above,
# then the address.
PUT_AND_MARK = """
local before = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[4])
if before and before ~= ARGV[5] then
  redis.call('ZREM', ARGV[3] .. before, ARGV[2])
end
local active = ARGV[3] .. ARGV[5]
redis.call('ZADD', active, ARGV[1], ARGV[2])
redis.call('PEXPIRE', active, ARGV[4])
"""


class RedisPlacements:
    """Placements shared by every router replica: one string per key, with a TTL, and per
    replica a sorted set of its keys by their last turn (wall-clock seconds: every router
    replica writes them), trimmed as it is counted."""

    def __init__(self, redis_url: str, ttl_s: float, clock: Clock = time.time) -> None:
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        # Placement is on the first token's path: a slow store is a miss, soon.
        self._redis = Redis.from_url(redis_url, socket_timeout=0.1, socket_connect_timeout=0.1)
        self._get = self._redis.register_script(GET_AND_MARK)
        self._put = self._redis.register_script(PUT_AND_MARK)

    @staticmethod
    def _digest(key: bytes) -> str:
        return hashlib.blake2b(key, digest_size=16).hexdigest()

    @staticmethod
    def _active_prefix(tier: str) -> str:
        return f"tiermesh:placement-active:{tier}:"

    def _args(self, tier: str, key: bytes) -> tuple[list[str], list[str | float | int]]:
        digest = self._digest(key)
        args: list[str | float | int] = [self._clock(), digest, self._active_prefix(tier), self._ttl_ms]
        return [f"tiermesh:placement:{tier}:{digest}"], args

    async def get(self, tier: str, key: bytes) -> str | None:
        keys, args = self._args(tier, key)
        raw = await self._get(keys=keys, args=args)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def put(self, tier: str, key: bytes, address: str) -> None:
        keys, args = self._args(tier, key)
        await self._put(keys=keys, args=[*args, address])

    async def held(self, tier: str, addresses: Iterable[str], idle_s: float) -> dict[str, int]:
        addresses = list(addresses)
        since = self._clock() - idle_s
        async with self._redis.pipeline(transaction=False) as pipe:
            for address in addresses:
                active = self._active_prefix(tier) + address
                pipe.zremrangebyscore(active, "-inf", f"({since}")
                pipe.zcard(active)
            replies = await pipe.execute()
        return {address: int(count) for address, count in zip(addresses, replies[1::2], strict=True)}

    async def close(self) -> None:
        await self._redis.aclose()


def placement_store(backend: str, redis_url: str, ttl_s: float) -> Placements:
    """Shared through Redis when session state is (router.state.backend)."""
    return RedisPlacements(redis_url, ttl_s) if backend == "redis" else MemoryPlacements(ttl_s)
